"""End to end: train a tiny R(2+1)D on a task only motion can solve, export it, score it.

Videos of a square moving left or right (same appearance statistics in both classes) can only
be told apart from how frames change over time, so a model that reaches high accuracy on
held-out videos has learned temporal filters, through the whole pipeline: manifest ->
decoder -> jittered random crops -> SGD -> checkpoint -> 10-clip validation -> ONNX ->
``r21d score``.
"""

from __future__ import annotations

import json
from pathlib import Path

from r21d.checkpoint import read_spec
from r21d.cli import main
from r21d.export.onnx import export_onnx
from r21d.train.config import TrainConfig
from r21d.train.data import load_video_set
from r21d.train.metrics import read_metrics
from r21d.train.trainer import train


def test_tiny_model_learns_motion_direction_and_scores_the_same_after_export(
    motion_videos, tmp_path
):
    run = tmp_path / "run"
    config = TrainConfig(
        train_manifest=str(motion_videos["train"]),
        val_manifest=str(motion_videos["val"]),
        output_dir=str(run),
        width=0.125,
        clip_len=8,
        batch_size=8,
        max_steps=40,
        base_lr=1.6,  # per 256 clips: a peak of 0.05 for 8 clips a step
        warmup_steps=5,
        schedule="cosine",
        precise_bn_batches=10,  # 40 fast-moving steps leave the BN running averages behind
        workers=1,
        checkpoint_every=20,
        log_every=5,
        progress=False,
        seed=0,
    )
    final = train(config)
    records = read_metrics(run / "metrics.jsonl")
    validation = [r for r in records if "val_video_acc" in r]
    assert validation and validation[-1]["val_videos"] == 12
    accuracy = validation[-1]["val_video_acc"]
    assert accuracy >= 0.9, records
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]

    spec = read_spec(final)
    assert spec.labels == ("left", "right") and spec.provenance["trained_by"] == "r21d.train"
    onnx_path = tmp_path / "motion.onnx"
    export_onnx(final, onnx_path)

    val = load_video_set(motion_videos["val"])
    results = tmp_path / "scores.jsonl"
    argv = ["score", *[str(r.path) for r in val.records], "--model", str(onnx_path)]
    assert main([*argv, "--workers", "0", "-o", str(results)]) == 0
    scored = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(scored) == 12 and all(s["status"] == "ok" and s["clips"] == 10 for s in scored)
    correct = [Path(s["path"]).name.startswith(s["top_k"][0]["label"]) for s in scored]
    assert sum(correct) / len(correct) == accuracy
