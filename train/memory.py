"""Will a training step fit in memory? Measured up front, so a run too big fails clearly
instead of swapping the machine to a halt (or dying in the out-of-memory killer).

One forward pass of a single clip measures what a clip costs: every tensor autograd saves
for the backward pass is counted as it is saved; the model's weights, gradients and optimiser
state are counted from its parameters. ``batch_size`` clips must fit in the memory available
now (``MemAvailable`` on the CPU, the free memory of the GPU) with a margin; otherwise
:class:`~r21d.errors.BadOptionError` says how much is needed, how much there is, and the
largest batch that fits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from r21d.errors import BadOptionError

HEADROOM = 0.85
"""Share of the available memory a run may plan to use (the rest: decoding, the OS)."""
STATE_BYTES_PER_PARAMETER = {"sgd": 12, "adamw": 16}
"""Bytes per fp32 parameter: the weight, its gradient and the optimiser's state."""
BACKWARD_FACTOR = 1.5
"""An assumed margin, not a measurement: the backward pass holds gradients beside the saved
activations, taken as half as much again."""


def available_bytes(device: torch.device) -> int:
    """Memory a run can use now: free GPU memory, or the kernel's ``MemAvailable``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def bytes_per_clip(
    model: nn.Module, clip: torch.Tensor, autocast: contextlib.AbstractContextManager
) -> int:
    """Bytes of the activations autograd keeps for the backward pass of one clip ``(1, 3, T,
    H, W)``, counted tensor by tensor as the forward pass saves them (weights left out), times
    :data:`BACKWARD_FACTOR` for the gradients that flow back through them."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    modes = {m: m.training for m in model.modules()}
    model.eval()  # no BatchNorm statistics updated, no dropout randomness drawn
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            model(clip)
    finally:
        for module, training in modes.items():
            module.training = training
    return int(BACKWARD_FACTOR * sum(saved.values()))


def check_fits(
    model: nn.Module,
    clip: torch.Tensor,
    batch_size: int,
    optimizer: str,
    autocast: contextlib.AbstractContextManager,
) -> dict:
    """Raise :class:`~r21d.errors.BadOptionError` unless a ``batch_size`` step fits; returns
    the measured figures (bytes per clip, model state, needed, available)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = trainable * STATE_BYTES_PER_PARAMETER[optimizer]
    per_clip = bytes_per_clip(model, clip, autocast)
    needed = state + batch_size * per_clip
    available = available_bytes(clip.device)
    figures = {
        "bytes_per_clip": per_clip,
        "state_bytes": state,
        "needed_bytes": needed,
        "available_bytes": available,
    }
    budget = HEADROOM * available
    if needed > budget:
        fits = int(max(0.0, budget - state) // max(1, per_clip))
        gib = 2**30
        raise BadOptionError(
            f"a training step of {batch_size} clips needs about {needed / gib:.1f} GiB "
            f"({per_clip / gib:.2f} GiB per clip of shape {tuple(clip.shape[1:])} plus "
            f"{state / gib:.1f} GiB of gradients and optimiser state) but {available / gib:.1f} "
            f"GiB is available on {clip.device.type}: use --batch-size {fits} or less"
            + (" (not even one clip fits)" if fits == 0 else "")
        )
    return figures
