"""Initialise 3D convolutions from 2D ones by inflation (Carreira & Zisserman, I3D).

A 2D kernel ``(out, in, kh, kw)`` repeated ``t`` times along a new time axis and divided by
``t`` gives a 3D kernel ``(out, in, t, kh, kw)`` whose response to a static video (every
frame the same image) equals the 2D kernel's response to that image. This is how the paper's
R3D baseline starts from ImageNet 2D weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def inflate_2d_to_3d(weight_2d: torch.Tensor, time: int) -> torch.Tensor:
    """``(out, in, kh, kw)`` -> ``(out, in, time, kh, kw)``: repeated along time, divided by it."""
    if weight_2d.dim() != 4:
        raise ValueError(
            f"expected a 2D conv weight (out, in, kh, kw), got {tuple(weight_2d.shape)}"
        )
    if time < 1:
        raise ValueError(f"time must be >= 1, got {time}")
    return weight_2d.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def inflate_state_dict(
    state_2d: Mapping[str, torch.Tensor], model_3d: nn.Module
) -> dict[str, torch.Tensor]:
    """A state dict for ``model_3d`` from a 2D network's, inflating every 4D conv weight.

    Keys must match one to one (same module names); a 4D tensor whose 3D counterpart is 5D is
    inflated to that counterpart's temporal size, everything else (BN, fc, biases) is copied.
    Any key or shape that does not fit is an error, never silently skipped.
    """
    target = model_3d.state_dict()
    missing = sorted(set(target) - set(state_2d))
    unexpected = sorted(set(state_2d) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"2D and 3D state dicts differ: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    out = {}
    for key, want in target.items():
        value = state_2d[key]
        if value.dim() == 4 and want.dim() == 5:
            value = inflate_2d_to_3d(value, want.shape[2])
        if value.shape != want.shape:
            raise ValueError(
                f"{key}: 2D shape {tuple(value.shape)} does not inflate to {tuple(want.shape)}"
            )
        out[key] = value.to(want.dtype)
    return out
