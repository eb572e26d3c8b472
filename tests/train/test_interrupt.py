"""Ctrl-C and SIGTERM: the run stops after the current step with a checkpoint (every rank at
the same step), exits 130, and ``--resume`` continues it exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from r21d.cli import main
from r21d.train.metrics import read_metrics
from r21d.train.run_state import checkpoint_paths, list_checkpoints, load_training_state

REPO = Path(__file__).resolve().parents[2]
STEPS = 8
TINY = [
    *("--width", "0.125", "--clip-len", "8", "--batch-size", "2", "--max-steps", str(STEPS)),
    *("--base-lr", "2.0", "--warmup-steps", "2", "--halvings", "2", "--seed", "3"),
    *("--log-every", "1", "--no-progress", "--device", "cpu", "--deterministic"),
]


def interrupt_after_first_step(argv: list[str], run: Path, send) -> subprocess.CompletedProcess:
    """Start ``r21d train ARGV`` in a session of its own; once it has logged its first step,
    ``send(process)`` a signal; wait for it to exit. It computes with as many threads as this
    process (another count sums in another order: the weights would differ by rounding)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "r21d", "train", *argv],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={
            **os.environ,
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
            "PYTHONPATH": str(REPO),
        },
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no step logged"
        time.sleep(0.02)
    send(process)
    _, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


def loss_steps(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def assert_stopped_cleanly(result: subprocess.CompletedProcess, run: Path) -> int:
    """Exit 130, no traceback, one checkpoint at the last logged step; returns that step."""
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted"
    steps = list_checkpoints(run)
    assert len(steps) == 1 and 1 <= steps[0] < STEPS, steps  # none periodic before step 500
    assert max(loss_steps(run)) == steps[0]
    assert f"stopped after step {steps[0]}; continue it with --resume" in result.stderr
    return steps[0]


def test_ctrl_c_saves_the_step_and_resume_continues_exactly(motion_videos, tmp_path):
    manifest = str(motion_videos["train"])
    straight = tmp_path / "straight"
    assert main(["train", "--train-manifest", manifest, "--output-dir", str(straight), *TINY]) == 0

    run = tmp_path / "run"
    argv = ["--train-manifest", manifest, "--output-dir", str(run), *TINY, "--workers", "1"]
    # Ctrl-C in a terminal signals the whole process group: the DataLoader worker too
    result = interrupt_after_first_step(argv, run, lambda p: os.killpg(p.pid, signal.SIGINT))
    step = assert_stopped_cleanly(result, run)
    state = load_training_state(checkpoint_paths(run, step)[1])
    assert (state["step"], state["draws"]) == (step, 2 * step)

    assert main(["train", "--output-dir", str(run), "--resume", "--workers", "0"]) == 0
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert loss_steps(run) == loss_steps(straight)


def test_sigterm_under_nproc_2_stops_every_rank_after_the_same_step(motion_videos, tmp_path):
    run = tmp_path / "ddp"
    argv = ["--train-manifest", str(motion_videos["train"]), "--output-dir", str(run), *TINY]
    argv += ["--workers", "0", "--nproc", "2"]
    # a scheduler's SIGTERM to r21d alone: it goes on to each rank
    result = interrupt_after_first_step(argv, run, lambda p: p.send_signal(signal.SIGTERM))
    step = assert_stopped_cleanly(result, run)
    assert result.stderr.count("SIGTERM: stopping after this step") == 2  # both ranks
    state = load_training_state(checkpoint_paths(run, step)[1])
    assert (state["world_size"], state["draws"]) == (2, 2 * step)  # rank 0's share

    resumed = subprocess.run(
        [sys.executable, "-m", "r21d", "train", "--output-dir", str(run), "--resume"]
        + ["--nproc", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(loss_steps(run)) == list(range(1, STEPS + 1))
    records = read_metrics(run / "metrics.jsonl")
    assert [r["replica_max_abs_diff"] for r in records if "replica_max_abs_diff" in r] == [0.0]
    assert (run / "model.safetensors").is_file()
