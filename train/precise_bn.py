"""Precise BatchNorm statistics: recompute running means and variances at the end of training.

During training each BN layer keeps an exponential moving average (momentum 0.1) of batch
statistics computed with weights that kept changing; after a short or fast-moving run those
averages lag behind the final weights, and the model scores worse in eval mode than it trained.
Recomputing them with the final weights, as an equally weighted average over a number of
training batches (Wu & Johnson, "Rethinking BatchNorm"; PySlowFast's ``BN.USE_PRECISE_STATS``),
removes the lag. In a distributed run every process averages over its own batches and the
results are averaged over processes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from r21d.train.distributed import Context


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, batches: Iterable[torch.Tensor], ctx: Context | None = None
) -> int:
    """Replace every BN layer's running statistics by their average over ``batches``.

    The model runs in train mode without gradients; module modes and BN momenta are restored
    afterwards. Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    modes = {m: m.training for m in model.modules()}
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    model.train()
    count = 0
    try:
        for clips in batches:
            model(clips)
            count += 1
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        for module, training in modes.items():
            module.training = training
    if ctx is not None and ctx.distributed:
        for bn in norms:
            for stat in (bn.running_mean, bn.running_var):
                dist.all_reduce(stat)
                stat /= ctx.world_size
    return count
