"""`r21d bench pipeline`: end-to-end scoring throughput against the model alone.

Three questions, one report:

1. Does the pipeline keep the model busy? Videos/s of the scoring engine (what `r21d score`
   runs: decode workers, clip batching, the backend) against the model alone on the very same
   clips, already decoded, in batches of the same size. The ratio of clips/s is the share of
   model speed that survives end to end (issue 4 target: >= 90% on a 2-core CPU for
   R(2+1)D-18 8x112x112).
2. Does decoding stay near the minimum? Frames decoded per video against the frames the
   clips span (the minimum) and the bound ``K x (L x r + key-frame interval)``.
3. Does a long video cost about as much as a short one? A 10-minute synthetic video against a
   10-second one of the same codec, size and key-frame interval (2 s): frames decoded and the
   wall-time ratio (target <= 3x).
4. What does moving clips from the decode workers cost? The engine with clips in shared
   memory (the default) against clips pickled through the workers' pipes, side by side: bytes
   through the pipe, bytes copied and the peak memory (PSS of the scoring process and its
   decode workers, sampled) per run.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, markdown_table
from r21d.benchmarks.timing import time_call
from r21d.benchmarks.variants import REFERENCE, Variant, open_variant
from r21d.benchmarks.videos import cached_video, keyframe_interval
from r21d.errors import BadOptionError

PIPELINE_TARGET = 0.95
MEMORY_SAMPLE_S = 0.01
LONG_TARGET = 3.0


@dataclass
class PipelineSettings:
    device: str = "cpu"
    variant: Variant = REFERENCE
    num_clips: int = 10
    workers: int | None = None  # None: the engine's default
    batch_size: int | None = None  # None: the backend's default
    videos: int = 8  # videos per throughput pass (the clip set repeated to this many)
    warmup: int = 1
    repeats: int = 3
    short_seconds: float = 10.0
    long_seconds: float = 600.0
    keyframe_seconds: float = 2.0
    long_size: tuple[int, int] = (128, 160)
    typical_size: tuple[int, int] = (240, 320)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["variant"] = self.variant.label
        return d


def decode_clips(path: str | Path, spec, num_clips: int):
    """The engine's own decoding of one video (clips, frames decoded, video info)."""
    from r21d.infer.decode import decode_for_spec

    return decode_for_spec(path, spec, num_clips=num_clips)


def frames_needed(num_frames: int, spec, num_clips: int) -> int:
    """Fewest frames a decoder must produce: the union of the clips' frame spans."""
    from r21d.infer.clips import clip_span, clip_starts

    span = clip_span(spec.clip_len, spec.frame_step)
    starts = clip_starts(num_frames, spec.clip_len, spec.frame_step, num_clips)
    covered: set[int] = set()
    for s in starts:
        covered.update(range(s, min(s + span, num_frames)))
    return len(covered)


def run_pipeline_bench(
    model: BenchModel, videos: list[Path], cache_dir: Path, settings: PipelineSettings
) -> Report:
    """Throughput, decode economy and long-video cost; see the module docstring."""
    from r21d.infer.engine import ScoreOptions, default_workers, score_videos
    from r21d.infer.runtime import RuntimeOptions

    if not videos:
        raise BadOptionError("no videos to score")
    backend = open_variant(model, settings.variant, settings.device)
    workers = default_workers() if settings.workers is None else settings.workers
    batch = settings.batch_size or backend.default_batch
    options = ScoreOptions(num_clips=settings.num_clips)
    runtime = RuntimeOptions(workers=workers, batch_size=batch)
    paths = [str(videos[i % len(videos)]) for i in range(settings.videos)]

    def score_all(paths=paths, transfer="shared_memory") -> list:
        results = list(score_videos(paths, backend, options, runtime, transfer=transfer))
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"{failed[0].path}: {failed[0].error}")
        return results

    engine = time_call(score_all, warmup=settings.warmup, repeats=settings.repeats)
    results = score_all()
    total_clips = sum(r.clips for r in results)

    # The model alone on the same clips, decoded beforehand, in batches of the same size.
    decoded = {p: decode_clips(p, backend.spec, settings.num_clips) for p in dict.fromkeys(paths)}
    clips = np.concatenate([decoded[p].clips for p in paths])
    batches = _batches(clips, batch, backend.fixed_batch)
    model_only = time_call(
        lambda: [backend.run(b) for b in batches],
        warmup=settings.warmup,
        repeats=settings.repeats,
        device=settings.device,
    )
    engine_s = engine.median_ms / 1e3
    model_s = model_only.median_ms / 1e3
    throughput = {
        "model": model.key,
        "variant": settings.variant.label,
        "videos": len(paths),
        "clips": total_clips,
        "batch": batch,
        "workers": workers,
        "engine_s": engine_s,
        "engine_videos_per_s": len(paths) / engine_s,
        "engine_clips_per_s": total_clips / engine_s,
        "model_only_s": model_s,
        "model_clips_per_s": len(clips) / model_s,
        "engine_timing": engine.summary(),
        "model_timing": model_only.summary(),
    }
    throughput["ratio"] = throughput["engine_clips_per_s"] / throughput["model_clips_per_s"]

    decode_rows = [_decode_row(p, decoded[p], backend.spec, settings.num_clips) for p in decoded]
    long_rows = _long_vs_short(backend, cache_dir, settings, options)
    views = options.for_spec(backend.spec)
    clip_bytes = views.num_clips * views.crops * int(np.prod(clips.shape[1:]))
    transfer_rows = [_transfer_row(t, score_all, clip_bytes) for t in ("shared_memory", "pipe")]
    return _report(model, throughput, decode_rows, long_rows, transfer_rows, settings)


def _transfer_row(transfer: str, score_all, clip_bytes: int) -> dict:
    """One engine pass with clips moved by ``transfer``: speed, bytes and peak memory."""
    sampler = _PeakMemory()
    with sampler:
        start = time.perf_counter()
        results = score_all(transfer=transfer)
        seconds = time.perf_counter() - start
    n = len(results)
    through_pipe = sum(r.transfer_bytes for r in results) / n
    batch_copies = sum(r.copy_bytes for r in results) / n
    return {
        "transfer": transfer,
        "videos": n,
        "videos_per_s": n / seconds,
        "clip_mib_per_video": clip_bytes / 2**20,
        "pipe_mib_per_video": through_pipe / 2**20,
        "batch_copy_mib_per_video": batch_copies / 2**20,
        # pickling in the worker and unpickling here each copy what crosses the pipe
        "copied_mib_per_video": (2 * through_pipe + batch_copies) / 2**20,
        "peak_pss_mib": sampler.peak / 2**20,
        "peak_over_start_mib": (sampler.peak - sampler.start) / 2**20,
    }


class _PeakMemory:
    """Peak proportional set size (PSS: shared pages split between the processes mapping
    them) of this process and its children, sampled from /proc while the block runs."""

    def __enter__(self) -> _PeakMemory:
        self.start = self.peak = _pss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            self.peak = max(self.peak, _pss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _pss_bytes() -> int:
    pids = [os.getpid(), *(c.pid for c in mp.active_children())]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def _batches(clips: np.ndarray, size: int, fixed: int | None) -> list[np.ndarray]:
    """``clips`` cut into batches of ``size`` (the last padded where the backend is fixed)."""
    out = []
    for i in range(0, len(clips), size):
        b = clips[i : i + size]
        if fixed and len(b) < fixed:
            b = np.concatenate([b, np.repeat(b[-1:], fixed - len(b), axis=0)])
        out.append(np.ascontiguousarray(b))
    return out


def _decode_row(path: str, decoded, spec, num_clips: int) -> dict:
    n = int(decoded.info.num_frames)
    gop = keyframe_interval(path)
    bound = num_clips * (spec.clip_len * spec.frame_step + gop)
    needed = frames_needed(n, spec, num_clips)
    return {
        "video": Path(path).name,
        "num_frames": n,
        "keyframe_interval": gop,
        "frames_decoded": int(decoded.frames_decoded),
        "frames_needed": needed,
        "k_l_r": num_clips * spec.clip_len * spec.frame_step,
        "bound": bound,
        "within_bound": int(decoded.frames_decoded) <= bound,
        "decoded_over_needed": int(decoded.frames_decoded) / max(1, needed),
    }


def _long_vs_short(backend, cache_dir, settings: PipelineSettings, options) -> list[dict]:
    """Score the long and the short synthetic video alone (decoding in-process, so the wall
    time is this video's own decode + model time); frames decoded and median wall time."""
    from r21d.infer.engine import score_videos
    from r21d.infer.runtime import RuntimeOptions

    runtime = RuntimeOptions(workers=0)
    rows = []
    for kind, seconds in (("short", settings.short_seconds), ("long", settings.long_seconds)):
        path = cached_video(
            cache_dir, seconds, size=settings.long_size, keyframe_seconds=settings.keyframe_seconds
        )
        results: list = []

        def score(path=path, results=results) -> None:
            results[:] = list(score_videos([str(path)], backend, options, runtime))

        timing = time_call(score, warmup=settings.warmup, repeats=settings.repeats)
        (result,) = results
        if not result.ok:
            raise RuntimeError(f"{path}: {result.error}")
        rows.append(
            {
                "video": kind,
                "file": path.name,
                "seconds": seconds,
                "keyframe_interval": keyframe_interval(path),
                "frames_decoded": result.frames_decoded,
                "wall_s": timing.median_ms / 1e3,
                "decode_s": result.decode_s,
                "model_s": result.model_s,
                "timing": timing.summary(),
            }
        )
    short, long = rows
    long["vs_short"] = long["wall_s"] / short["wall_s"]
    long["frames_vs_short"] = long["frames_decoded"] / max(1, short["frames_decoded"])
    return rows


def _report(model, throughput, decode_rows, long_rows, transfer_rows, settings) -> Report:
    long = long_rows[1]
    report = Report(
        name="pipeline",
        title="Pipeline throughput (engine against the model alone)",
        settings={**settings.as_dict(), "model": model.key},
        rows=[{"part": "throughput", **throughput}]
        + [{"part": "decode", **r} for r in decode_rows]
        + [{"part": "long_video", **r} for r in long_rows]
        + [{"part": "transfer", **r} for r in transfer_rows],
        summary={
            "engine_videos_per_s": throughput["engine_videos_per_s"],
            "engine_clips_per_s": throughput["engine_clips_per_s"],
            "model_clips_per_s": throughput["model_clips_per_s"],
            "ratio": throughput["ratio"],
            "ratio_target": PIPELINE_TARGET,
            "ratio_met": throughput["ratio"] >= PIPELINE_TARGET,
            "all_within_decode_bound": all(r["within_bound"] for r in decode_rows),
            "long_vs_short": long["vs_short"],
            "long_target": LONG_TARGET,
            "long_met": long["vs_short"] <= LONG_TARGET,
            "copied_mib_per_video": {
                r["transfer"]: r["copied_mib_per_video"] for r in transfer_rows
            },
            "peak_over_start_mib": {r["transfer"]: r["peak_over_start_mib"] for r in transfer_rows},
        },
    )
    report.add_section(
        "Engine against the model alone",
        markdown_table(
            [throughput],
            [
                ("model", "model"),
                ("variant", "variant"),
                ("videos", "videos"),
                ("clips", "clips"),
                ("batch", "batch"),
                ("workers", "decode workers"),
                ("engine_videos_per_s", "engine videos/s"),
                ("engine_clips_per_s", "engine clips/s"),
                ("model_clips_per_s", "model-only clips/s"),
                ("ratio", "engine / model"),
            ],
        )
        + f"\n\nTarget: engine / model >= {PIPELINE_TARGET:.0%} "
        f"({'met' if throughput['ratio'] >= PIPELINE_TARGET else 'NOT met'} in this run).",
    )
    report.add_section(
        "Frames decoded per video",
        markdown_table(
            decode_rows,
            [
                ("video", "video"),
                ("num_frames", "frames in video"),
                ("keyframe_interval", "key-frame interval"),
                ("frames_decoded", "frames decoded"),
                ("frames_needed", "needed (clip spans)"),
                ("k_l_r", "K x L x r"),
                ("bound", "bound K x (L x r + key int.)"),
                ("within_bound", "within bound"),
            ],
        ),
    )
    report.add_section(
        "Long video against short video (same codec, size, key-frame interval)",
        markdown_table(
            long_rows,
            [
                ("video", "video"),
                ("seconds", "length s"),
                ("keyframe_interval", "key-frame interval"),
                ("frames_decoded", "frames decoded"),
                ("wall_s", "wall s (median)"),
                ("decode_s", "decode s"),
                ("model_s", "model s"),
                ("vs_short", "x short"),
            ],
        )
        + f"\n\nTarget: long / short wall time <= {LONG_TARGET:g}x "
        f"({'met' if long['vs_short'] <= LONG_TARGET else 'NOT met'} in this run).",
    )
    report.add_section(
        "Moving clips from the decode workers: shared memory against the pipe",
        markdown_table(
            transfer_rows,
            [
                ("transfer", "clips moved by"),
                ("videos", "videos"),
                ("videos_per_s", "videos/s"),
                ("clip_mib_per_video", "clips MiB/video"),
                ("pipe_mib_per_video", "through pipe MiB/video"),
                ("batch_copy_mib_per_video", "batch copies MiB/video"),
                ("copied_mib_per_video", "copied MiB/video"),
                ("peak_over_start_mib", "peak PSS over start MiB"),
            ],
        )
        + "\n\nCopied = twice what crosses the pipe (pickled in the worker, unpickled here) plus "
        "the copies that assemble batches (none where a batch is a slice of one video's clips). "
        "Peak PSS: this process and its decode workers, sampled every "
        f"{MEMORY_SAMPLE_S * 1e3:g} ms, shared pages split between the processes mapping them.",
    )
    return report


def add_plots(report: Report, out_dir: Path) -> None:
    """Clips/s: engine against model alone."""
    t = report.rows[0]
    report.plots.append(
        bar_plot(
            Path(out_dir) / "pipeline_throughput.png",
            ["model alone (pre-decoded clips)", "engine (decode + model)"],
            [t["model_clips_per_s"], t["engine_clips_per_s"]],
            xlabel="clips/s (median)",
            title=f"{t['model']} {t['variant']}: engine / model = {t['ratio']:.0%}",
            reference=(PIPELINE_TARGET * t["model_clips_per_s"], f"{PIPELINE_TARGET:.0%} target"),
        )
    )
