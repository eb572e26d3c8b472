"""R(2+1)D (and the paper's R3D baseline) as Caffe2 built them (VMZ ``r3d_model.py``), with
torchvision's module names.

Module names follow torchvision's ``VideoResNet`` (``stem.0``, ``layer2.0.conv2.0.0`` ...), so
ig65m-pytorch and torchvision state dicts map key for key. The widths follow Caffe2: the middle
width of every (2+1)D conv is computed from that conv's own (in, out) channels, BN epsilon is
1e-3, and PyTorch momentum is 0.1 (Caffe2's 0.9 in PyTorch's inverted convention). The
``torchvision`` middle-width rule (one width per block) exists only so torchvision's
``r2plus1d_18`` weights load. See DESIGN.md section 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from r21d.errors import BadOptionError

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BN_MOMENTUM = 0.1  # Caffe2's momentum 0.9 in PyTorch's convention


def middle_width(in_ch: int, out_ch: int, k: int = 3) -> int:
    """Middle channels of a (2+1)D conv with the parameter count of a full k x k x 3 conv."""
    return (3 * in_ch * out_ch * k * k) // (in_ch * k * k + 3 * out_ch)


class Conv2Plus1D(nn.Sequential):
    """1xkxk spatial conv -> BN -> ReLU -> 3x1x1 temporal conv (no biases)."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, stride: tuple[int, int], eps: float):
        t_stride, s_stride = stride
        super().__init__(
            nn.Conv3d(in_ch, mid_ch, (1, 3, 3), (1, s_stride, s_stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid_ch, eps=eps, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_ch, out_ch, (3, 1, 1), (t_stride, 1, 1), (1, 0, 0), bias=False),
        )


def _bn(ch: int, eps: float) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(ch, eps=eps, momentum=BN_MOMENTUM)


def _conv_bn(conv: nn.Module, out_ch: int, eps: float, relu: bool) -> nn.Sequential:
    layers = [conv, _bn(out_ch, eps)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _shortcut(in_ch: int, out_ch: int, stride: tuple[int, int], eps: float) -> nn.Sequential:
    t, s = stride
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, (t, s, s), bias=False), _bn(out_ch, eps))


@dataclass(frozen=True)
class BlockStyle:
    """How a block builds its convs.

    ``conv`` is ``"2plus1d"`` (R(2+1)D) or ``"3d"`` (R3D, the paper's 3D baseline: full
    3x3x3 convs). ``per_block_middle`` reuses the first conv's middle width for the second
    (torchvision's rule) instead of computing it per conv (Caffe2's).
    """

    conv: str = "2plus1d"
    eps: float = 1e-3
    per_block_middle: bool = False

    def conv3x3(self, in_ch: int, out_ch: int, mid_ch: int, stride: tuple[int, int]) -> nn.Module:
        """The block's spatiotemporal conv (no bias); ``mid_ch`` only matters for (2+1)D."""
        if self.conv == "3d":
            t, s = stride
            return nn.Conv3d(in_ch, out_ch, 3, (t, s, s), 1, bias=False)
        return Conv2Plus1D(in_ch, out_ch, mid_ch, stride, self.eps)


class BasicBlock(nn.Module):
    """Two spatiotemporal convs and a residual; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: tuple[int, int], style: BlockStyle):
        super().__init__()
        eps = style.eps
        mid1 = middle_width(in_ch, width)
        mid2 = mid1 if style.per_block_middle else middle_width(width, width)
        self.conv1 = _conv_bn(style.conv3x3(in_ch, width, mid1, stride), width, eps, True)
        self.conv2 = _conv_bn(style.conv3x3(width, width, mid2, (1, 1)), width, eps, False)
        needs_projection = in_ch != width or stride != (1, 1)
        self.downsample = _shortcut(in_ch, width, stride, eps) if needs_projection else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class Bottleneck(nn.Module):
    """1x1x1 reduce -> spatiotemporal conv (carries the stride) -> 1x1x1 expand, residual."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: tuple[int, int], style: BlockStyle):
        super().__init__()
        eps = style.eps
        out_ch = width * self.expansion
        mid = middle_width(width, width)
        self.conv1 = _conv_bn(nn.Conv3d(in_ch, width, 1, bias=False), width, eps, True)
        self.conv2 = _conv_bn(style.conv3x3(width, width, mid, stride), width, eps, True)
        self.conv3 = _conv_bn(nn.Conv3d(width, out_ch, 1, bias=False), out_ch, eps, False)
        needs_projection = in_ch != out_ch or stride != (1, 1)
        self.downsample = _shortcut(in_ch, out_ch, stride, eps) if needs_projection else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


def stage_strides(clip_len: int) -> list[tuple[int, int]]:
    """(temporal, spatial) stride of the first block of each stage.

    Stages 2-4 halve time and space; Caffe2 skips the temporal halving in stage 3 when the
    clip is shorter than 4 frames and in stage 4 when it is shorter than 8.
    """
    return [(1, 1), (2, 2), (2 if clip_len >= 4 else 1, 2), (2 if clip_len >= 8 else 1, 2)]


def _stem(style: BlockStyle, out_ch: int, r2plus1d_mid: int) -> nn.Sequential:
    """R(2+1)D: 1x7x7 conv to 45 (fixed, not the formula), BN, ReLU, 3x1x1 conv, BN, ReLU.
    R3D: one 3x7x7 conv, BN, ReLU. Spatial stride 2, no max-pool."""
    if style.conv == "3d":
        conv = nn.Conv3d(3, out_ch, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False)
        return nn.Sequential(conv, _bn(out_ch, style.eps), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv3d(3, r2plus1d_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
        _bn(r2plus1d_mid, style.eps),
        nn.ReLU(inplace=True),
        nn.Conv3d(r2plus1d_mid, out_ch, (3, 1, 1), 1, (1, 0, 0), bias=False),
        _bn(out_ch, style.eps),
        nn.ReLU(inplace=True),
    )


class VideoResNet(nn.Module):
    """R(2+1)D (and the R3D baseline) video ResNet.

    ``forward`` takes a normalised float clip ``(N, 3, T, H, W)`` at the training size
    (T = clip_len, 112 x 112) and returns logits ``(N, num_classes)``; it refuses inputs that
    would pool to more than one position rather than silently averaging features, which
    Caffe2 never did.

    Head protocol shared by every architecture in the zoo (used by fully-convolutional
    evaluation in :mod:`r21d.models.heads`): ``features(x)`` -> map, ``pool`` -> pooled map,
    ``classifier_map(pooled)`` -> per-position logits ``(N, classes, t, h, w)``, and
    ``position_average``: ``"probs"`` (softmax per position, then the mean, as Caffe2) or
    ``"logits"`` (mean of logits, then softmax).
    """

    position_average = "probs"

    def __init__(
        self,
        depth: int,
        num_classes: int,
        clip_len: int,
        width: float = 1.0,
        style: BlockStyle = BlockStyle(),
    ):
        super().__init__()
        block: Callable[..., nn.Module] = BasicBlock if depth in (18, 34) else Bottleneck
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        self.stem = _stem(style, widths[0], max(1, round(45 * width)))
        in_ch = widths[0]
        for index, (n_blocks, w, stride) in enumerate(
            zip(BLOCKS_PER_STAGE[depth], widths, stage_strides(clip_len), strict=True), start=1
        ):
            blocks = []
            for b in range(n_blocks):
                blocks.append(block(in_ch, w, stride if b == 0 else (1, 1), style))
                in_ch = w * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.feature_dim = in_ch
        self.pool = nn.AvgPool3d((max(1, clip_len // 8), 7, 7), stride=1)
        self.fc = nn.Linear(in_ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after stage 4, ``(N, C, T/8, H/16, W/16)``."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def classifier_map(self, pooled: torch.Tensor) -> torch.Tensor:
        """The fc layer applied at every pooled position as a 1x1x1 conv with its weights."""
        return F.conv3d(pooled, self.fc.weight[:, :, None, None, None], self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.features(x))
        if pooled.shape[2:] != (1, 1, 1):
            raise BadOptionError(
                f"input {tuple(x.shape[2:])} pools to {tuple(pooled.shape[2:])} positions; the fc "
                "head takes clip_len x 112 x 112 (larger: r21d.models.heads.FullyConvolutional)"
            )
        return self.fc(pooled.flatten(1))
