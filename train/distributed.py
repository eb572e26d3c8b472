"""Process group set-up for ``torchrun``: gloo on CPU, nccl on GPU, one process per device.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is a single
process and nothing is initialised. Only rank 0 logs, writes checkpoints and validates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from r21d.infer.runtime import require_device


@dataclass(frozen=True)
class Context:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the ``torchrun`` process group (if any) and pick this process's device: the one
    asked for (``auto``, ``cpu``, ``cuda``, ``cuda:N``), or under ``torchrun`` with a GPU the
    one its ``LOCAL_RANK`` names."""
    device = require_device(device)
    use_cuda = device != "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        index = local_rank if world_size > 1 else int(device.partition(":")[2])
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(rank, world_size, dev)


def barrier(ctx: Context) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: Context) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: float, ctx: Context) -> float:
    """Mean of a scalar over all processes."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.item() / ctx.world_size


@torch.no_grad()
def replica_difference(model: torch.nn.Module, ctx: Context) -> float:
    """Largest absolute difference between this process's parameters and rank 0's, over all
    ranks (0.0 in a healthy data-parallel run: every rank applies the same averaged update).
    """
    if not ctx.distributed:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (p.detach() - reference).abs().max().double())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def any_rank(flag: bool, ctx: Context) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
