"""Precise BN: running statistics become the average over the given batches."""

from __future__ import annotations

import torch
from torch import nn

from r21d.train.precise_bn import recompute_bn_statistics


def test_statistics_are_the_equal_weight_average_of_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3, momentum=0.1)).eval()
    batches = [torch.randn(4, 2, 2, 3, 3) * (i + 1) + i for i in range(5)]
    used = recompute_bn_statistics(model, batches)
    assert used == 5
    bn = model[1]
    with torch.no_grad():
        outs = [model[0](b) for b in batches]
    mean = torch.stack([o.mean((0, 2, 3, 4)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3, 4), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training and not bn.training  # restored
