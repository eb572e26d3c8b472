"""The model zoo: build any architecture from its spec or from a registry name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from r21d.models.video_resnet import BlockStyle, VideoResNet
from r21d.spec import ARCH_DEPTHS, VIT_PATCH, ModelSpec, SpecError, model_name


def _video_resnet(spec: ModelSpec) -> nn.Module:
    style = BlockStyle(
        conv="3d" if spec.arch == "r3d" else "2plus1d",
        eps=spec.bn_eps,
        per_block_middle=spec.arch == "r2plus1d_tv",
    )
    return VideoResNet(spec.depth, spec.num_classes, spec.clip_len, spec.width, style)


def _i3d(spec: ModelSpec) -> nn.Module:
    from r21d.models.i3d import I3D

    return I3D(spec.num_classes, width=spec.width)


def _videomae2(spec: ModelSpec) -> nn.Module:
    from r21d.models.videomae2 import SIZES, VideoMAE2

    return VideoMAE2(
        SIZES[spec.arch],
        spec.depth,
        VIT_PATCH[spec.arch],
        spec.num_classes,
        spec.clip_len,
        spec.crop_size,
        eps=spec.layer_norm_eps,
        init_values=1.0 if spec.layer_scale else 0.0,  # imported or fine-tuned weights replace it
    )


BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "r2plus1d": _video_resnet,
    "r2plus1d_tv": _video_resnet,
    "r3d": _video_resnet,
    "i3d": _i3d,
    **{arch: _videomae2 for arch in VIT_PATCH},
}


FAMILIES = {
    "r2plus1d": "R(2+1)D, Caffe2 widths",
    "r2plus1d_tv": "R(2+1)D, torchvision widths",
    "r3d": "R3D",
    "i3d": "I3D (Inception-v1 inflated)",
    **{arch: f"VideoMAE V2 ViT-{arch[-1].upper()}" for arch in VIT_PATCH},
}


def family(spec: ModelSpec) -> str:
    """The model family in words, e.g. ``VideoMAE V2 ViT-B``."""
    return FAMILIES[spec.arch]


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model exactly as ``spec`` describes it, in eval mode.

    The spec rides along as ``model.spec``.
    """
    model = BUILDERS[spec.arch](spec).eval()
    model.spec = spec
    return model


def parse_name(name: str) -> tuple[str, int]:
    """``r2plus1d_34`` -> (``r2plus1d``, 34), ``videomae2_vit_b`` -> (``videomae2_vit_b``, 12);
    unknown names are a clear error."""
    if name in VIT_PATCH:  # a ViT size is named alone: its depth is part of the size
        return name, ARCH_DEPTHS[name][0]
    arch, _, depth = name.rpartition("_")
    known = arch in ARCH_DEPTHS and arch not in VIT_PATCH
    if not known or not depth.isdigit() or int(depth) not in ARCH_DEPTHS[arch]:
        raise SpecError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return arch, int(depth)


def model_names() -> list[str]:
    """Every name the registry can build."""
    return [model_name(arch, d) for arch, depths in ARCH_DEPTHS.items() for d in depths]


def create_spec(name: str, num_classes: int, clip_len: int | None = None, **fields) -> ModelSpec:
    """A spec for registry name ``name`` with the arch's default preprocessing and test
    protocol (``clip_len`` ``None``: the family's default: 16 frames for VideoMAE V2, 64 for
    I3D, the paper's 8 for R(2+1)D and R3D)."""
    arch, depth = parse_name(name)
    default_clip_len = 8
    if arch == "i3d":
        fields = {**I3D_DEFAULTS, **fields}
        default_clip_len = I3D_CLIP_LEN
    if arch in VIT_PATCH:
        fields = {**VIDEOMAE2_DEFAULTS, **fields}
        default_clip_len = VIDEOMAE2_CLIP_LEN
    clip_len = clip_len or default_clip_len
    return ModelSpec(arch=arch, depth=depth, num_classes=num_classes, clip_len=clip_len, **fields)


# DeepMind's I3D preprocessing: short side 256, 224 crop, RGB scaled to [-1, 1]; 64-frame clips.
I3D_CLIP_LEN = 64
I3D_DEFAULTS = dict(
    resize_mode="short_edge",
    resize_size=(256,),
    crop_size=224,
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
)


# VideoMAE V2's Kinetics protocol (DESIGN.md s.12): ImageNet mean/std, short side 224,
# 16 frames at sampling rate 4, 5 clips x 3 crops of 224 along the long side.
VIDEOMAE2_CLIP_LEN = 16
VIDEOMAE2_DEFAULTS = dict(
    frame_step=4,
    resize_mode="short_edge",
    resize_size=(224,),
    crop_size=224,
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    num_clips=5,
    num_crops=3,
    fixed_input=True,
)


def create_model(name: str, num_classes: int, clip_len: int | None = None, **fields) -> nn.Module:
    """Build registry model ``name`` (e.g. ``r2plus1d_34``); its spec is ``model.spec``."""
    return build_model(create_spec(name, num_classes, clip_len, **fields))
