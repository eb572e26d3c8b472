"""The model a run starts from: from scratch, or from a checkpoint with a new classifier.

Fine-tuning modes (paper s.4, "full fine-tuning" and "fc-only"):

- ``full``: every weight trains; starting from a checkpoint, the backbone weights are loaded
  and the classifier is re-initialised for the new class count.
- ``fc_only``: only the classifier trains; the backbone is frozen, including its BatchNorm
  statistics (its BN layers stay in eval mode while the model trains).
- ``linear_probe``: no SGD at all; features from the frozen backbone feed an L2-regularised
  logistic regression (:mod:`r21d.train.linear_probe`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from r21d.checkpoint import load_checkpoint, model_tensors
from r21d.errors import BadOptionError
from r21d.models import build_model, create_spec
from r21d.spec import ModelSpec

FINETUNE_MODES = ("full", "fc_only", "linear_probe")
FC_INIT_STD = 0.01  # Caffe2's GaussianFill for the last fc layer; bias 0
CLASSIFIERS = ("fc", "head")


def training_spec(
    *,
    arch: str,
    label_names: Sequence[str],
    clip_len: int | None = None,
    width: float = 1.0,
    frame_step: int | None = None,
    resize_mode: str | None = None,
    resize_size: Sequence[int] | None = None,
    crop_size: int | None = None,
    init_from: str | None = None,
) -> ModelSpec:
    """The spec of the model a run trains (and of every checkpoint it writes).

    From scratch it comes from the arguments, the arch's defaults filling what they leave
    open (for CNNs the paper's: 8 frames, fixed 128x171, 112 crops); from a checkpoint, the
    architecture (and mean, std) come from the checkpoint and the data fields (labels, clip,
    sampling) from the run where given, else from the checkpoint (a ViT keeps the clip shape
    its position table was built for unless told otherwise).
    """
    data = dict(
        clip_len=clip_len,
        frame_step=frame_step,
        resize_mode=resize_mode,
        resize_size=None if resize_size is None else tuple(resize_size),
        crop_size=crop_size,
    )
    data = {k: v for k, v in data.items() if v is not None}
    # a mode without a size: the spec's own size carried over (ModelSpec.with_resize_mode)
    mode = data.pop("resize_mode", None) if "resize_size" not in data else None
    classes = dict(num_classes=len(label_names), labels=tuple(label_names))
    if init_from:
        from r21d.checkpoint import read_spec

        source = read_spec(init_from)
        provenance = {"fine_tuned_from": str(init_from), "source_spec_name": source.name}
        spec = source.replace(head="fc", provenance=provenance, **classes, **data)
    else:
        provenance = {"trained_by": "r21d.train"}
        spec = create_spec(arch, width=width, provenance=provenance, **classes, **data)
    return spec.with_resize_mode(mode)


def build_training_model(
    spec: ModelSpec,
    *,
    init_from: str | None = None,
    inflate_from: str | None = None,
    finetune: str = "full",
    drop_path: float = 0.0,
) -> nn.Module:
    """A model for ``spec`` ready to train, with ``finetune``'s parameters trainable.

    With ``init_from`` every backbone tensor of that checkpoint is loaded (strictly: any
    missing or mis-shaped tensor is an error) and the classifier starts afresh. With
    ``inflate_from`` (R3D only, the paper's 3D baseline) a 2D ResNet's weights are inflated
    into the 3D backbone (:func:`r21d.train.inflate.inflate_resnet2d`). ``drop_path`` sets a
    ViT's stochastic depth (upstream's linear rule over the blocks).
    """
    if finetune not in FINETUNE_MODES:
        raise BadOptionError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
    if finetune != "full" and not (init_from or inflate_from):
        raise BadOptionError(f"finetune={finetune} trains only the classifier: give init_from")
    if init_from and inflate_from:
        raise BadOptionError("give init_from or inflate_from, not both")
    model = build_model(spec)
    if drop_path:
        if not hasattr(model, "set_drop_path"):
            raise BadOptionError(f"drop_path applies to ViTs, not {spec.name}")
        model.set_drop_path(drop_path)
    reset_classifier(model)
    head = classifier_name(model) + "."
    if inflate_from:
        if spec.arch != "r3d":
            raise BadOptionError(
                f"inflation fills full 3x3x3 convs: use arch r3d_18 or r3d_34, not {spec.name}"
            )
        from r21d.importers.state_dict import read_state_dict
        from r21d.train.inflate import inflate_resnet2d

        model.load_state_dict(inflate_resnet2d(read_state_dict(inflate_from), model), strict=False)
    if init_from:
        source, _ = load_checkpoint(init_from)
        backbone = {k: v for k, v in model_tensors(source).items() if not k.startswith(head)}
        expected = {k for k in model_tensors(model) if not k.startswith(head)}
        if set(backbone) != expected:
            raise BadOptionError(
                f"{init_from}: backbone tensors do not match {spec.name}: "
                f"missing {sorted(expected - set(backbone))[:5]}, "
                f"unexpected {sorted(set(backbone) - expected)[:5]}"
            )
        model.load_state_dict(backbone, strict=False)
    if finetune != "full":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head)
    return model


def classifier_name(model: nn.Module) -> str:
    """The attribute holding the model's classifier: ``fc`` (video ResNets), ``head`` (ViTs)."""
    for name in CLASSIFIERS:
        if isinstance(getattr(model, name, None), nn.Linear):
            return name
    raise BadOptionError(f"{type(model).__name__} has no linear classifier r21d can train")


def classifier(model: nn.Module) -> nn.Linear:
    """The model's classifier layer."""
    return getattr(model, classifier_name(model))


def reset_classifier(model: nn.Module) -> None:
    """Gaussian (std 0.01) classifier weights and zero bias, as Caffe2 initialised them."""
    layer = classifier(model)
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=FC_INIT_STD)
        nn.init.zeros_(layer.bias)


def set_train_mode(model: nn.Module, finetune: str) -> nn.Module:
    """``model.train()``, except that fc-only keeps the frozen backbone's BN statistics fixed."""
    model.train()
    if finetune != "full":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model
