"""Import PyTorch state dicts: ig65m-pytorch ``.pth`` (Caffe2 widths) and torchvision's
``r2plus1d_18`` (torchvision widths). Both use torchvision's module names, as our zoo does."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from r21d.importers.exact import ImportMismatchError


def load_torch_file(path: str | Path) -> Any:
    """What a ``.pth`` file holds, loaded with ``weights_only=True``: no code in it runs.

    Every failure is one line naming the file. A pickle that asks for a Python object
    (``os.system``, a class) is refused as malformed or malicious; torch's own advice to
    retry with ``weights_only=False`` (which would run it) is never passed on.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not for users
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(e))
        if wanted:
            raise ImportMismatchError(
                f"{path}: refused: the file asks for the Python object {wanted.group(1)}, which "
                "weight files never need (it is malformed or malicious); r21d reads .pth files "
                "without running code in them"
            ) from None
        raise ImportMismatchError(_unreadable(path, _torch_reason(str(e)))) from None
    except (RuntimeError, OSError, ValueError) as e:  # a truncated zip, a foreign format
        raise ImportMismatchError(_unreadable(path, _torch_reason(str(e)))) from None
    except (EOFError, KeyError):  # an empty file; garbage (torch reads a bogus key)
        raise ImportMismatchError(_unreadable(path, "")) from None


def _torch_reason(message: str) -> str:
    """The line of a torch error that says what is wrong, without torch's boilerplate (which
    includes the advice to load with ``weights_only=False``)."""
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(skip) and "weights_only" not in line]
    return useful[0] if useful else ""


def _unreadable(path: str | Path, reason: str) -> str:
    return f"{path}: not a loadable PyTorch weight file (truncated, corrupted or another format" + (
        f": {reason})" if reason else ")"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` state dict, read by :func:`load_torch_file` (no code runs).

    BN ``num_batches_tracked`` counters are dropped: they carry no weights. A ``{"state_dict":
    ...}`` or ``{"model": ...}`` wrapper, as training scripts write, is unwrapped.
    """
    data = load_torch_file(path)
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
