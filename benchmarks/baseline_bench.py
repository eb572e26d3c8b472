"""`r21d bench baseline`: `r21d score` against the public ports' way of scoring.

The baseline (:mod:`r21d.benchmarks.baseline_pipeline`) decodes every frame, resizes in
torch and runs fp32 eager PyTorch one clip at a time. The scoring engine runs on the same
videos and model in the same run, once with torch fp32 (same arithmetic, so the difference
is the pipeline) and once with a faster variant where one is given. Reported: videos/s of
each, their ratio, and whether top-1 agrees on every video (with the largest difference in
video probabilities, since libswscale and torch resize slightly differently).
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


def _speed_row(pipeline: str, variant: Variant, timing, n_videos: int) -> dict:
    wall = timing.median_ms / 1e3
    return {
        "pipeline": pipeline,
        "variant": variant.label,
        "wall_s": wall,
        "videos_per_s": n_videos / wall,
        "spread": timing.summary()["spread"],
        "timing": timing.summary(),
    }


def run_baseline_bench(model: BenchModel, videos: list[Path], settings: BaselineSettings) -> Report:
    """Baseline and engine on the same videos and model; see the module docstring."""
    if not videos:
        raise BadOptionError("no videos to score")
    videos = [Path(v) for v in videos]
    base_probs, base_timing = run_baseline(model, videos, settings)
    base = _speed_row(BASELINE_NAME, REFERENCE, base_timing, len(videos))
    base["vs_baseline"] = 1.0
    rows, agreement = [base], []
    for variant in settings.variants:
        probs, timing = run_engine(model, videos, variant, settings)
        row = _speed_row("r21d score (engine)", variant, timing, len(videos))
        row["vs_baseline"] = base["wall_s"] / row["wall_s"]
        per_video = [_compare(v, base_probs[v], probs[v], model.spec) for v in videos]
        row["top1_agree"] = sum(a["top1_agree"] for a in per_video)
        row["max_abs_diff"] = max(a["max_abs_diff"] for a in per_video)
        rows.append(row)
        agreement += [{"variant": variant.label, **a} for a in per_video]
    return _report(model, videos, rows, agreement, settings)


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


def _report(model, videos, rows, agreement, settings) -> Report:
    engine_rows = rows[1:]
    report = Report(
        name="baseline",
        title="r21d score against the public ports' pipeline",
        settings={**settings.as_dict(), "model": model.key, "videos": len(videos)},
        rows=rows + [{"part": "agreement", **a} for a in agreement],
        summary={
            "baseline_videos_per_s": rows[0]["videos_per_s"],
            "speedup": {r["variant"]: r["vs_baseline"] for r in engine_rows},
            "top1_agree_all": all(a["top1_agree"] for a in agreement),
            "videos": len(videos),
            "real_weights": model.real_weights,
        },
    )
    report.add_section(
        "Throughput",
        markdown_table(
            rows,
            [
                ("pipeline", "pipeline"),
                ("variant", "variant"),
                ("wall_s", "wall s (median)"),
                ("videos_per_s", "videos/s"),
                ("vs_baseline", "x baseline"),
                ("spread", "IQR/median"),
                ("top1_agree", f"top-1 agrees (of {len(videos)})"),
                ("max_abs_diff", "max abs prob diff"),
            ],
        ),
    )
    weights = "trained" if model.real_weights else "random (top-1 margins can be tiny)"
    report.add_section(
        f"Top-1 per video ({model.key}, {weights} weights)",
        markdown_table(
            agreement,
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
            [("baseline " if i == 0 else "r21d ") + r["variant"] for i, r in enumerate(rows)],
            [r["videos_per_s"] for r in rows],
            xlabel="videos/s",
            title=f"r21d score against the baseline ({report.settings['model']})",
        )
    )
