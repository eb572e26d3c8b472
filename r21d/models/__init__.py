"""The model zoo: build any architecture from its spec or from a registry name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from r21d.models.video_resnet import BlockStyle, VideoResNet
from r21d.spec import ARCH_DEPTHS, ModelSpec, SpecError


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


BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "r2plus1d": _video_resnet,
    "r2plus1d_tv": _video_resnet,
    "r3d": _video_resnet,
    "i3d": _i3d,
}


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model exactly as ``spec`` describes it, in eval mode.

    The spec rides along as ``model.spec``.
    """
    model = BUILDERS[spec.arch](spec).eval()
    model.spec = spec
    return model


def parse_name(name: str) -> tuple[str, int]:
    """``r2plus1d_34`` -> (``r2plus1d``, 34); unknown names are a clear error."""
    arch, _, depth = name.rpartition("_")
    if arch not in ARCH_DEPTHS or not depth.isdigit() or int(depth) not in ARCH_DEPTHS[arch]:
        raise SpecError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return arch, int(depth)


def model_names() -> list[str]:
    """Every name the registry can build."""
    return [f"{arch}_{d}" for arch, depths in ARCH_DEPTHS.items() for d in depths]


def create_spec(name: str, num_classes: int, clip_len: int, **fields) -> ModelSpec:
    """A spec for registry name ``name`` with the arch's default preprocessing."""
    arch, depth = parse_name(name)
    if arch == "i3d":
        fields = {**I3D_DEFAULTS, **fields}
    return ModelSpec(arch=arch, depth=depth, num_classes=num_classes, clip_len=clip_len, **fields)


# DeepMind's I3D preprocessing: short side 256, 224 crop, RGB scaled to [-1, 1].
I3D_DEFAULTS = dict(
    resize_mode="short_edge",
    resize_size=(256,),
    crop_size=224,
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
)


def create_model(name: str, num_classes: int, clip_len: int, **fields) -> nn.Module:
    """Build registry model ``name`` (e.g. ``r2plus1d_34``); its spec is ``model.spec``."""
    return build_model(create_spec(name, num_classes, clip_len, **fields))
