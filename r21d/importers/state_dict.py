"""Import PyTorch state dicts: ig65m-pytorch ``.pth`` (Caffe2 widths) and torchvision's
``r2plus1d_18`` (torchvision widths). Both use torchvision's module names, as our zoo does."""

from __future__ import annotations

from pathlib import Path

import torch

from r21d.importers.exact import ImportMismatchError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` state dict, loaded with ``weights_only=True`` (no code runs).

    BN ``num_batches_tracked`` counters are dropped: they carry no weights. A ``{"state_dict":
    ...}`` or ``{"model": ...}`` wrapper, as training scripts write, is unwrapped.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ImportMismatchError(f"{path}: not a loadable PyTorch weight file ({e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ImportMismatchError(f"{path}: expected a dict of tensors (a state dict)")
    return {
        k.removeprefix("module."): v
        for k, v in data.items()
        if not k.endswith("num_batches_tracked")
    }


def num_classes_of(state: dict[str, torch.Tensor]) -> int:
    """Class count from ``fc.weight``."""
    if "fc.weight" not in state:
        raise ImportMismatchError("state dict has no fc.weight: not an R(2+1)D classifier")
    return int(state["fc.weight"].shape[0])
