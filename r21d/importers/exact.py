"""Copy foreign tensors into a model one to one, or fail naming every offending key."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from r21d.checkpoint import model_tensors
from r21d.errors import BadWeightsError


class ImportMismatchError(BadWeightsError):
    """Source tensors and model parameters do not correspond one to one."""


def load_exact(
    model: nn.Module,
    source: Mapping[str, np.ndarray | torch.Tensor],
    key_map: Mapping[str, str],
    origin: str,
) -> None:
    """Fill every tensor of ``model`` from ``source[key_map[name]]``.

    Every model tensor must be mapped, every source tensor used exactly once, and every shape
    must match; otherwise nothing is half-loaded and the error names the keys.
    """
    targets = model_tensors(model)
    unmapped = sorted(set(targets) - set(key_map))
    if unmapped:
        raise ImportMismatchError(f"{origin}: no source key for model tensors {unmapped[:5]}")
    wanted = list(key_map.values())
    duplicates = sorted({k for k in wanted if wanted.count(k) > 1})
    missing = sorted(k for k in set(wanted) if k not in source)
    unused = sorted(set(source) - set(wanted))
    wrong = [
        f"{key_map[name]} {tuple(np.shape(source[key_map[name]]))} != {tuple(t.shape)} ({name})"
        for name, t in targets.items()
        if key_map[name] in source and tuple(np.shape(source[key_map[name]])) != tuple(t.shape)
    ]
    problems = [
        f"{label}: {', '.join(keys[:6])}{f' (+{len(keys) - 6} more)' if len(keys) > 6 else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected (unused)", unused),
            ("wrong shape", wrong),
            ("used twice", duplicates),
        )
        if keys
    ]
    if problems:
        raise ImportMismatchError(f"{origin}: " + "; ".join(problems))
    state = {
        name: torch.as_tensor(np.asarray(source[key_map[name]])).to(t.dtype)
        for name, t in targets.items()
    }
    model.load_state_dict(state, strict=False)
