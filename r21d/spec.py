"""The model spec: everything needed to run a model correctly, travelling inside every artefact.

A checkpoint stores it in its safetensors metadata, an ONNX model in ``metadata_props``, a
TensorRT engine in a JSON file beside the engine. Inference configures itself from it, so a
user never re-types mean, std, clip length or resize mode.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from r21d.errors import BadModelFileError

SPEC_KEY = "r21d.spec"
"""Metadata key under which every artefact stores its spec as JSON."""

# Caffe2 / IG-65M preprocessing constants on the 0-255 RGB scale (DESIGN.md section 6).
KINETICS_MEAN = (110.201, 100.64, 95.9966)
KINETICS_STD = (58.1489, 56.4701, 55.3324)

ARCH_DEPTHS: dict[str, tuple[int, ...]] = {
    "r2plus1d": (18, 34, 50, 101, 152),  # Caffe2 widths (per-conv middle channels)
    "r2plus1d_tv": (18,),  # torchvision widths (per-block middle channels)
    "r3d": (18, 34),  # the paper's 3D baseline: full 3x3x3 convs
    "i3d": (22,),  # Inception-v1 inflated: 22 layers deep
    # VideoMAE V2 ViTs (DESIGN.md s.12): one depth per size, named by the size alone
    "videomae2_vit_s": (12,),
    "videomae2_vit_b": (12,),
    "videomae2_vit_l": (24,),
    "videomae2_vit_h": (32,),
    "videomae2_vit_g": (40,),
}
VIT_PATCH = {
    "videomae2_vit_s": 16,
    "videomae2_vit_b": 16,
    "videomae2_vit_l": 16,
    "videomae2_vit_h": 16,
    "videomae2_vit_g": 14,
}
"""ViT archs and their tubelet's spatial patch size (tubelets are 2 frames deep)."""
VIDEO_RESNETS = ("r2plus1d", "r2plus1d_tv", "r3d")
"""Archs with the Caffe2 head: pool (clip_len/8, 7, 7) after /8 in time and /16 in space."""
RESIZE_MODES = ("fixed", "short_edge")
HEADS = ("fc", "fully_conv")
FIXED_ASPECT = 4 / 3
"""Caffe2's fixed frame is 4:3 landscape: short side 128 -> 128x171 (DESIGN.md s.6)."""
CROP_COUNTS = (1, 3)
"""Crops per clip: the centre, or three along the long side (start, centre, end)."""


def model_name(arch: str, depth: int) -> str:
    """Registry name of ``arch`` at ``depth``: ``r2plus1d_34``; a ViT size is named alone."""
    return arch if arch in VIT_PATCH else f"{arch}_{depth}"


class SpecError(BadModelFileError):
    """A spec that cannot describe a runnable model."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and how its input must be prepared.

    ``resize_size`` is ``(h, w)`` for ``fixed`` resizing and ``(short_side,)`` for
    ``short_edge``. ``mean`` and ``std`` are per RGB channel on the 0-255 scale.
    ``head`` is ``fc`` (pool + classifier, one prediction per clip at the crop size) or
    ``fully_conv`` (classifier as a 1x1x1 conv, softmax per position, averaged; DESIGN.md s.4).

    The test protocol travels too: ``num_clips`` uniformly spaced clips per video, each in
    ``num_crops`` crops (1: the centre; 3: along the long side), so a video is scored from
    ``views`` = clips x crops softmax outputs, averaged. ``fixed_input`` models (ViTs, whose
    position table is tied to one token grid) take only ``clip_len x crop_size x crop_size``.

    ViTs only: ``layer_norm_eps`` is the LayerNorm epsilon the weights were trained with
    (upstream 1e-6) and ``layer_scale`` whether the blocks have ``gamma_1``/``gamma_2``.
    """

    arch: str
    depth: int
    num_classes: int
    clip_len: int
    labels: tuple[str, ...] | None = None
    frame_step: int = 1
    resize_mode: str = "fixed"
    resize_size: tuple[int, ...] = (128, 171)
    crop_size: int = 112
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    head: str = "fc"
    width: float = 1.0
    num_clips: int = 10
    num_crops: int = 1
    fixed_input: bool = False
    layer_norm_eps: float = 1e-6
    layer_scale: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("labels", "resize_size", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    @property
    def name(self) -> str:
        """Registry name of the architecture, e.g. ``r2plus1d_34`` (ViTs: ``videomae2_vit_b``)."""
        return model_name(self.arch, self.depth)

    @property
    def views(self) -> int:
        """Softmax outputs averaged per video by the test protocol: clips x crops."""
        return self.num_clips * self.num_crops

    @property
    def bn_eps(self) -> float:
        """BatchNorm epsilon the weights were trained with (Caffe2 1e-3, torchvision 1e-5)."""
        return 1e-5 if self.arch == "r2plus1d_tv" else 1e-3

    @property
    def min_frames(self) -> int:
        """Fewest input frames the head's temporal pool can take."""
        return self.clip_len

    def typical_frame(self) -> tuple[int, int]:
        """``(h, w)`` of a resized frame: the fixed size, or a 4:3 landscape frame for
        short-edge resizing (what export validation and engine profiles plan for)."""
        if self.resize_mode == "fixed":
            return self.resize_size[0], self.resize_size[1]
        short = self.resize_size[0]
        return short, round(short * FIXED_ASPECT)

    def with_resize_mode(self, resize_mode: str | None) -> ModelSpec:
        """This spec resized by ``resize_mode`` instead (``None``: unchanged).

        ``fixed`` from a short-edge spec keeps the short side and uses Caffe2's 4:3 frame
        (128 -> 128x171); ``short_edge`` from a fixed spec keeps the fixed height as short side.
        """
        if resize_mode is None or resize_mode == self.resize_mode:
            return self
        if resize_mode not in RESIZE_MODES:
            raise SpecError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if resize_mode == "short_edge":
            return self.replace(resize_mode="short_edge", resize_size=(min(self.resize_size),))
        short = self.resize_size[0]
        return self.replace(resize_mode="fixed", resize_size=(short, round(short * FIXED_ASPECT)))

    def label(self, index: int) -> str:
        """Class name of ``index``, or the index as text for models without names."""
        return self.labels[index] if self.labels else str(index)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the first field that cannot work."""
        if self.arch not in ARCH_DEPTHS:
            raise SpecError(f"unknown arch {self.arch!r}; known: {', '.join(ARCH_DEPTHS)}")
        if self.depth not in ARCH_DEPTHS[self.arch]:
            raise SpecError(
                f"{self.arch} has no depth {self.depth}; known: {ARCH_DEPTHS[self.arch]}"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise SpecError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise SpecError(
                f"{len(self.labels)} labels given for a model with {self.num_classes} classes"
            )
        if not isinstance(self.clip_len, int) or self.clip_len < 1:
            raise SpecError(f"clip_len must be a positive integer, got {self.clip_len!r}")
        if self.arch in VIDEO_RESNETS and self.clip_len % 8:
            raise SpecError(
                f"clip_len {self.clip_len} is not a multiple of 8: the Caffe2 head pools "
                "clip_len/8 frames in time (DESIGN.md s.3)"
            )
        if self.arch == "i3d" and self.clip_len < 9:
            # TF SAME padding takes any length; the (2, 7, 7) head pool needs ceil(T/8) >= 2.
            raise SpecError(
                f"clip_len {self.clip_len} is too short for I3D: its head pools 2 positions in "
                "time after the /8 down-sampling, so it needs at least 9 frames"
            )
        if self.arch in VIT_PATCH:
            self._validate_vit()
        elif self.layer_scale:
            raise SpecError(f"layer_scale is a ViT option; {self.arch} has none")
        if self.frame_step < 1:
            raise SpecError(f"frame_step must be >= 1, got {self.frame_step}")
        if self.resize_mode not in RESIZE_MODES:
            raise SpecError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        want = 2 if self.resize_mode == "fixed" else 1
        if len(self.resize_size) != want or min(self.resize_size) < 1:
            shape = "(height, width)" if want == 2 else "(short_side,)"
            raise SpecError(
                f"resize_size for {self.resize_mode} must be {shape}, got {self.resize_size}"
            )
        if self.crop_size < 1 or self.crop_size > min(self.resize_size):
            raise SpecError(
                f"crop_size {self.crop_size} does not fit the resized frame {self.resize_size}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise SpecError(f"{name} needs 3 values (R, G, B), got {len(value)}")
        if min(self.std) <= 0:
            raise SpecError(f"std must be positive, got {self.std}")
        if self.head not in HEADS:
            raise SpecError(f"head must be one of {HEADS}, got {self.head!r}")
        if not isinstance(self.num_clips, int) or self.num_clips < 1:
            raise SpecError(f"num_clips must be a positive integer, got {self.num_clips!r}")
        if self.num_crops not in CROP_COUNTS:
            raise SpecError(f"num_crops must be one of {CROP_COUNTS}, got {self.num_crops!r}")
        if not 0 < self.width <= 4:
            raise SpecError(f"width multiplier must be in (0, 4], got {self.width}")

    def _validate_vit(self) -> None:
        patch = VIT_PATCH[self.arch]
        if self.clip_len % 2:
            raise SpecError(
                f"clip_len {self.clip_len} is odd: {self.name} embeds tubelets of 2 frames"
            )
        if self.crop_size % patch:
            raise SpecError(
                f"crop_size {self.crop_size} is not a multiple of {self.name}'s {patch}-pixel patch"
            )
        if not self.fixed_input:
            raise SpecError(
                f"{self.name} needs fixed_input: its position table is tied to one token grid"
            )
        if self.width != 1.0:
            raise SpecError(f"{self.name} comes in its published size only (width 1.0)")
        if not 0 < self.layer_norm_eps < 1:
            raise SpecError(f"layer_norm_eps must be in (0, 1), got {self.layer_norm_eps}")

    def to_json(self) -> str:
        """Serialise to a JSON string (what artefacts store)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse and validate a spec; unknown or missing fields are clear errors."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build from a plain dict, rejecting unknown keys (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise SpecError(f"spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec fields: {', '.join(unknown)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise SpecError(f"spec is missing required fields: {', '.join(missing)}")
        return cls(**data)
