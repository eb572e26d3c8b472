"""`r21d bench model`: model latency and throughput per backend, precision and input shape.

Each model is timed under every variant (backend x precision x channels_last) at the first
batch size and frame size (the main grid); the first model is also swept over every batch
size and frame size. Inputs are raw uint8 frames ``(N, T, H, W, 3)``, exactly what the
inference engine hands a backend, so normalisation and host/device copies are included.
Frames larger than the crop run fully convolutionally (DESIGN.md section 4).

Peers (:mod:`r21d.benchmarks.peers`: OpenVINO on the same ONNX file, precision hint
stated) are timed in the same run, right after r21d's variants on each model. Runtimes that
share a process can slow each other (thread pools that keep spinning after a call), so each
contender can also run in a process of its own (``isolation``); rows say which.

Reported per configuration: p50/p90/p99 latency of one batch, clips/s, achieved GFLOP/s next
to the device's measured matmul ceiling in the same precision, and the speed-up over torch
fp32 eager on the same model and shape; per model, shape and precision, the ratio of r21d's
fastest path to the fastest peer.
"""

from __future__ import annotations

import gc
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from r21d.benchmarks.ceiling import matmul_ceiling
from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.peers import Peer, open_peer, openvino_config, peer_available
from r21d.benchmarks.report import Report, bar_plot, line_plot, markdown_table
from r21d.benchmarks.timing import time_call
from r21d.benchmarks.variants import REFERENCE, Variant, open_variant, variant_available
from r21d.errors import BadOptionError

ISOLATIONS = ("shared", "separate")
"""``shared``: every contender in this one process, one after another; ``separate``: each
(model, contender) in a fresh process of its own."""

Contender = Variant | Peer


@dataclass
class ModelBenchSettings:
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=lambda: [REFERENCE])
    peers: list[Peer] = field(default_factory=list)
    isolation: tuple[str, ...] = ("shared",)
    batch_sizes: tuple[int, ...] = (1, 4)
    frame_sizes: tuple[tuple[int, int], ...] = ((112, 112), (128, 171))
    warmup: int = 2
    repeats: int = 10
    max_seconds: float = 30.0
    ceiling_n: int | None = None
    sweep_all_models: bool = False  # every model (not only the first) at every batch and size

    def as_dict(self) -> dict:
        d = asdict(self)
        d["variants"] = [v.label for v in self.variants]
        d["peers"] = [p.label for p in self.peers]
        return d

    @property
    def contenders(self) -> list[Contender]:
        """r21d's variants, then the peers."""
        return [*self.variants, *self.peers]


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
    size ("main"), and the first model (every model with ``sweep_all_models``) at every other
    combination ("sweep"). A fixed-input model (a ViT) takes only its crop size, so that is its
    one frame size."""
    first_batch = settings.batch_sizes[0]
    configs = [(m, "main", first_batch, frame_sizes(m, settings)[0]) for m in models]
    for model in models if settings.sweep_all_models else models[:1]:
        first_size = frame_sizes(model, settings)[0]
        for batch in settings.batch_sizes:
            for size in frame_sizes(model, settings):
                if (batch, size) != (first_batch, first_size):
                    configs.append((model, "sweep", batch, size))
    return configs


def frame_sizes(model: BenchModel, settings: ModelBenchSettings) -> list[tuple[int, int]]:
    """The frame sizes ``model`` is timed at: the settings', or a fixed-input model's crop."""
    if model.spec.fixed_input:
        return [(model.spec.crop_size, model.spec.crop_size)]
    return list(settings.frame_sizes)


def run_model_bench(models: list[BenchModel], settings: ModelBenchSettings) -> Report:
    """Time every planned configuration under every variant and peer; see the module
    docstring."""
    if not models:
        raise BadOptionError("no models to benchmark")
    unknown = sorted(set(settings.isolation) - set(ISOLATIONS))
    if unknown or not settings.isolation:
        raise BadOptionError(f"isolation must be some of {ISOLATIONS}, got {settings.isolation}")
    device = settings.device
    ceilings = {
        p: matmul_ceiling(device, p, settings.ceiling_n)
        for p in dict.fromkeys(c.precision for c in settings.contenders)
    }
    configs = plan(models, settings)
    rows: list[dict] = []
    skipped: list[dict] = []
    flops: dict[tuple, float] = {}
    total = len(configs) * len(settings.contenders) * len(settings.isolation)
    progress = tqdm(total=total, desc="bench model", unit="run")
    for isolation in settings.isolation:
        for model in models:
            mine = [c for c in configs if c[0] is model]
            for contender in settings.contenders:
                ok, why = _available(contender, device)
                if not ok:
                    if isolation == settings.isolation[0]:
                        skipped.append(
                            {"model": model.key, "variant": contender.label, "reason": why}
                        )
                    progress.update(len(mine))
                    continue
                if isolation == "separate":
                    with ProcessPoolExecutor(
                        1, mp_context=multiprocessing.get_context("spawn")
                    ) as pool:
                        timed, failed = pool.submit(
                            time_contender, model, contender, mine, settings
                        ).result()
                else:
                    timed, failed = time_contender(model, contender, mine, settings)
                for row in timed:
                    shape = (row["frames"], row["height"], row["width"])
                    if (model.key, shape) not in flops:
                        flops[model.key, shape] = gflop_per_clip(model, *shape)
                    row["gflop_per_clip"] = flops[model.key, shape]
                    row["isolation"] = isolation
                rows += timed
                skipped += [{**f, "isolation": isolation} for f in failed]
                progress.update(len(mine))
    progress.close()
    _add_ratios(rows, ceilings)
    return _report(rows, skipped, ceilings, settings)


def _available(contender: Contender, device: str) -> tuple[bool, str]:
    if isinstance(contender, Peer):
        return peer_available(contender, device)
    return variant_available(contender, device)


def time_contender(model: BenchModel, contender: Contender, configs, settings) -> tuple[list, list]:
    """(rows, failures) of timing ``contender`` on ``model`` at each of ``configs`` (top-level,
    so a fresh process can run it)."""
    try:
        if isinstance(contender, Peer):
            runner = open_peer(model, contender, torch.get_num_threads())
        else:
            runner = open_variant(model, contender, settings.device)
    except Exception as e:  # a variant that cannot be built is a result, not a crash
        return [], [{"model": model.key, "variant": contender.label, "reason": str(e)}]
    rows, failed = [], []
    for _, grid, batch, (h, w) in configs:
        shape = (model.spec.clip_len, h, w)
        row = _time_config(runner, model, contender, grid, batch, shape, settings)
        (failed if "error" in row else rows).append(row)
    del runner
    gc.collect()
    return rows, failed


def _time_config(backend, model, variant, grid, batch, shape, settings) -> dict:
    t, h, w = shape
    frames = np.random.default_rng(0).integers(0, 256, (batch, t, h, w, 3), dtype=np.uint8)
    row = {
        "model": model.key,
        "variant": variant.label,
        "kind": "peer" if isinstance(variant, Peer) else "r21d",
        "backend": variant.backend,
        "precision": variant.precision,
        "channels_last": bool(variant.channels_last),
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
    reference = {_place(r): r["clips_per_s"] for r in rows if r["variant"] == REFERENCE.label}
    for r in rows:
        r["gflops"] = r["gflop_per_clip"] * r["clips_per_s"]
        ceiling = ceilings[r["precision"]]["gflops"]
        r["ceiling_gflops"] = ceiling
        r["ceiling_fraction"] = r["gflops"] / ceiling
        ref = reference.get(_place(r))
        r["vs_torch_fp32"] = r["clips_per_s"] / ref if ref else None


def _place(row: dict) -> tuple:
    """Where a row was measured: process isolation, model, batch and input shape."""
    return (
        row["isolation"],
        row["model"],
        row["batch"],
        row["frames"],
        row["height"],
        row["width"],
    )


def versus_peers(rows: list[dict]) -> list[dict]:
    """Per place and precision: r21d's fastest path (and its fastest without the openvino
    backend), the fastest peer, and the ratios of their clips/s."""
    out = []
    for place in dict.fromkeys(_place(r) for r in rows):
        here = [r for r in rows if _place(r) == place]
        for precision in dict.fromkeys(r["precision"] for r in here):
            same = [r for r in here if r["precision"] == precision]
            peers = [r for r in same if r["kind"] == "peer"]
            ours = [r for r in same if r["kind"] == "r21d"]
            if not peers or not ours:
                continue
            peer = max(peers, key=lambda r: r["clips_per_s"])
            best = max(ours, key=lambda r: r["clips_per_s"])
            own = [r for r in ours if r["backend"] != "openvino"]
            best_own = max(own, key=lambda r: r["clips_per_s"]) if own else None
            out.append(
                {
                    "isolation": place[0],
                    "grid": here[0]["grid"],
                    "model": place[1],
                    "batch": place[2],
                    "shape": f"{place[3]}x{place[4]}x{place[5]}",
                    "precision": precision,
                    "r21d": best["variant"],
                    "r21d_clips_per_s": best["clips_per_s"],
                    "peer": peer["variant"],
                    "peer_clips_per_s": peer["clips_per_s"],
                    "ratio": best["clips_per_s"] / peer["clips_per_s"],
                    "r21d_own": best_own["variant"] if best_own else None,
                    "own_ratio": best_own["clips_per_s"] / peer["clips_per_s"]
                    if best_own
                    else None,
                }
            )
    return out


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
    ("isolation", "process"),
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
            "vs_peers": versus_peers(rows),
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
    if report.summary["vs_peers"]:
        report.add_section(
            "r21d against the peers (same model, batch, shape and precision)",
            markdown_table(report.summary["vs_peers"], PEER_COLUMNS)
            + "\n\n"
            + _peer_notes(settings),
        )
    for grid, heading in (
        ("main", "All models (first batch size and frame size)"),
        ("sweep", "Batch size and frame size sweep"),
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


PEER_COLUMNS = [
    ("model", "model"),
    ("batch", "batch"),
    ("shape", "T x H x W"),
    ("precision", "precision"),
    ("isolation", "process"),
    ("r21d", "r21d fastest"),
    ("r21d_clips_per_s", "clips/s"),
    ("peer", "fastest peer"),
    ("peer_clips_per_s", "clips/s"),
    ("ratio", "r21d / peer"),
    ("r21d_own", "r21d fastest without its openvino backend"),
    ("own_ratio", "that / peer"),
]


def _peer_notes(settings: ModelBenchSettings) -> str:
    """How the peers were run (the precision hints, stated), and what the processes mean."""
    threads = torch.get_num_threads()
    configs = {p.label: openvino_config(p.precision, threads) for p in settings.peers}
    lines = [
        f"- `{label}`: OpenVINO on the same fp32 ONNX file the onnxruntime rows run, "
        f'`compile_model(path, "CPU", {config})`'
        for label, config in configs.items()
    ]
    return "\n".join(
        lines
        + [
            "- process `shared`: every contender in one process, one after another (runtimes "
            "can slow each other there through thread pools that keep spinning); `separate`: "
            "each model and contender in a fresh process of its own.",
            "- `openvino:*` rows are r21d's own openvino backend (`--backend openvino`), which "
            "runs the same compiled graph behind r21d's input checks.",
        ]
    )


def _best(rows: list[dict]) -> dict:
    """The fastest r21d variant per model on the main grid."""
    best: dict[str, dict] = {}
    for r in rows:
        fastest = best.get(r["model"], {}).get("clips_per_s", 0)
        if r["grid"] == "main" and r["kind"] == "r21d" and r["clips_per_s"] > fastest:
            best[r["model"]] = {k: r[k] for k in ("variant", "clips_per_s", "vs_torch_fp32")}
    return best


def add_plots(report: Report, out_dir: Path) -> None:
    """clips/s per model and variant (bars, p10-p90 whiskers); clips/s against batch size."""
    main = [r for r in report.rows if r["grid"] == "main"]
    several = len({r["isolation"] for r in main}) > 1
    if main:
        report.plots.append(
            bar_plot(
                Path(out_dir) / "model_throughput.png",
                [
                    f"{r['model']} {r['variant']}" + (f" ({r['isolation']})" if several else "")
                    for r in main
                ],
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
        and r["isolation"] == report.rows[0]["isolation"]
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
