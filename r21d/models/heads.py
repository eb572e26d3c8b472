"""Fully-convolutional evaluation: the classifier at every pooled position (DESIGN.md s.4).

Caffe2 (VMZ ``use_convolutional_pred``) keeps the head's average pool at kernel
``(T/8, 7, 7)`` with stride 1, applies the fc as a 1x1x1 conv, takes a softmax over classes at
every position and averages the probabilities over all positions (``ReduceBackMean``). On a
112x112 clip of ``clip_len`` frames there is one position and this equals the plain model; on a
128x171 frame there are 2x5 positions and it differs from "global pool, then fc".

:class:`FullyConvolutional` wraps any zoo model that implements the head protocol
(``features``, ``pool``, ``classifier_map``, ``position_average``); it is the graph that
:mod:`r21d.export.onnx` exports and the torch backend of the inference engine runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from r21d.artefacts import INPUT_FORMATS
from r21d.errors import BadOptionError
from r21d.spec import ModelSpec

SPATIAL_STRIDE = {"r2plus1d": 16, "r2plus1d_tv": 16, "r3d": 16, "i3d": 32}
"""Spatial down-sampling before the head's 7x7 pool, per architecture."""
POOL_SIZE = 7


def min_spatial_size(spec: ModelSpec) -> int:
    """Smallest frame height/width the head's 7x7 pool accepts (112 for R(2+1)D, 224 for I3D);
    for ``fixed_input`` models (ViTs) the one size they take, the crop size."""
    if spec.fixed_input:
        return spec.crop_size
    return SPATIAL_STRIDE[spec.arch] * POOL_SIZE


def check_input_shape(
    spec: ModelSpec, shape: Sequence[int], input_format: str | None = None
) -> None:
    """Raise a clear :class:`ValueError` if a model described by ``spec`` cannot take ``shape``.

    ``shape`` is ``(N, T, H, W, 3)`` for ``input_format="uint8"`` or ``(N, 3, T, H, W)`` for
    ``"float"``; with ``None`` the layout is read from where the 3 colour channels sit. Called
    before any graph runs, by every backend: a ``fixed_input`` model (a ViT) takes only
    ``clip_len x crop_size x crop_size``; otherwise a clip shorter than ``spec.min_frames`` (the
    temporal pool needs ``clip_len/8`` positions after the /8 down-sampling) or frames smaller
    than :func:`min_spatial_size` would otherwise fail deep inside the runtime, or not at all.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise BadOptionError(
            f"input must have 5 dims, (N, T, H, W, 3) uint8 frames or (N, 3, T, H, W) float "
            f"clips; got shape {shape}"
        )
    if input_format is None:
        input_format = "uint8" if shape[4] == 3 and shape[1] != 3 else "float"
    if input_format == "uint8":
        n, t, h, w, c = shape
        layout = "(N, T, H, W, 3)"
    elif input_format == "float":
        n, c, t, h, w = shape
        layout = "(N, 3, T, H, W)"
    else:
        raise BadOptionError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if c != 3:
        raise BadOptionError(
            f"{input_format} input must be {layout} with 3 RGB channels; got {shape}"
        )
    if n < 1:
        raise BadOptionError(f"batch size must be at least 1; got shape {shape}")
    if spec.fixed_input:
        want = (spec.clip_len, spec.crop_size, spec.crop_size)
        if (t, h, w) != want:
            raise BadOptionError(
                f"{spec.name} takes clips of exactly {'x'.join(map(str, want))} (T x H x W), got "
                f"{t}x{h}x{w}: its position table is tied to that token grid (crop the frames to "
                f"{spec.crop_size}x{spec.crop_size})"
            )
        return
    if t < spec.min_frames:
        raise BadOptionError(
            f"clip of {t} frames is shorter than the {spec.min_frames} frames {spec.name} needs: "
            f"its head pools over {max(1, spec.clip_len // 8)} time step(s) left after the /8 "
            f"temporal down-sampling (clip_len {spec.clip_len})"
        )
    size = min_spatial_size(spec)
    if h < size or w < size:
        raise BadOptionError(
            f"frames of {h}x{w} are smaller than the {size}x{size} {spec.name} needs: its head "
            f"pools 7x7 positions after the /{SPATIAL_STRIDE[spec.arch]} down-sampling"
        )


class FullyConvolutional(nn.Module):
    """A zoo model evaluated fully convolutionally; returns ``(probs, features[, logits_map])``.

    * ``probs`` ``(N, classes)`` float32: with ``position_average == "probs"`` (R(2+1)D,
      Caffe2) a softmax over classes at every position ``(t, h, w)``, then the mean over
      positions; with ``"logits"`` (I3D) the mean of the logits, then a softmax.
    * ``features`` ``(N, feature_dim)``: the pooled map averaged over positions.
    * ``logits_map`` ``(N, classes, t, h, w)``: per-position logits (only with
      ``logits_map=True``).

    ``input_format="uint8"`` takes raw RGB frames ``(N, T, H, W, 3)`` and normalises them
    in-graph with the spec's mean and std (0-255 scale), so callers cannot get mean, std or
    channel order wrong; ``"float"`` takes normalised clips ``(N, 3, T, H, W)``.

    The wrapped model is put in eval mode and shares its weights with this module.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        input_format: str = "uint8",
        logits_map: bool = False,
    ):
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise BadOptionError(
                f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}"
            )
        for name in ("features", "pool", "classifier_map", "position_average"):
            if not hasattr(model, name):
                raise TypeError(
                    f"{type(model).__name__} lacks {name!r}: it does not implement the head "
                    "protocol (features, pool, classifier_map, position_average)"
                )
        if model.position_average not in ("probs", "logits"):
            raise BadOptionError(f"unknown position_average {model.position_average!r}")
        self.model = model
        self.spec = spec.replace(head="fully_conv")
        self.input_format = input_format
        self.logits_map = logits_map
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32))
        self.eval()

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of the wrapped model's weights (the head's softmax always runs in fp32)."""
        return next(self.model.parameters()).dtype

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw RGB frames ``(N, T, H, W, 3)`` (uint8, 0-255) -> normalised ``(N, 3, T, H, W)``."""
        x = (frames.to(self.mean.dtype) - self.mean) / self.std
        return x.permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if all(isinstance(s, int) for s in x.shape):  # symbolic (SymInt) while exporting
            check_input_shape(self.spec, x.shape, self.input_format)
        if self.input_format == "uint8":
            x = self.normalise(x)
        x = x.to(self.compute_dtype)  # fp32 in, fp16 inside a half model
        pooled = self.model.pool(self.model.features(x))
        logits = self.model.classifier_map(pooled).float()
        positions = (2, 3, 4)
        if self.model.position_average == "probs":
            probs = F.softmax(logits, dim=1).mean(dim=positions)
        else:
            probs = F.softmax(logits.mean(dim=positions), dim=1)
        features = pooled.float().mean(dim=positions)
        if self.logits_map:
            return probs, features, logits
        return probs, features
