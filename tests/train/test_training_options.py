"""Short runs through the less common paths: fc-only fine-tuning with sqrt sampling, sigmoid
loss and bf16 autocast; the logistic-regression probe; the configuration a run saves."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from r21d.checkpoint import model_tensors, read_spec, save_checkpoint
from r21d.models import build_model
from r21d.train.config import TrainConfig, read_config_file
from r21d.train.data import load_video_set, write_manifest
from r21d.train.metrics import read_metrics
from r21d.train.trainer import train


@pytest.fixture
def few_videos(motion_videos, tmp_path):
    """Three left-moving and three right-moving videos, all six of different pairs."""
    data = load_video_set(motion_videos["train"])  # left_00, right_00, left_01, right_01 ...
    few = [data.records[2 * i] for i in range(3)] + [data.records[2 * i + 1] for i in range(3, 6)]
    return write_manifest(few, data.label_names, tmp_path / "few.jsonl")


@pytest.fixture
def pretrained(tiny_spec, tmp_path):
    torch.manual_seed(5)
    model = build_model(tiny_spec)
    with torch.no_grad():
        for name, t in model.named_buffers():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
    return save_checkpoint(model, tiny_spec, tmp_path / "pretrained.safetensors")


def test_fc_only_fine_tuning_with_sqrt_sampling_sigmoid_loss_and_bf16(
    few_videos, pretrained, tmp_path
):
    run = tmp_path / "fc_only"
    config = TrainConfig(
        train_manifest=str(few_videos),
        output_dir=str(run),
        init_from=str(pretrained),
        finetune="fc_only",
        sampling="sqrt",
        multi_label="sigmoid",
        precision="bf16",
        flip=True,
        clip_len=8,
        batch_size=2,
        max_steps=2,
        base_lr=25.6,
        workers=0,
        log_every=1,
        progress=False,
    )
    final = train(config)
    source, tuned = load_file(str(pretrained)), load_file(str(final))
    for key, value in tuned.items():
        if key.startswith("fc."):
            assert value.shape[0] == 2
        else:  # frozen backbone, BN statistics included
            assert torch.equal(value, source[key]), key
    spec = read_spec(final)
    assert spec.labels == ("left", "right") and spec.width == 0.125
    assert spec.provenance["fine_tuned_from"] == str(pretrained)
    lines = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in lines)
    saved = read_config_file(run / "config.yaml")
    assert saved["finetune"] == "fc_only" and saved["precision"] == "bf16"
    assert "resume" not in saved  # a session option, not part of the run's configuration


def test_linear_probe_fits_the_classifier_on_frozen_features(few_videos, pretrained, tmp_path):
    run = tmp_path / "probe"
    config = TrainConfig(
        train_manifest=str(few_videos),
        val_manifest=str(few_videos),
        output_dir=str(run),
        init_from=str(pretrained),
        finetune="linear_probe",
        val_clips=2,
        l2=1e-4,
        lbfgs_steps=200,
        progress=False,
    )
    final = train(config)
    source, probed = load_file(str(pretrained)), load_file(str(final))
    assert all(torch.equal(probed[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert probed["fc.weight"].shape[0] == 2 and probed["fc.weight"].abs().sum() > 0
    validation = read_metrics(run / "metrics.jsonl")[-1]
    # 6 videos of different looks, 64 features each at this width, weak L2: the fit
    # separates them (scored on its own training videos: this checks the fit, not transfer)
    assert validation["val_videos"] == 6 and validation["val_video_acc"] == 1.0
    assert set(model_tensors(build_model(read_spec(final)))) == set(probed)
