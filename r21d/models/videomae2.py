"""VideoMAE V2: a plain ViT over space-time tubelets (DESIGN.md s.12; OpenGVLab/VideoMAEv2).

A clip ``(N, 3, T, H, W)`` is cut into tubelets of 2 frames x p x p pixels by a Conv3d with
kernel = stride = (2, p, p); each tubelet is a token of width D, to which a fixed 1-D sinusoid
table over the flattened token index is added. Pre-norm blocks (attention with q/v biases but
no k bias, then an exact-GELU MLP, each optionally scaled by a learnt ``gamma``) follow; the
head averages all tokens, normalises them (``fc_norm``) and applies a Linear classifier.

The position table fixes the token grid, so a model takes only the ``clip_len x crop x crop``
clips it was built for (its spec has ``fixed_input``). Module names follow upstream's, so an
upstream state dict maps onto this model one to one.

The head protocol of :class:`~r21d.models.heads.FullyConvolutional` is served with a single
"position": ``features`` returns the pooled, normalised tokens as ``(N, D, 1, 1, 1)``, ``pool``
is the identity and ``classifier_map`` applies ``head`` along the channel dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from r21d.errors import BadOptionError

TUBELET_FRAMES = 2


@dataclass(frozen=True)
class ViTSize:
    """Token width, attention heads and MLP hidden width of one ViT size (depth and patch
    size are in the spec: :data:`r21d.spec.ARCH_DEPTHS`, :data:`r21d.spec.VIT_PATCH`)."""

    width: int
    heads: int
    mlp_hidden: int


SIZES = {
    "videomae2_vit_s": ViTSize(width=384, heads=6, mlp_hidden=4 * 384),
    "videomae2_vit_b": ViTSize(width=768, heads=12, mlp_hidden=4 * 768),
    "videomae2_vit_l": ViTSize(width=1024, heads=16, mlp_hidden=4 * 1024),
    "videomae2_vit_h": ViTSize(width=1280, heads=16, mlp_hidden=4 * 1280),
    "videomae2_vit_g": ViTSize(width=1408, heads=16, mlp_hidden=6144),  # mlp ratio 48/11
}


def sinusoid_table(tokens: int, dim: int) -> torch.Tensor:
    """``(tokens, dim)``: angle ``pos / 10000^(2*(j//2)/dim)``, sin on even j, cos on odd j."""
    j = torch.arange(dim, dtype=torch.float64)
    pos = torch.arange(tokens, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (2 * torch.div(j, 2, rounding_mode="floor") / dim)
    return torch.where(j % 2 == 0, angle.sin(), angle.cos()).float()


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= rate
    return x * keep.to(x.dtype) / (1 - rate)


class TubeletEmbedding(nn.Module):
    """``(N, 3, T, H, W)`` -> tokens ``(N, T/2 * H/p * W/p, D)``, time-major."""

    def __init__(self, width: int, patch: int):
        super().__init__()
        kernel = (TUBELET_FRAMES, patch, patch)
        self.proj = nn.Conv3d(3, width, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` has no bias, q and v have their own, k none."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(n, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))


class MLP(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + g1 * attn(norm1(x))``, then ``x + g2 * mlp(norm2(x))``.

    ``init_values > 0`` adds the layer-scale vectors ``gamma_1``/``gamma_2`` (upstream's
    ``init_values``); without them the branches are unscaled.
    """

    def __init__(
        self,
        size: ViTSize,
        eps: float,
        init_values: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(size.width, eps=eps)
        self.attn = Attention(size.width, size.heads)
        self.norm2 = nn.LayerNorm(size.width, eps=eps)
        self.mlp = MLP(size.width, size.mlp_hidden)
        if init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((size.width,), init_values))
            self.gamma_2 = nn.Parameter(torch.full((size.width,), init_values))
        else:
            self.register_parameter("gamma_1", None)
            self.register_parameter("gamma_2", None)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._branch(self.attn(self.norm1(x)), self.gamma_1)
        return x + self._branch(self.mlp(self.norm2(x)), self.gamma_2)

    def _branch(self, y: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        if gamma is not None:
            y = gamma * y
        return drop_path(y, self.drop_path_rate, self.training)


class VideoMAE2(nn.Module):
    """VideoMAE V2 ViT classifier for ``clip_len x crop_size x crop_size`` clips.

    ``drop_path_rate`` rises linearly from 0 in the first block to the given rate in the last
    (upstream's stochastic-depth rule); ``head_dropout`` sits before ``head``. Both act only in
    training mode.
    """

    position_average = "probs"

    def __init__(
        self,
        size: ViTSize,
        depth: int,
        patch: int,
        num_classes: int,
        clip_len: int,
        crop_size: int,
        eps: float = 1e-6,
        init_values: float = 0.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        tokens = (clip_len // TUBELET_FRAMES) * (crop_size // patch) ** 2
        self.patch_embed = TubeletEmbedding(size.width, patch)
        # Fixed, not learnt: rebuilt from the token grid, never stored in a checkpoint.
        self.register_buffer("pos_embed", sinusoid_table(tokens, size.width), persistent=False)
        self.blocks = nn.ModuleList(Block(size, eps, init_values) for _ in range(depth))
        self.set_drop_path(drop_path_rate)
        self.fc_norm = nn.LayerNorm(size.width, eps=eps)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(size.width, num_classes)
        self.pool = nn.Identity()

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 in the first block to ``rate`` in the last."""
        if not 0 <= rate < 1:
            raise BadOptionError(f"drop path rate must be in [0, 1), got {rate}")
        depth = len(self.blocks)
        for i, block in enumerate(self.blocks):
            block.drop_path_rate = rate * i / max(1, depth - 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Token features after the last block, ``(N, tokens, D)``."""
        clip = tuple(x.shape[2:])
        x = self.patch_embed(x)
        if x.shape[1] != self.pos_embed.shape[0]:
            raise BadOptionError(
                f"a clip of T, H, W = {clip} cuts into {x.shape[1]} tokens, but the position "
                f"table of this model has {self.pos_embed.shape[0]}: it takes only the clip "
                "shape it was built for"
            )
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over all tokens, then ``fc_norm``: ``(N, D, 1, 1, 1)`` (one position)."""
        return self.fc_norm(self.tokens(x).mean(dim=1))[:, :, None, None, None]

    def classifier_map(self, pooled: torch.Tensor) -> torch.Tensor:
        """``head`` applied along the channel dim of ``(N, D, t, h, w)``."""
        return self.head(self.head_dropout(pooled.movedim(1, -1))).movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of normalised clips ``(N, 3, T, H, W)``."""
        return self.classifier_map(self.pool(self.features(x))).flatten(1)
