"""Helpers shared by the export tests (a module name no other test folder uses)."""

from __future__ import annotations

import torch

PARITY_SHAPES = [(1, 8, 112, 112), (3, 16, 128, 171), (2, 32, 112, 112)]


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BatchNorm statistics calibrated on structured noise and a wide classifier, so that
    features vary from position to position and probabilities are far from uniform (with
    freshly initialised statistics every position looks alike)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(4, 3, 8, 112, 112, generator=gen)
    clips = noise * torch.linspace(0, 4, 112) + torch.linspace(-2, 2, 112)[:, None]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 1.0  # running statistics := this batch's statistics
        model.train()(clips)
        for bn in bns:
            bn.momentum = 0.1
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=gen) * 0.3)
        model.fc.bias.zero_()
    return model.eval()
