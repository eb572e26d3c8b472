"""Initialise 3D convolutions from 2D ones by inflation (Carreira & Zisserman, I3D).

A 2D kernel ``(out, in, kh, kw)`` repeated ``t`` times along a new time axis and divided by
``t`` gives a 3D kernel ``(out, in, t, kh, kw)`` whose response to a static video (every
frame the same image) equals the 2D kernel's response to that image. This is how the paper's
R3D baseline starts from ImageNet 2D weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from r21d.errors import BadOptionError


def inflate_2d_to_3d(weight_2d: torch.Tensor, time: int) -> torch.Tensor:
    """``(out, in, kh, kw)`` -> ``(out, in, time, kh, kw)``: repeated along time, divided by it."""
    if weight_2d.dim() != 4:
        raise BadOptionError(
            f"expected a 2D conv weight (out, in, kh, kw), got {tuple(weight_2d.shape)}"
        )
    if time < 1:
        raise BadOptionError(f"time must be >= 1, got {time}")
    return weight_2d.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def inflate_state_dict(
    state_2d: Mapping[str, torch.Tensor], model_3d: nn.Module, *, exclude: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """A state dict for ``model_3d`` from a 2D network's, inflating every 4D conv weight.

    Keys must match one to one (same module names; keys starting with a prefix in ``exclude``
    are left out on both sides); a 4D tensor whose 3D counterpart is 5D is inflated to that
    counterpart's temporal size, everything else (BN, fc, biases) is copied. Any key or shape
    that does not fit is an error, never silently skipped.
    """
    target = {k: v for k, v in model_3d.state_dict().items() if not k.startswith(exclude)}
    counters = {k for k in target if k.endswith("num_batches_tracked")}  # bookkeeping, optional
    missing = sorted(set(target) - set(state_2d) - counters)
    unexpected = sorted(set(state_2d) - set(target))
    if missing or unexpected:
        raise BadOptionError(
            f"2D and 3D state dicts differ: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    out = {}
    for key, want in target.items():
        value = state_2d.get(key, want)
        if value.dim() == 4 and want.dim() == 5:
            value = inflate_2d_to_3d(value, want.shape[2])
        if value.shape != want.shape:
            raise BadOptionError(
                f"{key}: 2D shape {tuple(value.shape)} does not inflate to {tuple(want.shape)}"
            )
        out[key] = value.to(want.dtype)
    return out


_RESNET2D_RENAMES = (
    (re.compile(r"^conv1\.(.+)$"), r"stem.0.\1"),
    (re.compile(r"^bn1\.(.+)$"), r"stem.1.\1"),
    (re.compile(r"^(layer\d+\.\d+)\.conv(\d+)\.(.+)$"), r"\1.conv\2.0.\3"),
    (re.compile(r"^(layer\d+\.\d+)\.bn(\d+)\.(.+)$"), r"\1.conv\2.1.\3"),
)


def video_resnet_key(key_2d: str) -> str:
    """A torchvision 2D ResNet state-dict key in the zoo's video ResNet naming.

    ``conv1``/``bn1`` become the R3D stem (``stem.0``/``stem.1``); a block's ``convK``/``bnK``
    become ``convK.0``/``convK.1``; ``downsample`` and ``fc`` keep their names.
    """
    for pattern, replacement in _RESNET2D_RENAMES:
        if pattern.match(key_2d):
            return pattern.sub(replacement, key_2d)
    return key_2d


def inflate_resnet2d(state_2d: Mapping[str, torch.Tensor], model_3d: nn.Module) -> dict:
    """Backbone tensors for an R3D ``model_3d`` from a 2D ResNet's state dict (torchvision
    layout, e.g. ImageNet ResNet-18/34), every conv inflated; the classifier is left out (a
    2D network's fc has other classes) and must be initialised by the caller."""
    renamed = {video_resnet_key(k): v for k, v in state_2d.items() if not k.startswith("fc.")}
    return inflate_state_dict(renamed, model_3d, exclude=("fc.",))
