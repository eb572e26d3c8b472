"""`r21d bench stream`: live latency and windows/s of ``r21d stream`` per backend.

Per variant, two runs of :func:`~r21d.infer.stream.run_stream` on one synthetic H.264 video
(the reader thread decoding, the model scoring one window at a time, as a live run does):

- **as fast as possible** (a file, every window scored): windows/s the whole live path
  sustains, decoding included;
- **live** (the file paced at its frame rate, like a camera, ``realtime=True``): the latency
  from a window's last frame arriving to its result (median, p90, max), and how many of the
  windows the source offered were skipped to keep up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, markdown_table
from r21d.benchmarks.variants import Variant, open_variant, variant_available, variant_of
from r21d.infer.stream import StreamOptions, run_stream

STREAM_VARIANTS = (
    ("torch", "fp32", False),
    ("torch", "bf16", True),
    ("onnxruntime", "fp32", False),
)
"""torch fp32, torch bf16 (channels_last_3d, its fast form) and onnxruntime fp32."""


@dataclass
class StreamSettings:
    device: str = "cpu"
    variants: list[Variant] = field(
        default_factory=lambda: [variant_of(*v) for v in STREAM_VARIANTS]
    )
    stride_s: float | None = None  # default: half a window
    threads: int | None = None

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "variants": ", ".join(v.label for v in self.variants),
            "stride": "half a window" if self.stride_s is None else f"{self.stride_s:g} s",
            "threads": self.threads or "all cores",
            "batch": 1,
        }


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_stream_bench(model: BenchModel, video: Path, settings: StreamSettings) -> Report:
    """Time the live path of ``model`` on ``video`` for every variant that runs here."""
    report = Report(
        "stream",
        "r21d stream: live latency and windows/s per backend",
        {**settings.as_dict(), "model": model.key, "video": Path(video).name},
    )
    options = StreamOptions(stride_s=settings.stride_s)
    for variant in settings.variants:
        ok, why = variant_available(variant, settings.device)
        if not ok:
            report.rows.append({"variant": variant.label, "error": why})
            continue
        backend = open_variant(model, variant.replace(threads=settings.threads), settings.device)
        backend.run(np.zeros((1, model.spec.clip_len, *(model.spec.crop_size,) * 2, 3), np.uint8))
        fast = run_stream(video, backend, options)
        live = run_stream(video, backend, StreamOptions(stride_s=settings.stride_s, realtime=True))
        offered = live.scored + live.skipped
        report.rows.append(
            {
                "variant": variant.label,
                "stride_frames": fast.stride,
                "fps": fast.fps,
                "windows": fast.scored,
                "windows_per_s": fast.scored / fast.wall_s,
                "offered_per_s": live.fps / live.stride,  # the source's window rate
                "live_scored": live.scored,
                "live_skipped": live.skipped,
                "skipped_fraction": live.skipped / offered if offered else None,
                "latency_p50_s": _percentile(live.latencies, 50),
                "latency_p90_s": _percentile(live.latencies, 90),
                "latency_max_s": max(live.latencies) if live.latencies else None,
            }
        )
    measured = [r for r in report.rows if "error" not in r]
    report.summary = {
        "per_variant": [
            {k: r[k] for k in ("variant", "windows_per_s", "latency_p50_s", "skipped_fraction")}
            for r in measured
        ]
    }
    columns = [
        ("variant", "variant"),
        ("windows_per_s", "windows/s (file, none skipped)"),
        ("offered_per_s", "live: windows/s offered"),
        ("live_scored", "live: scored"),
        ("live_skipped", "live: skipped"),
        ("latency_p50_s", "latency p50 (s)"),
        ("latency_p90_s", "p90 (s)"),
        ("latency_max_s", "max (s)"),
        ("error", "not run"),
    ]
    report.add_section(
        "Latency and throughput",
        "Latency: from the arrival of a window's last frame to its result (batch 1), with the "
        "video paced at its frame rate; a window that completes while the model is busy "
        "replaces the one waiting, which is counted as skipped.\n\n"
        + markdown_table(report.rows, columns),
    )
    return report


def add_plots(report: Report, out: Path) -> None:
    rows = [r for r in report.rows if r.get("latency_p50_s") is not None]
    if rows:
        report.plots.append(
            bar_plot(
                out / "stream_latency.png",
                [r["variant"] for r in rows],
                [r["latency_p50_s"] for r in rows],
                errors=[(0.0, r["latency_p90_s"] - r["latency_p50_s"]) for r in rows],
                xlabel="seconds from a window's last frame to its result (median, bar to p90)",
                title=f"r21d stream live latency, {report.settings['model']}",
            )
        )
