"""End-to-end ``r21d score`` videos/s against the number of decode workers.

On a GPU the model outruns one decoder by far, so the scoring engine's speed is set by how
many decode processes feed it. The same videos are scored with each worker count (one timed
pass each, after one untimed warm-up video); beside them, the model alone on already-decoded
clips at the engine's batch size, so each row says what share of the model's speed survives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, markdown_table
from r21d.benchmarks.timing import time_call
from r21d.benchmarks.variants import Variant, open_variant, variant_of


def score_scaling(
    model: BenchModel,
    videos: list[Path],
    device: str,
    *,
    workers: tuple[int, ...] = (1, 2, 4, 8, 16),
    n_videos: int = 32,
    variant: Variant | None = None,
    num_clips: int = 10,
) -> Report:
    """Score ``n_videos`` (``videos`` repeated) with each worker count; see the module
    docstring."""
    from r21d.infer.decode import decode_for_spec
    from r21d.infer.engine import ScoreOptions, score_videos
    from r21d.infer.runtime import RuntimeOptions

    variant = variant or variant_of("torch", "fp16" if device.startswith("cuda") else "bf16", True)
    backend = open_variant(model, variant, device)
    batch = backend.default_batch
    clips = decode_for_spec(videos[0], backend.spec, num_clips=num_clips).clips
    frames = np.ascontiguousarray(np.resize(clips, (batch, *clips.shape[1:])))
    alone = time_call(lambda: backend.run(frames), warmup=3, repeats=20, device=device)
    model_clips_per_s = batch / (alone.median_ms / 1e3)

    paths = [str(videos[i % len(videos)]) for i in range(n_videos)]
    options = ScoreOptions(num_clips=num_clips)
    list(score_videos(paths[:1], backend, options, RuntimeOptions(workers=1)))  # warm-up
    rows = []
    for count in workers:
        runtime = RuntimeOptions(workers=count)

        def score_all(runtime=runtime) -> None:
            for r in score_videos(paths, backend, options, runtime):
                if not r.ok:
                    raise RuntimeError(f"{r.path}: {r.error}")

        timing = time_call(score_all, warmup=0, repeats=1, device=device)
        wall = timing.median_ms / 1e3
        clips_per_s = n_videos * num_clips / wall
        rows.append(
            {
                "workers": count,
                "wall_s": wall,
                "videos_per_s": n_videos / wall,
                "clips_per_s": clips_per_s,
                "share_of_model": clips_per_s / model_clips_per_s,
            }
        )
    report = Report(
        name="score",
        title="End-to-end r21d score against decode workers",
        settings={
            "device": device,
            "model": model.key,
            "variant": variant.label,
            "batch_size": batch,
            "videos": n_videos,
            "distinct_videos": ", ".join(Path(v).name for v in videos),
            "num_clips": num_clips,
        },
        rows=rows,
        summary={
            "model_clips_per_s": model_clips_per_s,
            "best": max(rows, key=lambda r: r["videos_per_s"]),
        },
    )
    report.add_section(
        "Videos/s per decode-worker count",
        markdown_table(
            rows,
            [
                ("workers", "decode workers"),
                ("wall_s", "wall s"),
                ("videos_per_s", "videos/s"),
                ("clips_per_s", "clips/s"),
                ("share_of_model", "share of model-only clips/s"),
            ],
        )
        + f"\n\nModel alone ({variant.label}, batch {batch}, decoded clips): "
        f"{model_clips_per_s:.1f} clips/s.",
    )
    return report
