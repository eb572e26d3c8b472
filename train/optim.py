"""Optimisers: the paper's SGD, or the ViT fine-tuning recipe's AdamW with layer-wise decay.

- ``sgd``: momentum SGD (Nesterov optional) with weight decay on every weight, as Caffe2
  trained R(2+1)D.
- ``adamw``: AdamW, as VideoMAE V2 fine-tunes its ViTs. Biases, norms, layer-scale vectors and
  the q/v biases (every 1-D parameter) get no weight decay. With ``layer_decay < 1`` each ViT
  block learns at ``layer_decay ** (depth + 1 - i)`` times the rate of the head (block ``i``
  counted from 1, the tubelet embedding as 0), so layers near the input move least.

Each parameter group carries an ``lr_scale``; the trainer sets ``lr = lr_at(step) * lr_scale``.
"""

from __future__ import annotations

import torch
from torch import nn

from r21d.errors import BadOptionError

OPTIMIZERS = ("sgd", "adamw")
ADAMW_BETAS = (0.9, 0.999)


def layer_id(name: str, depth: int) -> int:
    """Depth of a ViT parameter: 0 for the embedding, ``i + 1`` for block ``i``, ``depth + 1``
    for what follows the blocks (fc_norm, head)."""
    if name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def parameter_groups(
    model: nn.Module, weight_decay: float, layer_decay: float = 1.0, decay_1d: bool = True
) -> list[dict]:
    """Trainable parameters grouped by (learning-rate scale, weight decay)."""
    if not 0 < layer_decay <= 1:
        raise BadOptionError(f"layer_decay must be in (0, 1], got {layer_decay}")
    blocks = getattr(model, "blocks", None)
    if layer_decay < 1 and blocks is None:
        raise BadOptionError("layer_decay applies to ViTs (models with blocks), not this model")
    depth = len(blocks) if blocks is not None else 0
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = layer_decay ** (depth + 1 - layer_id(name, depth)) if blocks is not None else 1.0
        decay = weight_decay if decay_1d or param.ndim > 1 else 0.0
        groups.setdefault((scale, decay), []).append(param)
    return [
        {"params": params, "lr_scale": scale, "weight_decay": decay}
        for (scale, decay), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def build_optimizer(
    model: nn.Module,
    kind: str,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
    layer_decay: float = 1.0,
) -> torch.optim.Optimizer:
    """The optimiser ``kind`` names over ``model``'s trainable parameters (rate set per step)."""
    if kind == "sgd":
        if layer_decay != 1.0:
            raise BadOptionError("layer_decay is part of the AdamW recipe: use --optimizer adamw")
        groups = parameter_groups(model, weight_decay)
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum, nesterov=nesterov)
    if kind == "adamw":
        groups = parameter_groups(model, weight_decay, layer_decay, decay_1d=False)
        return torch.optim.AdamW(groups, lr=0.0, betas=ADAMW_BETAS)
    raise BadOptionError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
