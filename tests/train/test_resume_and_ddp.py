"""Exact resume after an interruption, and a two-process DistributedDataParallel run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from r21d.checkpoint import read_spec
from r21d.train.config import TrainConfig
from r21d.train.metrics import read_metrics
from r21d.train.run_state import checkpoint_paths, list_checkpoints, load_training_state
from r21d.train.trainer import train

REPO = Path(__file__).resolve().parents[2]


def small_config(manifest: Path, output: Path, **changes) -> TrainConfig:
    """A tiny deterministic run: R(2+1)D-18 at 1/8 width, 8-frame clips, 2 clips a step."""
    options = dict(
        train_manifest=str(manifest),
        output_dir=str(output),
        width=0.125,
        clip_len=8,
        batch_size=2,
        max_steps=4,
        base_lr=2.0,
        warmup_steps=2,
        halvings=2,
        checkpoint_every=2,
        log_every=1,
        workers=0,
        deterministic=True,
        progress=False,
        seed=3,
    )
    options.update(changes)
    return TrainConfig(**options)


def test_interrupted_and_resumed_run_ends_with_the_same_weights(motion_videos, tmp_path):
    manifest = motion_videos["train"]
    straight = train(small_config(manifest, tmp_path / "straight"))

    interrupted = tmp_path / "interrupted"
    train(small_config(manifest, interrupted, stop_at_step=3))
    assert list_checkpoints(interrupted) == [2, 3]
    for path in checkpoint_paths(interrupted, 3):  # the work after step 2 is lost
        path.unlink()
    state = load_training_state(checkpoint_paths(interrupted, 2)[1])
    assert (state["step"], state["draws"]) == (2, 4)
    resumed = train(small_config(manifest, interrupted, resume=True))

    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert any(  # and training did move the weights
        not torch.equal(a[k], v)
        for k, v in load_file(str(checkpoint_paths(interrupted, 2)[0])).items()
    )
    steps = [r["step"] for r in read_metrics(interrupted / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the lost steps' metric lines were replaced
    losses = {r["step"]: r["loss"] for r in read_metrics(interrupted / "metrics.jsonl")}
    straight_losses = {
        r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight/metrics.jsonl")
    }
    assert losses == straight_losses
    spec = read_spec(resumed)
    assert spec.labels == ("left", "right") and spec.clip_len == 8
    assert (interrupted / "labels.txt").read_text() == "left\nright\n"


def test_two_process_gloo_run_keeps_the_ranks_identical(motion_videos, tmp_path):
    config = small_config(motion_videos["train"], tmp_path / "ddp", max_steps=2)
    config.save(tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "r21d",
            "train",
            "--config",
            str(tmp_path / "ddp.yaml"),
            "--nproc",
            "2",
            "--device",
            "cpu",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["replica_max_abs_diff"] for r in records if "replica_max_abs_diff" in r] == [0.0]
    state = load_training_state(checkpoint_paths(tmp_path / "ddp", 2)[1])
    assert state["world_size"] == 2
    assert state["draws"] == 4  # this rank's share: 2 steps x 2 clips
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    throughput = [r["clips_per_s"] for r in records if "clips_per_s" in r]
    assert len(throughput) == 2  # rank 0 alone writes the metrics
