"""``r21d score`` and ``r21d extract``: score or embed folders of videos, resumably.

``r21d score PATH... --model M [-o results.jsonl]`` writes one record per video (top-k labels
and probabilities, clips, frames decoded, duration, short-video flag, status, timings; format in
:mod:`r21d.infer.records`). ``r21d extract PATH... --model M -o DIR`` writes pooled features:

    DIR/<stem>_<hash>.npz   clip_features (K, D) float32, one row per clip (clips x crops),
                            video_feature (D,) float32, their mean (np.load, no pickle)
    DIR/index.jsonl         {"path", "file" (name in DIR, null on error), "clips", "dim",
                             "status", "error", "frames_decoded", "duration", "short", "model"}

PATHs are folders (searched recursively for video files), video files, or ``@list.txt`` list
files (also ``--list FILE``) with one path per line (blank lines and ``#`` comments skipped;
relative paths are taken from the current directory). Both commands resume by default: paths
already in the output are skipped; ``--overwrite`` starts over. ``--ray [ADDRESS]`` computes
the same results on a Ray cluster (:mod:`r21d.infer.ray_engine`); the records are written here,
by the same writers, with the same resume rule.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from r21d.errors import BadOptionError

PRINT_LIMIT = 10
"""Scoring at most this many videos prints each one's top labels to stdout."""


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    from r21d.infer.ray_engine import add_ray_arguments  # imports ray only when --ray runs
    from r21d.infer.runtime import add_runtime_arguments
    from r21d.spec import CROP_COUNTS, RESIZE_MODES

    p.add_argument("paths", nargs="+", metavar="PATH", help="folders, videos or @list.txt files")
    p.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="FILE",
        help="a file with one video path per line (repeatable)",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="checkpoint (.safetensors), ONNX model (.onnx) or TensorRT engine",
    )
    protocol = p.add_argument_group("test protocol (default: the model's spec)")
    protocol.add_argument(
        "--clips", type=int, help="clips per video (default: the spec's, 10 for R(2+1)D)"
    )
    protocol.add_argument(
        "--crops",
        type=int,
        choices=CROP_COUNTS,
        help="spatial crops per clip: 1 the centre, 3 along the long side (default: the spec's)",
    )
    protocol.add_argument(
        "--resize", choices=RESIZE_MODES, help="frame resizing (default: the model's spec)"
    )
    protocol.add_argument(
        "--full-frame",
        action="store_true",
        help="score the whole resized frame fully-convolutionally, not a crop",
    )
    add_runtime_arguments(p)
    add_ray_arguments(p)
    p.add_argument(
        "--overwrite", action="store_true", help="start the output over instead of resuming it"
    )


def register(subparsers) -> None:
    """Add ``score`` and ``extract`` to the ``r21d`` command."""
    p = subparsers.add_parser(
        "score",
        help="score videos: top-k labels per video, resumable JSONL/CSV output",
        description="Score videos with the paper's test protocol (uniform clips, centre crop, "
        "mean of clip softmax outputs). Resumes an existing output by default.",
    )
    _add_common_arguments(p)
    p.add_argument(
        "-o",
        "--output",
        default="results.jsonl",
        help="results file (default results.jsonl; a .csv suffix writes CSV, .parquet a folder "
        "of Parquet parts)",
    )
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), help="default: from the suffix")
    p.add_argument("--top-k", type=int, default=5, help="labels per video (default 5)")
    p.add_argument(
        "--print",
        action="store_true",
        dest="print_results",
        help=f"print each video's top labels (default when <= {PRINT_LIMIT} videos)",
    )
    p.set_defaults(func=score_command)

    p = subparsers.add_parser(
        "extract",
        help="pooled clip and video features per video (.npz) with an index.jsonl",
        description="Extract pooled features: one .npz per video (clip_features (K, D), "
        "video_feature (D,)) and DIR/index.jsonl. Resumes by default.",
    )
    _add_common_arguments(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=extract_command)


def _open(args: argparse.Namespace):
    """Videos, backend, protocol and runtime options from the parsed arguments."""
    from r21d.infer.engine import ScoreOptions
    from r21d.infer.ray_engine import RayEngine, ray_options_from_args
    from r21d.infer.runtime import runtime_from_args
    from r21d.infer.sources import find_videos

    paths = find_videos(args.paths, args.list)
    if not paths:
        raise BadOptionError(f"no videos found in {' '.join(args.paths + args.list)}")
    options = ScoreOptions(
        num_clips=args.clips,
        crops=args.crops,
        full_frame=args.full_frame,
        resize_mode=args.resize,
    )
    runtime = runtime_from_args(args)
    ray_options = ray_options_from_args(args)
    if ray_options is not None:  # the model is opened by the cluster's actors, not here
        return paths, RayEngine(args.model, runtime, ray_options), options, runtime
    return paths, runtime.open(args.model), options, runtime


def _check_same_model(records: list[dict], model: str, output: str) -> None:
    others = {r.get("model") for r in records} - {model, None, ""}
    if others:
        raise BadOptionError(
            f"{output} holds results of {', '.join(sorted(others))}, not {model}; "
            "use another output or --overwrite"
        )


class _Progress:
    """tqdm bar (videos/s, ETA) plus the counts the end-of-run summary reports."""

    def __init__(self, total: int, skipped: int, output: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="video", file=sys.stderr, dynamic_ncols=True)
        self.skipped, self.output = skipped, output
        self.scored = self.failed = self.clips = 0
        self.start = time.perf_counter()

    def update(self, result) -> None:
        self.scored += result.ok
        self.failed += not result.ok
        self.clips += result.clips
        self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)

    def summary(self, interrupted: bool = False) -> None:
        self.bar.close()
        seconds = time.perf_counter() - self.start
        done = self.scored + self.failed
        rate = f"{_rate(done, seconds, 'videos')}, {_rate(self.clips, seconds, 'clips')}"
        end = "interrupted; run again to resume" if interrupted else "done"
        print(
            f"{end}: scored {self.scored}, failed {self.failed}, skipped {self.skipped} "
            f"(already in {self.output}) in {seconds:.1f} s ({rate})",
            file=sys.stderr,
        )


def _rate(count: int, seconds: float, unit: str) -> str:
    """``12.3 videos/s``, or ``215 s/video`` where fewer than one a second finish."""
    if count and count < seconds:
        return f"{seconds / count:.3g} s/{unit[:-1]}"
    return f"{count / max(seconds, 1e-9):.3g} {unit}/s"


def _run(paths, backend, options, runtime, done: set[str], output: str, handle) -> int:
    """Score the paths not in ``done``, passing each result to ``handle``; return failures."""
    from r21d.infer.engine import score_videos
    from r21d.infer.ray_engine import RayEngine

    todo = [p for p in paths if p not in done]
    print(
        f"{backend.describe()}\n{len(todo)} videos to score, {len(paths) - len(todo)} "
        f"already in {output}",
        file=sys.stderr,
    )
    progress = _Progress(len(todo), len(paths) - len(todo), output)
    try:
        if isinstance(backend, RayEngine):  # --ray: the same results, from a Ray cluster
            results = backend.score_videos(todo, options)
        else:
            results = score_videos(todo, backend, options, runtime)
        for result in results:
            handle(result, progress)
            progress.update(result)
    except KeyboardInterrupt:
        progress.summary(interrupted=True)
        raise
    progress.summary()
    return progress.failed


def score_command(args: argparse.Namespace) -> int:
    """``r21d score``: exit 0 when every video scored, 1 when some failed."""
    from r21d.infer.records import csv_columns, open_record_file, output_format, score_record

    if args.top_k < 1:
        raise BadOptionError(f"--top-k must be >= 1, got {args.top_k}")
    paths, backend, options, runtime = _open(args)
    spec, model = backend.spec, Path(args.model).name
    fmt = output_format(args.output, args.format)
    columns = csv_columns(args.top_k) if fmt == "csv" else None
    show = args.print_results or len(paths) <= PRINT_LIMIT

    with open_record_file(args.output, fmt, columns=columns, overwrite=args.overwrite) as out:
        _check_same_model(out.records, model, args.output)

        def handle(result, progress) -> None:
            out.write(score_record(result, spec, args.top_k, model))
            if show:
                progress.write(_format_result(result, spec))

        failed = _run(paths, backend, options, runtime, out.done, args.output, handle)
    return 1 if failed else 0


def _format_result(result, spec) -> str:
    if not result.ok:
        return f"{result.path}: error: {result.error}"
    top = ", ".join(f"{label} {p:.3f}" for _, label, p in result.top_k(spec, 5))
    short = " (short video, frames repeated)" if result.short else ""
    return f"{result.path}: {top}{short}"


def extract_command(args: argparse.Namespace) -> int:
    """``r21d extract``: exit 0 when every video was embedded, 1 when some failed."""
    from r21d.infer.records import RecordFile, extract_record, save_features

    directory = Path(args.output)
    if directory.exists() and not directory.is_dir():
        raise BadOptionError(f"-o {directory} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    paths, backend, options, runtime = _open(args)
    model = Path(args.model).name
    index = directory / "index.jsonl"
    with RecordFile(index, "jsonl", overwrite=args.overwrite) as out:
        _check_same_model(out.records, model, str(index))

        def handle(result, progress) -> None:
            name = None
            if result.ok:
                name = save_features(directory, result.path, result.clip_features)
            out.write(extract_record(result, name, model))

        failed = _run(paths, backend, options, runtime, out.done, str(index), handle)
    return 1 if failed else 0
