"""Parameter and FLOP counts (2 FLOPs per multiply-add, DESIGN.md section 9)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a float input of ``input_shape``, counted on the meta
    device so even R(2+1)D-152 at 32 frames costs no compute."""
    meta_model = copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(torch.empty(input_shape, device="meta"))
    return int(counter.get_total_flops())
