"""Fine-tuning a VideoMAE V2 ViT with the upstream recipe's pieces (AdamW, layer-wise
learning-rate decay, warm-up + cosine, drop path), and the memory check that refuses a run
too big for the machine before its first step."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from r21d.checkpoint import read_spec, save_checkpoint
from r21d.models import build_model, create_spec
from r21d.train.config import TrainConfig
from r21d.train.data import load_video_set, write_manifest
from r21d.train.memory import check_fits
from r21d.train.metrics import read_metrics
from r21d.train.model_setup import build_training_model
from r21d.train.optim import build_optimizer, parameter_groups
from r21d.train.schedule import lr_at
from r21d.train.trainer import train


@pytest.fixture
def small_vit_spec():
    """ViT-S at 4 frames of 32x32 (8 tokens): the real width and depth, fast to run."""
    return create_spec(
        "videomae2_vit_s", 5, 4, frame_step=2, resize_size=(48,), crop_size=32, num_crops=1
    )


def test_layer_wise_decay_scales_each_block_and_spares_1d_weights(small_vit_spec):
    model = build_model(small_vit_spec)
    depth = len(model.blocks)
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.75, decay_1d=False)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(scale_of) == len(named)  # every parameter in exactly one group
    assert scale_of[id(named["head.weight"])] == 1.0
    assert scale_of[id(named["fc_norm.weight"])] == 1.0
    assert scale_of[id(named["patch_embed.proj.weight"])] == pytest.approx(0.75 ** (depth + 1))
    for i in (0, 5, depth - 1):
        qkv = named[f"blocks.{i}.attn.qkv.weight"]
        assert scale_of[id(qkv)] == pytest.approx(0.75 ** (depth - i))
        assert decay_of[id(qkv)] == 0.05
        assert decay_of[id(named[f"blocks.{i}.attn.q_bias"])] == 0.0
        assert decay_of[id(named[f"blocks.{i}.norm1.weight"])] == 0.0
    with pytest.raises(ValueError, match="AdamW recipe"):
        build_optimizer(model, "sgd", layer_decay=0.75)


def test_drop_path_rises_linearly_over_the_blocks(small_vit_spec):
    model = build_training_model(small_vit_spec, drop_path=0.2)
    rates = [block.drop_path_rate for block in model.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))
    cnn = create_spec("r2plus1d_18", 5, 8, width=0.125)
    with pytest.raises(ValueError, match="drop_path applies to ViTs"):
        build_training_model(cnn, drop_path=0.1)


@pytest.fixture
def few_videos(motion_videos, tmp_path):
    data = load_video_set(motion_videos["train"])
    return write_manifest(data.records[:6], data.label_names, tmp_path / "few.jsonl")


def test_fine_tuning_a_vit_with_the_upstream_recipe(small_vit_spec, few_videos, tmp_path):
    torch.manual_seed(0)
    source = save_checkpoint(build_model(small_vit_spec), small_vit_spec, tmp_path / "vit.st")
    run = tmp_path / "run"
    config = TrainConfig(
        train_manifest=str(few_videos),
        val_manifest=str(few_videos),
        output_dir=str(run),
        init_from=str(source),
        optimizer="adamw",
        base_lr=0.128,  # 1e-3 at this 2-clip batch (linear scaling from 256)
        weight_decay=0.05,
        layer_decay=0.75,
        drop_path=0.1,
        schedule="cosine",
        warmup_steps=1,
        batch_size=2,
        max_steps=3,
        val_clips=1,
        workers=0,
        log_every=1,
        progress=False,
    )
    final = train(config)

    spec = read_spec(final)
    # the clip shape the position table was built for comes from the checkpoint
    assert (spec.arch, spec.clip_len, spec.crop_size, spec.fixed_input) == (
        "videomae2_vit_s",
        4,
        32,
        True,
    )
    assert spec.labels == ("left", "right")
    before, after = load_file(str(source)), load_file(str(final))
    assert after["head.weight"].shape == (2, 384)
    moved = {k: (after[k] - before[k]).abs().max().item() for k in before if "head" not in k}
    assert moved["blocks.11.mlp.fc1.weight"] > moved["blocks.0.mlp.fc1.weight"] > 0
    lines = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    peak = 0.128 * 2 / 256
    for r in lines:  # the head's rate, warm-up then cosine
        expected = lr_at(r["step"] - 1, peak=peak, total_steps=3, warmup_steps=1, schedule="cosine")
        assert r["lr"] == pytest.approx(expected) and math.isfinite(r["loss"])
    validation = read_metrics(run / "metrics.jsonl")[-1]
    assert validation["val_videos"] == 6


def test_a_run_too_big_for_memory_is_refused_before_it_starts(few_videos, tmp_path):
    """ViT-S at its real 16x224x224 clips: one clip's step is measured, and a batch that
    cannot fit is a one-line error naming the sizes, not a machine swapping to a halt."""
    spec = create_spec("videomae2_vit_s", 2, labels=("left", "right"))
    source = save_checkpoint(build_model(spec), spec, tmp_path / "vit_s.st")
    config = TrainConfig(
        train_manifest=str(few_videos),
        output_dir=str(tmp_path / "run"),
        init_from=str(source),
        optimizer="adamw",
        batch_size=100_000,
        max_steps=1,
        workers=0,
        progress=False,
    )
    with pytest.raises(ValueError, match=r"needs about .* GiB .* use --batch-size \d+ or less"):
        train(config)
    assert not list((tmp_path / "run").glob("step_*"))  # nothing trained


def test_the_memory_a_clip_takes_is_measured_not_assumed():
    """Twice the tokens keep about twice the activations for the backward pass."""
    off = torch.autocast("cpu", enabled=False)
    per_clip = {}
    for frames in (4, 8):
        spec = create_spec("videomae2_vit_s", 5, frames, resize_size=(112,), crop_size=112)
        model = build_model(spec).train()
        figures = check_fits(model, torch.zeros(1, 3, frames, 112, 112), 1, "adamw", off)
        per_clip[frames] = figures["bytes_per_clip"]
        assert figures["state_bytes"] == 16 * sum(p.numel() for p in model.parameters())
        assert figures["needed_bytes"] < figures["available_bytes"]
        assert model.training and all(p.grad is None for p in model.parameters())
    assert 1.3 * per_clip[4] < per_clip[8] < 3 * per_clip[4], per_clip
