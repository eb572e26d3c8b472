"""`r21d bench baseline`: `r21d score` against the public ports' way of scoring.

The baseline (:mod:`r21d.benchmarks.baseline_pipeline`) decodes every frame, resizes in
torch and runs fp32 eager PyTorch one clip at a time. The scoring engine runs on the same
videos and model in the same run, once with torch fp32 (same arithmetic, so the difference
is the pipeline) and with faster variants where given (r21d's fastest path among them).
Several models can be compared in one run (random-weight R(2+1)D-18 and the real Kinetics-400
I3D, whose top-1 agreement means something). Reported per model: videos/s of each, their
ratio, and whether top-1 agrees on every video (with the largest difference in video
probabilities, since libswscale and torch resize slightly differently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r21d.benchmarks.baseline_pipeline import score_video
from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, markdown_table
from r21d.benchmarks.timing import time_call
from r21d.benchmarks.variants import REFERENCE, Variant, open_variant
from r21d.errors import BadOptionError

BASELINE_NAME = "baseline (decode all, torch resize, fp32 eager, 1 clip at a time)"
TARGET_SPEEDUP = 4.0
"""Issue 14: r21d's fastest path at >= 4x the baseline's videos/s, with the same top-1."""


@dataclass
class BaselineSettings:
    device: str = "cpu"
    num_clips: int = 10
    variants: list[Variant] = field(default_factory=lambda: [REFERENCE])
    workers: int | None = None  # engine decode workers; None: the engine's default
    repeats: int = 3  # timed passes over all videos, after a one-video warm-up

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "num_clips": self.num_clips,
            "variants": ", ".join(v.label for v in self.variants),
            "workers": self.workers,
            "repeats": self.repeats,
        }


def run_baseline(model: BenchModel, videos: list[Path], settings: BaselineSettings):
    """The baseline script on every video: (probs per video, timing of the whole set)."""
    from r21d.checkpoint import load_checkpoint

    net, spec = load_checkpoint(model.checkpoint, device=settings.device)
    # Warm-up (first-call allocations are neither pipeline's fault): the first video, untimed.
    score_video(videos[0], net, spec, settings.num_clips, settings.device)
    probs: dict[Path, np.ndarray] = {}

    def score_all() -> None:
        for video in tqdm(videos, desc="baseline", unit="video", leave=False):
            probs[video] = score_video(video, net, spec, settings.num_clips, settings.device)

    timing = time_call(score_all, warmup=0, repeats=settings.repeats, device=settings.device)
    return probs, timing


def run_engine(model: BenchModel, videos: list[Path], variant: Variant, settings):
    """`r21d score`'s engine on every video: (probs per video, timing of the whole set)."""
    from r21d.infer.engine import ScoreOptions, default_workers, score_videos
    from r21d.infer.runtime import RuntimeOptions

    backend = open_variant(model, variant, settings.device)
    workers = default_workers() if settings.workers is None else settings.workers
    options, runtime = ScoreOptions(num_clips=settings.num_clips), RuntimeOptions(workers=workers)
    list(score_videos([str(videos[0])], backend, options, runtime))  # warm-up, as for the baseline
    probs: dict[Path, np.ndarray] = {}

    def score_all() -> None:
        for r in score_videos([str(v) for v in videos], backend, options, runtime):
            if not r.ok:
                raise RuntimeError(f"{r.path}: {r.error}")
            probs[Path(r.path)] = r.probs

    timing = time_call(score_all, warmup=0, repeats=settings.repeats, device=settings.device)
    return probs, timing


def _speed_row(model: BenchModel, pipeline: str, variant: Variant, timing, n_videos) -> dict:
    wall = timing.median_ms / 1e3
    return {
        "model": model.key,
        "pipeline": pipeline,
        "variant": variant.label,
        "wall_s": wall,
        "videos_per_s": n_videos / wall,
        "spread": timing.summary()["spread"],
        "timing": timing.summary(),
    }


def run_baseline_bench(
    models: list[BenchModel], videos: list[Path], settings: BaselineSettings
) -> Report:
    """Baseline and engine on the same videos, for each model; see the module docstring."""
    if not videos:
        raise BadOptionError("no videos to score")
    if not models:
        raise BadOptionError("no models to compare")
    videos = [Path(v) for v in videos]
    rows, agreement = [], []
    for model in models:
        base_probs, base_timing = run_baseline(model, videos, settings)
        base = _speed_row(model, BASELINE_NAME, REFERENCE, base_timing, len(videos))
        base["vs_baseline"] = 1.0
        rows.append(base)
        for variant in settings.variants:
            probs, timing = run_engine(model, videos, variant, settings)
            row = _speed_row(model, "r21d score (engine)", variant, timing, len(videos))
            row["vs_baseline"] = base["wall_s"] / row["wall_s"]
            per_video = [_compare(v, base_probs[v], probs[v], model.spec) for v in videos]
            row["top1_agree"] = sum(a["top1_agree"] for a in per_video)
            row["max_abs_diff"] = max(a["max_abs_diff"] for a in per_video)
            rows.append(row)
            agreement += [{"model": model.key, "variant": variant.label, **a} for a in per_video]
    return _report(models, videos, rows, agreement, settings)


def per_model_summary(model: BenchModel, rows: list[dict], n_videos: int) -> dict:
    """Baseline videos/s, each variant's speed-up, and the fastest variant whose top-1 agrees
    with the baseline on every video, against the target."""
    mine = [r for r in rows if r["model"] == model.key]
    engine = mine[1:]
    agreeing = [r for r in engine if r["top1_agree"] == n_videos]
    fastest = max(agreeing, key=lambda r: r["vs_baseline"], default=None)
    return {
        "real_weights": model.real_weights,
        "baseline_videos_per_s": mine[0]["videos_per_s"],
        "speedup": {r["variant"]: r["vs_baseline"] for r in engine},
        "top1_agree_all": len(agreeing) == len(engine),
        "fastest_agreeing": fastest["variant"] if fastest else None,
        "fastest_speedup": fastest["vs_baseline"] if fastest else None,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": bool(fastest and fastest["vs_baseline"] >= TARGET_SPEEDUP),
    }


def _compare(video: Path, base: np.ndarray, ours: np.ndarray, spec) -> dict:
    b, o = int(base.argmax()), int(ours.argmax())
    return {
        "video": video.name,
        "baseline_top1": spec.label(b),
        "baseline_p": float(base[b]),
        "r21d_top1": spec.label(o),
        "r21d_p": float(ours[o]),
        "top1_agree": b == o,
        "max_abs_diff": float(np.abs(base - ours).max()),
    }


def _report(models, videos, rows, agreement, settings) -> Report:
    per_model = {m.key: per_model_summary(m, rows, len(videos)) for m in models}
    report = Report(
        name="baseline",
        title="r21d score against the public ports' pipeline",
        settings={
            **settings.as_dict(),
            "models": ", ".join(m.key for m in models),
            "videos": len(videos),
        },
        rows=rows + [{"part": "agreement", **a} for a in agreement],
        summary={
            "per_model": per_model,
            "top1_agree_all": all(a["top1_agree"] for a in agreement),
            "videos": len(videos),
        },
    )
    report.add_section(
        "Throughput",
        markdown_table(
            rows,
            [
                ("model", "model"),
                ("pipeline", "pipeline"),
                ("variant", "variant"),
                ("wall_s", "wall s (median)"),
                ("videos_per_s", "videos/s"),
                ("vs_baseline", "x baseline"),
                ("spread", "IQR/median"),
                ("top1_agree", f"top-1 agrees (of {len(videos)})"),
                ("max_abs_diff", "max abs prob diff"),
            ],
        )
        + "\n\nVideos: "
        + ", ".join(v.name for v in videos),
    )
    report.add_section(
        f"r21d's fastest path against the baseline (target x{TARGET_SPEEDUP:g}, same top-1)",
        markdown_table(
            [{"model": key, **s} for key, s in per_model.items()],
            [
                ("model", "model"),
                ("real_weights", "trained weights"),
                ("baseline_videos_per_s", "baseline videos/s"),
                ("fastest_agreeing", "fastest r21d variant with the same top-1"),
                ("fastest_speedup", "x baseline"),
                ("target_met", f">= x{TARGET_SPEEDUP:g}"),
            ],
        ),
    )
    for model in models:
        weights = "trained" if model.real_weights else "random (top-1 margins can be tiny)"
        report.add_section(
            f"Top-1 per video ({model.key}, {weights} weights)",
            markdown_table(
                [a for a in agreement if a["model"] == model.key],
                [
                    ("variant", "r21d variant"),
                    ("video", "video"),
                    ("baseline_top1", "baseline top-1"),
                    ("baseline_p", "p"),
                    ("r21d_top1", "r21d top-1"),
                    ("r21d_p", "p"),
                    ("top1_agree", "agree"),
                    ("max_abs_diff", "max abs diff"),
                ],
            ),
        )
    return report


def add_plots(report: Report, out_dir: Path) -> None:
    """Videos/s of the baseline and of each engine variant."""
    rows = [r for r in report.rows if "videos_per_s" in r]
    report.plots.append(
        bar_plot(
            Path(out_dir) / "baseline_throughput.png",
            [f"{r['model']} {_short_name(r)}" for r in rows],
            [r["videos_per_s"] for r in rows],
            xlabel="videos/s",
            title="r21d score against the baseline (the ports' pipeline)",
        )
    )


def _short_name(row: dict) -> str:
    return "baseline" if row["pipeline"] == BASELINE_NAME else f"r21d {row['variant']}"
