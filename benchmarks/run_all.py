"""Every benchmark in one call: ``r21d bench all`` (or ``python -m r21d.benchmarks.run_all``).

Each benchmark writes ``<name>.json`` and ``<name>.md`` (and PNG plots) into the output
folder; this module adds ``index.md`` with the headline of each and links to the reports. A
benchmark that fails is recorded in the index with its error and the others still run; the
exit code is then 1.

``quick=True`` runs everything once at tiny size (R(2+1)D-18 at 1/8 width, seconds-long
synthetic videos, two clips per video, one or two repeats): the smoke test's mode, for
checking that the benchmarks work, not for numbers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from r21d.benchmarks import (
    accuracy_bench,
    baseline_bench,
    model_bench,
    parity_bench,
    pipeline_bench,
    ray_bench,
    stream_bench,
)
from r21d.benchmarks.accuracy_bench import AccuracySettings, write_manifest
from r21d.benchmarks.baseline_bench import BaselineSettings
from r21d.benchmarks.machine import device_label, machine_info
from r21d.benchmarks.model_bench import ModelBenchSettings
from r21d.benchmarks.models import (
    DEFAULT_CACHE,
    BenchModel,
    find_i3d,
    random_checkpoint,
    real_model,
    speed_models,
)
from r21d.benchmarks.parity_bench import ParitySettings, default_parity_variants
from r21d.benchmarks.peers import default_peers
from r21d.benchmarks.pipeline_bench import PipelineSettings
from r21d.benchmarks.ray_bench import RaySettings
from r21d.benchmarks.report import Report, markdown_table, write_report
from r21d.benchmarks.stream_bench import StreamSettings
from r21d.benchmarks.variants import (
    REFERENCE,
    Variant,
    default_variants,
    variant_available,
    variant_of,
)
from r21d.benchmarks.videos import REAL_LABELS, SHARED_VIDEOS, cached_video, real_clips
from r21d.errors import BadOptionError, RuntimeUnavailableError

BENCHMARKS = ("model", "pipeline", "baseline", "parity", "accuracy", "ray", "stream")

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = (
    _PACKAGE_DIR / "results"
    if (_PACKAGE_DIR.parent / "pyproject.toml").is_file()  # a source checkout
    else Path("r21d-bench-results")
)
"""``benchmarks/results`` of the source checkout (or ``./r21d-bench-results`` when r21d is
installed from a wheel)."""


def default_out(device: str, quick: bool = False) -> Path:
    """``benchmarks/results`` for the CPU, ``benchmarks/results/gpu-<device>`` for a GPU; a
    ``quick`` subfolder of those for quick runs, so they never overwrite real results."""
    out = DEFAULT_OUT if device == "cpu" else DEFAULT_OUT / f"gpu-{device_label(device)}"
    return out / "quick" if quick else out


@dataclass
class Suite:
    """What the suite runs on: device, caches, models and videos, in full or quick size."""

    device: str = "cpu"
    cache_dir: Path = DEFAULT_CACHE
    quick: bool = False

    def stamp(self, report: Report) -> Report:
        """Mark a report as quick (tiny, mechanics only) or full."""
        quick = "quick (tiny sizes: mechanics only, not numbers)"
        report.settings["mode"] = quick if self.quick else "full"
        return report

    # -- models ------------------------------------------------------------------------
    def speed_models(self) -> list[BenchModel]:
        return speed_models(self.cache_dir, self.quick)

    def main_model(self) -> BenchModel:
        """R(2+1)D-18 8 frames (the issue-4 target model), or the tiny model."""
        return (
            self.speed_models()[0]
            if self.quick
            else random_checkpoint("r2plus1d_18", 8, self.cache_dir)
        )

    def baseline_models(self) -> list[BenchModel]:
        """The main model and (not quick) the real I3D, fetched if need be, so that top-1
        agreement with the baseline is measured on trained weights too."""
        i3d = None if self.quick else find_i3d(fetch=True)
        return [self.main_model()] + ([real_model(i3d)] if i3d else [])

    def real_or_main_model(self) -> BenchModel:
        """The real I3D when downloaded (and not quick), else :meth:`main_model`."""
        i3d = None if self.quick else find_i3d()
        return real_model(i3d) if i3d else self.main_model()

    # -- videos ------------------------------------------------------------------------
    def short_video(self) -> Path:
        seconds, size = (3, (128, 160)) if self.quick else (10, (240, 320))
        return cached_video(self.cache_dir, seconds, size=size)

    def videos(self) -> list[Path]:
        """Real clips where present plus one synthetic 10-second video (quick: one short
        synthetic video)."""
        return [self.short_video()] if self.quick else [*real_clips(), self.short_video()]

    def fast_variant(self) -> Variant | None:
        """The variant expected fastest on this device (bf16/fp16 channels_last)."""
        precision = "fp16" if self.device.startswith("cuda") else "bf16"
        fast = variant_of("torch", precision, True)
        return fast if variant_available(fast, self.device)[0] else None

    # -- settings per benchmark ---------------------------------------------------------
    def model_settings(self) -> ModelBenchSettings:
        if self.quick:
            variants = [REFERENCE, variant_of("onnxruntime", "fp32")]
            fast = self.fast_variant()
            variants += [fast] if fast else []
            openvino = variant_of("openvino", "bf16")
            variants += [openvino] if variant_available(openvino, self.device)[0] else []
            return ModelBenchSettings(
                device=self.device,
                variants=variants,
                peers=default_peers(self.device),
                batch_sizes=(1,),
                frame_sizes=((112, 112), (128, 171)),
                warmup=1,
                repeats=2,
                max_seconds=10.0,
                ceiling_n=512,
            )
        cuda = self.device.startswith("cuda")
        return ModelBenchSettings(
            device=self.device,
            variants=default_variants(self.device),
            peers=default_peers(self.device),
            isolation=("shared", "separate"),
            batch_sizes=(1, 8, 32) if cuda else (1, 4),
            frame_sizes=((112, 112), (128, 171)),
            warmup=5 if cuda else 2,
            repeats=50 if cuda else 10,
            max_seconds=30.0,
        )

    def pipeline_settings(self) -> PipelineSettings:
        if self.quick:
            return PipelineSettings(
                self.device,
                num_clips=2,
                workers=1,
                videos=2,
                warmup=0,
                repeats=1,
                short_seconds=2,
                long_seconds=20,
            )
        return PipelineSettings(self.device, videos=12)

    def baseline_settings(self) -> BaselineSettings:
        fast = [self.fast_variant(), variant_of("openvino", "bf16")]
        fast = [v for v in fast if v and variant_available(v, self.device)[0]]
        variants = [REFERENCE] + ([] if self.quick else fast)
        return BaselineSettings(
            self.device,
            num_clips=2 if self.quick else 10,
            variants=variants,
            workers=0 if self.quick else None,
            repeats=1 if self.quick else 3,
        )

    def parity_settings(self) -> ParitySettings:
        if self.quick:
            variants = [variant_of("onnxruntime", "fp32")]
            fast = self.fast_variant()
            variants += [fast] if fast else []
            return ParitySettings(self.device, num_clips=2, variants=variants)
        return ParitySettings(self.device, variants=default_parity_variants(self.device))

    def accuracy_settings(self) -> AccuracySettings:
        if self.quick:
            return AccuracySettings(self.device, clip_counts=(1, 2), workers=0)
        return AccuracySettings(self.device)

    def ray_settings(self) -> RaySettings:
        if self.quick:
            return RaySettings(self.device, num_clips=2, videos=2, decode_cpus=(1.0,))
        return RaySettings(self.device)

    def accuracy_inputs(self) -> tuple[BenchModel, Path] | None:
        """(model, manifest) for the suite's accuracy run: the real I3D on the labelled real
        clips; quick: the tiny model on two synthetic videos; None when neither applies."""
        manifest = self.cache_dir / "manifests"
        if self.quick:
            model = self.main_model()
            rows = [(self.short_video(), model.spec.label(0)), (self.short_video(), "1")]
            return model, write_manifest(manifest / "quick.csv", rows)
        i3d = find_i3d()
        clips = real_clips()
        if i3d is None or not clips:
            return None
        rows = [(clip, REAL_LABELS[clip.name]) for clip in clips]
        return real_model(i3d), write_manifest(manifest / "shared_videos.csv", rows)


# -- one function per benchmark: run it, plot it, write it ----------------------------------


def bench_model(suite: Suite, out: Path, models=None, settings=None) -> Report:
    report = model_bench.run_model_bench(
        models or suite.speed_models(), settings or suite.model_settings()
    )
    model_bench.add_plots(report, out)
    return suite.stamp(report)


def bench_pipeline(suite: Suite, out: Path, model=None, settings=None, videos=None) -> Report:
    report = pipeline_bench.run_pipeline_bench(
        model or suite.main_model(),
        videos or suite.videos(),
        suite.cache_dir,
        settings or suite.pipeline_settings(),
    )
    pipeline_bench.add_plots(report, out)
    return suite.stamp(report)


def bench_baseline(suite: Suite, out: Path, model=None, settings=None, videos=None) -> Report:
    report = baseline_bench.run_baseline_bench(
        [model] if model else suite.baseline_models(),
        videos or suite.videos(),
        settings or suite.baseline_settings(),
    )
    baseline_bench.add_plots(report, out)
    return suite.stamp(report)


def bench_parity(suite: Suite, out: Path, model=None, settings=None, videos=None) -> Report:
    if videos is None:  # real clips (and the short rotated one) where present
        rotated = SHARED_VIDEOS / "rotated_90_3frames.mov"
        real = [*real_clips(), *([rotated] if rotated.is_file() else [])]
        videos = real if real and not suite.quick else suite.videos()
    report = parity_bench.run_parity_bench(
        model or suite.real_or_main_model(), videos, settings or suite.parity_settings()
    )
    parity_bench.add_plots(report, out)
    return suite.stamp(report)


def bench_accuracy(suite: Suite, out: Path, model=None, manifest=None, settings=None) -> Report:
    if model is None or manifest is None:
        found = suite.accuracy_inputs()
        if found is None:
            raise LookupError(
                "no trained model and labelled videos: run `r21d download i3d-kinetics400` "
                f"(and keep the real clips in {SHARED_VIDEOS}), or give --manifest and --model"
            )
        model, manifest = found
    report = accuracy_bench.run_accuracy_bench(
        model, manifest, settings or suite.accuracy_settings()
    )
    accuracy_bench.add_plots(report, out)
    return suite.stamp(report)


def bench_ray(suite: Suite, out: Path, model=None, settings=None, videos=None) -> Report:
    if importlib.util.find_spec("ray") is None:
        raise LookupError("Ray is not installed (pip install r21d[ray])")
    report = ray_bench.run_ray_bench(
        model or suite.main_model(), videos or suite.videos(), settings or suite.ray_settings()
    )
    ray_bench.add_plots(report, out)
    return suite.stamp(report)


def bench_stream(suite: Suite, out: Path, model=None, settings=None, video=None) -> Report:
    report = stream_bench.run_stream_bench(
        model or suite.main_model(),
        video or suite.short_video(),
        settings or StreamSettings(suite.device),
    )
    stream_bench.add_plots(report, out)
    return suite.stamp(report)


RUNNERS: dict[str, Callable[[Suite, Path], Report]] = {
    "model": bench_model,
    "pipeline": bench_pipeline,
    "baseline": bench_baseline,
    "parity": bench_parity,
    "accuracy": bench_accuracy,
    "ray": bench_ray,
    "stream": bench_stream,
}


def publish(report: Report, out: Path, machine: dict) -> dict[str, Path]:
    """Write a report with ``machine`` (:func:`machine_info` taken before the benchmark
    started, so its load average is the one the benchmark met); print where it went."""
    paths = write_report(report, out, machine)
    print(f"{report.name}: {paths['markdown']}", file=sys.stderr)
    return paths


def headline(report: Report) -> str:
    """One line per benchmark for the index."""
    s = report.summary
    if report.name == "model":
        best = "; ".join(
            f"{m}: best {b['variant']} {b['clips_per_s']:.3g} clips/s "
            f"(x{b['vs_torch_fp32'] or 0:.2f} vs torch fp32)"
            for m, b in s["best"].items()
        )
        main = [p for p in s.get("vs_peers", []) if p["grid"] == "main"]
        ratios = ", ".join(
            f"{p['model']} {p['precision']} ({p['isolation']}) x{p['ratio']:.2f}" for p in main
        )
        return f"{best}. r21d fastest / fastest peer (OpenVINO): {ratios}" if main else best
    if report.name == "pipeline":
        return (
            f"engine {s['engine_videos_per_s']:.3g} videos/s, {s['ratio']:.0%} of model-only "
            f"clips/s (target {s['ratio_target']:.0%}); long/short video "
            f"{s['long_vs_short']:.2f}x (target <= {s['long_target']:g}x)"
        )
    if report.name == "baseline":
        parts = []
        for model, m in s["per_model"].items():
            speed = ", ".join(f"{v} x{x:.2f}" for v, x in m["speedup"].items())
            agree = "yes" if m["top1_agree_all"] else "NO"
            weights = "trained" if m["real_weights"] else "random weights"
            parts.append(f"{model} ({weights}): {speed}; top-1 agrees on every video: {agree}")
        return "r21d score vs baseline videos/s: " + "; ".join(parts)
    if report.name == "parity":
        return "; ".join(
            f"{r['variant']} max abs {r['max_abs_diff']:.2g}, top-1 {r['top1_agree']}/{r['videos']}"
            for r in s["per_variant"]
        )
    if report.name == "accuracy":
        b = s["best"]
        return f"best top-1 {b['top1']:.3g} ({b['clips']} clips, {b['resize']}, {b['head']})"
    if report.name == "ray":
        return (
            f"Ray on one machine x{s['best_ratio']:.2f} the local engine's videos/s "
            f"(best: decode {s['best_decode']}; local {s['local_videos_per_s']:.3g} videos/s)"
        )
    if report.name == "stream":
        return "; ".join(
            f"{r['variant']} {r['windows_per_s']:.3g} windows/s, live latency p50 "
            f"{r['latency_p50_s']:.2f} s, {r['skipped_fraction']:.0%} of windows passed over"
            for r in s["per_variant"]
        )
    return ""


def run_all(
    out: str | Path | None = None,
    *,
    device: str = "cpu",
    quick: bool = False,
    cache_dir: str | Path = DEFAULT_CACHE,
    only: tuple[str, ...] = BENCHMARKS,
) -> int:
    """Run the benchmarks in ``only`` and write their reports and ``index.md`` into ``out``.

    Returns 0 when every benchmark ran (or was skipped for a stated reason), else 1.
    """
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise BadOptionError(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeUnavailableError(f"device {device} asked for, but torch sees no CUDA GPU")
    out = Path(out) if out is not None else default_out(device, quick)
    suite = Suite(device, Path(cache_dir), quick)
    lines, failed = [], False
    for name in only:
        print(f"== bench {name}{' (quick)' if quick else ''} ==", file=sys.stderr)
        machine = machine_info()
        try:
            report = RUNNERS[name](suite, out)
        except LookupError as e:  # nothing to run this benchmark on: a stated skip
            lines.append({"benchmark": name, "result": f"skipped: {e}", "report": "-"})
            continue
        except Exception as e:
            traceback.print_exc()
            lines.append(
                {"benchmark": name, "result": f"FAILED: {type(e).__name__}: {e}", "report": "-"}
            )
            failed = True
            continue
        paths = publish(report, out, machine)
        link = f"[{paths['markdown'].name}]({paths['markdown'].name})"
        lines.append({"benchmark": name, "result": headline(report), "report": link})
    earlier = [saved_line(out, n) for n in BENCHMARKS if n not in only]
    lines += [line for line in earlier if line]
    lines.sort(key=lambda line: BENCHMARKS.index(line["benchmark"]))
    _write_index(out, lines, device, quick)
    return 1 if failed else 0


def rewrite_index(out: str | Path, device: str = "cpu") -> Path:
    """``index.md`` from the reports already in ``out`` (after single ``r21d bench X`` runs)."""
    out = Path(out)
    lines = [line for line in (saved_line(out, n) for n in BENCHMARKS) if line]
    return _write_index(out, lines, device, quick=False)


def saved_line(out: Path, name: str) -> dict | None:
    """The index line of a report an earlier run left in ``out`` (kept when ``--only`` runs
    other benchmarks), or None where there is none."""
    path = out / f"{name}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    report = Report(name, "", data.get("settings", {}), summary=data.get("summary", {}))
    try:
        result = headline(report)
    except (KeyError, TypeError, ValueError):
        result = "see the report"
    taken = data.get("machine", {}).get("timestamp", "an earlier run")
    return {
        "benchmark": name,
        "result": f"{result} (from {taken})",
        "report": f"[{name}.md]({name}.md)",
    }


def gpu_results_line(out: Path) -> str:
    """Where GPU results are, or that there are none yet: a plain statement for the index."""
    found = sorted(p.parent.relative_to(out) for p in out.glob("gpu-*/**/index.md"))
    if not found:
        return (
            "**No GPU figure exists yet**: no GPU machine has run `benchmarks/gpu_check.sh` "
            "(the check that fits in minutes) or `benchmarks/gpu_run.sh` (the whole suite) for "
            "these results; every number here is from the CPU.\n"
        )
    return "GPU results: " + ", ".join(f"[{p}]({p}/index.md)" for p in found) + ".\n"


def _write_index(out: Path, lines: list[dict], device: str, quick: bool) -> Path:
    mode = "quick (tiny models; mechanics only, not numbers)" if quick else "full"
    text = "\n".join(
        [
            "# r21d benchmark results\n",
            f"Device: {device}; mode: {mode}. Regenerate with "
            f"`r21d bench all{' --device ' + device if device != 'cpu' else ''}"
            f"{' --quick' if quick else ''}` (see benchmarks/README.md).\n",
            *([gpu_results_line(out)] if device == "cpu" and not quick else []),
            markdown_table(
                lines, [("benchmark", "benchmark"), ("result", "headline"), ("report", "report")]
            ),
            "",
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m r21d.benchmarks.run_all [options]``: the same as ``r21d bench all``."""
    from r21d.cli import main as r21d_main

    return r21d_main(["bench", "all", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
