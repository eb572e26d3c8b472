"""`r21d bench model`: model latency and throughput per backend, precision and input shape.

Each model is timed under every variant (backend x precision x channels_last) at the first
batch size and frame size (the main grid); the first model is also swept over every batch
size and frame size. Inputs are raw uint8 frames ``(N, T, H, W, 3)``, exactly what the
inference engine hands a backend, so normalisation and host/device copies are included.
Frames larger than the crop run fully convolutionally (DESIGN.md section 4).

Reported per configuration: p50/p90/p99 latency of one batch, clips/s, achieved GFLOP/s next
to the device's measured matmul ceiling in the same precision, and the speed-up over torch
fp32 eager on the same model and shape.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from r21d.benchmarks.ceiling import matmul_ceiling
from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, line_plot, markdown_table
from r21d.benchmarks.timing import time_call
from r21d.benchmarks.variants import REFERENCE, Variant, open_variant, variant_available
from r21d.errors import BadOptionError


@dataclass
class ModelBenchSettings:
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=lambda: [REFERENCE])
    batch_sizes: tuple[int, ...] = (1, 4)
    frame_sizes: tuple[tuple[int, int], ...] = ((112, 112), (128, 171))
    warmup: int = 2
    repeats: int = 10
    max_seconds: float = 30.0
    ceiling_n: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["variants"] = [v.label for v in self.variants]
        return d


def gflop_per_clip(model: BenchModel, frames: int, height: int, width: int) -> float:
    """GFLOP of one clip through the fully-convolutional graph (2 FLOPs per multiply-add)."""
    from r21d.checkpoint import load_checkpoint
    from r21d.flops import count_flops
    from r21d.models.heads import FullyConvolutional

    net, spec = load_checkpoint(model.checkpoint)
    graph = FullyConvolutional(net, spec, input_format="float")
    return count_flops(graph, (1, 3, frames, height, width)) / 1e9


def plan(
    models: list[BenchModel], settings: ModelBenchSettings
) -> list[tuple[BenchModel, str, int, tuple[int, int]]]:
    """(model, grid, batch, frame size) to time: every model at the first batch size and frame
    size ("main"), and the first model at every other combination ("sweep")."""
    first_batch, first_size = settings.batch_sizes[0], settings.frame_sizes[0]
    configs = [(m, "main", first_batch, first_size) for m in models]
    for batch in settings.batch_sizes:
        for size in settings.frame_sizes:
            if (batch, size) != (first_batch, first_size):
                configs.append((models[0], "sweep", batch, size))
    return configs


def run_model_bench(models: list[BenchModel], settings: ModelBenchSettings) -> Report:
    """Time every planned configuration under every variant; see the module docstring."""
    if not models:
        raise BadOptionError("no models to benchmark")
    device = settings.device
    ceilings = {
        p: matmul_ceiling(device, p, settings.ceiling_n)
        for p in dict.fromkeys(v.precision for v in settings.variants)
    }
    configs = plan(models, settings)
    rows: list[dict] = []
    skipped: list[dict] = []
    flops: dict[tuple, float] = {}
    progress = tqdm(total=len(configs) * len(settings.variants), desc="bench model", unit="run")
    for model in models:
        mine = [c for c in configs if c[0] is model]
        for variant in settings.variants:
            ok, why = variant_available(variant, device)
            if not ok:
                skipped.append({"model": model.key, "variant": variant.label, "reason": why})
                progress.update(len(mine))
                continue
            try:
                backend = open_variant(model, variant, device)
            except Exception as e:  # a variant that cannot be built is a result, not a crash
                skipped.append({"model": model.key, "variant": variant.label, "reason": str(e)})
                progress.update(len(mine))
                continue
            for _, grid, batch, (h, w) in mine:
                shape = (model.spec.clip_len, h, w)
                if (model.key, shape) not in flops:
                    flops[model.key, shape] = gflop_per_clip(model, *shape)
                row = _time_config(backend, model, variant, grid, batch, shape, settings)
                row["gflop_per_clip"] = flops[model.key, shape]
                if "error" in row:
                    skipped.append(row)
                else:
                    rows.append(row)
                progress.update()
            del backend
            gc.collect()
    progress.close()
    _add_ratios(rows, ceilings)
    return _report(rows, skipped, ceilings, settings)


def _time_config(backend, model, variant, grid, batch, shape, settings) -> dict:
    t, h, w = shape
    frames = np.random.default_rng(0).integers(0, 256, (batch, t, h, w, 3), dtype=np.uint8)
    row = {
        "model": model.key,
        "variant": variant.label,
        "backend": variant.backend,
        "precision": variant.precision,
        "channels_last": variant.channels_last,
        "grid": grid,
        "batch": batch,
        "frames": t,
        "height": h,
        "width": w,
    }
    try:
        timing = time_call(
            lambda: backend.run(frames),
            warmup=settings.warmup,
            repeats=settings.repeats,
            device=settings.device,
            max_seconds=settings.max_seconds,
        )
    except Exception as e:
        return {**row, "reason": f"{type(e).__name__}: {e}", "error": True}
    summary = timing.summary()
    return {
        **row,
        **{k: summary[k] for k in ("p50_ms", "p90_ms", "p99_ms", "spread", "repeats")},
        "timing": summary,
        "clips_per_s": batch / (summary["median_ms"] / 1e3),
    }


def _add_ratios(rows: list[dict], ceilings: dict[str, dict]) -> None:
    """GFLOP/s, fraction of the ceiling and speed-up over torch fp32 eager, per row."""
    reference = {
        (r["model"], r["batch"], r["frames"], r["height"], r["width"]): r["clips_per_s"]
        for r in rows
        if r["variant"] == REFERENCE.label
    }
    for r in rows:
        r["gflops"] = r["gflop_per_clip"] * r["clips_per_s"]
        ceiling = ceilings[r["precision"]]["gflops"]
        r["ceiling_gflops"] = ceiling
        r["ceiling_fraction"] = r["gflops"] / ceiling
        ref = reference.get((r["model"], r["batch"], r["frames"], r["height"], r["width"]))
        r["vs_torch_fp32"] = r["clips_per_s"] / ref if ref else None


DESIGN_FIGURES: dict[tuple[str, str], float] = {
    ("r2plus1d_18 8f", "torch:fp32"): 3.7,
    ("r2plus1d_18 8f", "torch:fp32:cl"): 4.0,
    ("r2plus1d_18 8f", "torch:bf16:cl"): 9.0,
    ("r2plus1d_18 8f", "onnxruntime:fp32"): 4.3,
    ("r2plus1d_34 32f", "torch:fp32"): 0.47,
    ("r2plus1d_34 32f", "torch:fp32:cl"): 0.57,
    ("r2plus1d_34 32f", "torch:bf16:cl"): 1.16,
    ("r2plus1d_34 32f", "onnxruntime:fp32"): 0.62,
}
"""Clips/s of DESIGN.md section 9 (2-core AVX-512 CPU, torch 2.13, batch 1, clip x 112 x 112),
shown beside CPU results of the same configuration."""


def design_figure(row: dict, device: str) -> float | None:
    """The DESIGN.md s.9 clips/s for ``row``'s configuration, where there is one."""
    if device != "cpu" or (row["batch"], row["height"], row["width"]) != (1, 112, 112):
        return None
    return DESIGN_FIGURES.get((row["model"], row["variant"]))


COLUMNS = [
    ("model", "model"),
    ("variant", "variant"),
    ("batch", "batch"),
    ("shape", "T x H x W"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("clips_per_s", "clips/s"),
    ("vs_torch_fp32", "x torch fp32"),
    ("design_clips_per_s", "DESIGN s.9 clips/s"),
    ("gflop_per_clip", "GFLOP/clip"),
    ("gflops", "GFLOP/s"),
    ("ceiling_pct", "% of matmul ceiling"),
    ("spread", "IQR/median"),
]


def _report(rows, skipped, ceilings, settings: ModelBenchSettings) -> Report:
    for r in rows:
        r["shape"] = f"{r['frames']}x{r['height']}x{r['width']}"
        r["ceiling_pct"] = 100 * r["ceiling_fraction"]
        r["design_clips_per_s"] = design_figure(r, settings.device)
    report = Report(
        name="model",
        title="Model latency and throughput",
        settings=settings.as_dict(),
        rows=rows,
        summary={
            "ceilings": ceilings,
            "skipped": skipped,
            "best": _best(rows),
        },
    )
    ceiling_text = "\n".join(
        f"- {p} matmul {c['n']}x{c['n']}: {c['gflops']:.1f} GFLOP/s "
        f"(IQR/median {c['timing']['spread']:.2f})"
        for p, c in ceilings.items()
    )
    report.add_section(
        "Device ceiling (measured in this run)",
        ceiling_text + "\n\nGFLOP/s below count 2 FLOPs per multiply-add (DESIGN.md s.9); "
        "the ceiling is in the variant's own precision.",
    )
    for grid, heading in (
        ("main", "All models (first batch size and frame size)"),
        ("sweep", "Batch size and frame size sweep (first model)"),
    ):
        part = [r for r in rows if r["grid"] == grid]
        if part:
            report.add_section(heading, markdown_table(part, COLUMNS))
    if skipped:
        report.add_section(
            "Not measured",
            markdown_table(
                skipped, [("model", "model"), ("variant", "variant"), ("reason", "why")]
            ),
        )
    return report


def _best(rows: list[dict]) -> dict:
    """The fastest variant per model on the main grid."""
    best: dict[str, dict] = {}
    for r in rows:
        fastest = best.get(r["model"], {}).get("clips_per_s", 0)
        if r["grid"] == "main" and r["clips_per_s"] > fastest:
            best[r["model"]] = {k: r[k] for k in ("variant", "clips_per_s", "vs_torch_fp32")}
    return best


def add_plots(report: Report, out_dir: Path) -> None:
    """clips/s per model and variant (bars, p10-p90 whiskers); clips/s against batch size."""
    main = [r for r in report.rows if r["grid"] == "main"]
    if main:
        report.plots.append(
            bar_plot(
                Path(out_dir) / "model_throughput.png",
                [f"{r['model']} {r['variant']}" for r in main],
                [r["clips_per_s"] for r in main],
                errors=[_clips_spread(r) for r in main],
                xlabel="clips/s (median; whiskers from p90/p50 latency)",
                title="Model throughput, batch "
                f"{main[0]['batch']}, {main[0]['height']}x{main[0]['width']}",
            )
        )
    sweep = [
        r
        for r in report.rows
        if r["height"] == report.rows[0]["height"]
        and r["width"] == report.rows[0]["width"]
        and r["model"] == report.rows[0]["model"]
    ]
    batches = sorted({r["batch"] for r in sweep})
    if len(batches) > 1:
        series = {}
        for v in dict.fromkeys(r["variant"] for r in sweep):
            points = sorted((r["batch"], r["clips_per_s"]) for r in sweep if r["variant"] == v)
            series[v] = ([b for b, _ in points], [c for _, c in points])
        report.plots.append(
            line_plot(
                Path(out_dir) / "model_batch_sweep.png",
                series,
                xlabel="batch size",
                ylabel="clips/s",
                title=f"{report.rows[0]['model']}: throughput against batch size",
            )
        )


def _clips_spread(row: dict) -> tuple[float, float]:
    """Throughput whiskers: how far clips/s falls at the p90 latency (below) and 0 above."""
    slow = row["batch"] / (row["p90_ms"] / 1e3)
    return (max(0.0, row["clips_per_s"] - slow), 0.0)
