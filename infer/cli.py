"""``r21d score`` and ``r21d extract``: score or embed folders of videos, resumably.

``r21d score PATH... --model M [-o results.jsonl]`` writes one record per video (top-k labels
and probabilities, clips, frames decoded, duration, short-video flag, status, timings; format in
:mod:`r21d.infer.records`). ``r21d extract PATH... --model M -o DIR`` writes pooled features:

    DIR/<stem>_<hash>.npz   clip_features (K, D) float32, one row per clip (clips x crops),
                            video_feature (D,) float32, their mean (np.load, no pickle)
    DIR/index.jsonl         {"path", "file" (name in DIR, null on error), "clips", "dim",
                             "status", "error", "frames_decoded", "duration", "short", "model"}

PATHs are folders (searched recursively for video files, links to folders followed), video
files, or ``@list.txt`` list files (also ``--list FILE``) with one path per line (blank lines
and ``#`` comments skipped; relative paths are taken from the current directory). A folder
entry that cannot be read (a symbolic link that loops or leads nowhere, a folder that may not
be listed) becomes an error record saying so.

Both commands resume by default: paths already in the output are skipped; ``--overwrite``
starts over, ``--retry-errors`` scores the videos whose record is an error again (their error
records are removed first, so each video keeps one record). An output remembers what made it
(:mod:`r21d.infer.run_identity`: the model's content and every option that changes a record),
and a rerun with another model or other options is refused rather than mixed in. The output
path is checked before any work (:mod:`r21d.outputs`). ``--ray [ADDRESS]`` computes the same
results on a Ray cluster (:mod:`r21d.infer.ray_engine`); the records are written here, by the
same writers, with the same resume rules.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from r21d.errors import BadOptionError

PRINT_LIMIT = 10
"""Scoring at most this many videos prints each one's top labels to stdout."""
SHOWN_FAILURES = 3
"""The end-of-run summary names this many of the videos that failed."""


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
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="score again the videos whose record in the output is an error (those records "
        "are removed first)",
    )


def register(subparsers) -> None:
    """Add ``score`` and ``extract`` to the ``r21d`` command."""
    p = subparsers.add_parser(
        "score",
        help="score videos: top-k labels per video, resumable JSONL/CSV output",
        description="Score videos with the paper's test protocol (uniform clips, centre crop, "
        "mean of clip softmax outputs). Resumes an existing output by default (written with "
        "the same model and options); --retry-errors scores its failed videos again.",
    )
    _add_common_arguments(p)
    p.add_argument(
        "-o",
        "--output",
        default="results.jsonl",
        help="results file (default results.jsonl; a .csv suffix writes CSV, .parquet a folder "
        "of Parquet parts); what made it is kept beside it (results.jsonl.run.json)",
    )
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), help="default: from the suffix")
    p.add_argument(
        "--top-k",
        type=int,
        help="labels per video (default 5, or the class count if smaller; at most the classes)",
    )
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
        "video_feature (D,)) and DIR/index.jsonl. Resumes by default (written with the same "
        "model and options); --retry-errors extracts its failed videos again.",
    )
    _add_common_arguments(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=extract_command)


def _protocol(args: argparse.Namespace):
    """The :class:`~r21d.infer.engine.ScoreOptions` of the flags (its messages name them)."""
    from r21d.infer.engine import ScoreOptions

    return ScoreOptions(
        num_clips=args.clips,
        crops=args.crops,
        full_frame=args.full_frame,
        resize_mode=args.resize,
    )


def _find(args: argparse.Namespace):
    """The videos (and unreadable entries) the PATHs and list files name."""
    from r21d.infer.sources import find_videos

    found = find_videos(args.paths, args.list)
    if not found.paths:
        raise BadOptionError(f"no videos found in {' '.join(args.paths + args.list)}")
    return found


def _open_model(args: argparse.Namespace, runtime):
    """The backend, or with ``--ray`` the :class:`RayEngine` (the cluster opens the model)."""
    from r21d.infer.ray_engine import RayEngine, ray_options_from_args

    ray_options = ray_options_from_args(args)
    if ray_options is not None:
        return RayEngine(args.model, runtime, ray_options)
    return runtime.open(args.model)


def shown(text: str) -> str:
    """``text`` as one printable line: newlines, other control characters and the bytes of
    names that are not UTF-8 as Python escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _resume(out, run_path: Path, identity: dict, args, paths: list[str]) -> int:
    """Check that ``out`` was written by a run of ``identity`` (storing it if ``out`` is
    new); with ``--retry-errors`` remove the error records of ``paths``; return how many."""
    from r21d.infer.run_identity import check_run

    check_run(run_path, identity, args.output, len(out.records))
    if not args.retry_errors:
        return 0
    wanted = set(paths)
    errors = {r["path"] for r in out.records if r.get("status") == "error" and r["path"] in wanted}
    return len(out.remove(errors))


class _Progress:
    """tqdm bar (videos/s, ETA) plus the counts the end-of-run summary reports."""

    def __init__(self, total: int, skipped: int, output: str, earlier_errors: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="video", file=sys.stderr, dynamic_ncols=True)
        self.skipped, self.output, self.earlier_errors = skipped, output, earlier_errors
        self.scored = self.failed = self.clips = 0
        self.failures: list[tuple[str, str]] = []
        self.start = time.perf_counter()

    def update(self, result) -> None:
        self.scored += result.ok
        self.failed += not result.ok
        self.clips += result.clips
        if not result.ok and len(self.failures) < SHOWN_FAILURES:
            error = " ".join(str(result.error).split())
            self.failures.append((result.path, error.removeprefix(f"{result.path}: ")))
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
        lines = [
            f"{end}: scored {self.scored}, failed {self.failed}, skipped {self.skipped} "
            f"(already in {self.output}) in {seconds:.1f} s ({rate})"
        ]
        lines += [f"  failed: {shown(path)}: {shown(error)}" for path, error in self.failures]
        if self.failed:
            more = self.failed - len(self.failures)
            lines.append(
                (f"  ... and {more} more; " if more else "  ")
                + f'every failure is a record with "status": "error" in {self.output}; '
                "--retry-errors scores them again"
            )
        elif self.earlier_errors:
            lines.append(
                f"  {self.earlier_errors} videos skipped have an error record from an earlier "
                f"run in {self.output}; --retry-errors scores them again"
            )
        print("\n".join(lines), file=sys.stderr)


def _rate(count: int, seconds: float, unit: str) -> str:
    """``12.3 videos/s``, or ``215 s/video`` where fewer than one a second finish."""
    if count and count < seconds:
        return f"{seconds / count:.3g} s/{unit[:-1]}"
    return f"{count / max(seconds, 1e-9):.3g} {unit}/s"


def _run(found, backend, options, runtime, out, output: str, handle, retried: int) -> int:
    """Score the paths ``found`` that ``out`` does not hold, passing each result to
    ``handle``; the unreadable entries become error results first. Return the failures."""
    from r21d.infer.engine import VideoResult, score_videos
    from r21d.infer.ray_engine import RayEngine

    todo = [p for p in found.paths if p not in out.done]
    skipped = len(found.paths) - len(todo)
    wanted = set(found.paths)
    earlier = sum(r.get("status") == "error" and r["path"] in wanted for r in out.records)
    again = f" ({retried} of them earlier errors, scored again)" if retried else ""
    left = f" ({earlier} of them errors: --retry-errors scores them again)" if earlier else ""
    print(
        f"{backend.describe()}\n{len(todo)} videos to score{again}, {skipped} already in "
        f"{output}{left}",
        file=sys.stderr,
    )
    progress = _Progress(len(todo), skipped, output, earlier)
    unreadable = [p for p in todo if p in found.problems]
    videos = [p for p in todo if p not in found.problems]
    try:
        for index, path in enumerate(unreadable):
            result = VideoResult(index, path, status="error", error=found.problems[path])
            handle(result, progress)
            progress.update(result)
        if isinstance(backend, RayEngine):  # --ray: the same results, from a Ray cluster
            results = backend.score_videos(videos, options)
        else:
            results = score_videos(videos, backend, options, runtime)
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
    from r21d.infer.records import (
        SURROGATE,
        csv_columns,
        open_record_file,
        output_format,
        score_record,
        top_k_for,
    )
    from r21d.infer.run_identity import run_file, run_identity
    from r21d.infer.runtime import runtime_from_args
    from r21d.outputs import output_file, output_folder

    if args.top_k is not None and args.top_k < 1:  # before the model opens
        raise BadOptionError(f"--top-k must be >= 1, got {args.top_k}")
    options = _protocol(args)
    runtime = runtime_from_args(args)
    fmt = output_format(args.output, args.format)
    (output_folder if fmt == "parquet" else output_file)(args.output, "-o")
    found = _find(args)
    odd = [p for p in found.paths if SURROGATE.search(p)]
    if fmt == "parquet" and odd:
        raise BadOptionError(
            f"-o {args.output}: Parquet holds only UTF-8 text, and {len(odd)} file names are "
            f"not UTF-8 (e.g. {shown(odd[0])}); write JSONL or CSV instead"
        )
    backend = _open_model(args, runtime)
    spec, model = backend.spec, Path(args.model).name
    args.top_k = top_k_for(args.top_k, spec, model)
    identity = run_identity("score", args.model, backend, options, top_k=args.top_k)
    columns = csv_columns(args.top_k) if fmt == "csv" else None
    show = args.print_results or len(found.paths) <= PRINT_LIMIT

    with open_record_file(args.output, fmt, columns=columns, overwrite=args.overwrite) as out:
        retried = _resume(out, run_file(args.output, fmt == "parquet"), identity, args, found.paths)

        def handle(result, progress) -> None:
            out.write(score_record(result, spec, args.top_k, model))
            if show:
                progress.write(_format_result(result, spec))

        failed = _run(found, backend, options, runtime, out, args.output, handle, retried)
    return 1 if failed else 0


def _format_result(result, spec) -> str:
    if not result.ok:
        return f"{shown(result.path)}: error: {shown(' '.join(str(result.error).split()))}"
    top = ", ".join(f"{label} {p:.3f}" for _, label, p in result.top_k(spec, 5))
    short = " (short video, frames repeated)" if result.short else ""
    return f"{shown(result.path)}: {top}{short}"


def extract_command(args: argparse.Namespace) -> int:
    """``r21d extract``: exit 0 when every video was embedded, 1 when some failed."""
    from r21d.infer.records import RecordFile, extract_record, save_features
    from r21d.infer.run_identity import run_file, run_identity
    from r21d.infer.runtime import runtime_from_args
    from r21d.outputs import output_file, output_folder

    options = _protocol(args)
    runtime = runtime_from_args(args)
    directory = output_folder(args.output, "-o")
    index = output_file(directory / "index.jsonl", "-o")
    found = _find(args)
    backend = _open_model(args, runtime)
    model = Path(args.model).name
    identity = run_identity("extract", args.model, backend, options)
    with RecordFile(index, "jsonl", overwrite=args.overwrite) as out:
        retried = _resume(out, run_file(directory, folder=True), identity, args, found.paths)

        def handle(result, progress) -> None:
            name = None
            if result.ok:
                name = save_features(directory, result.path, result.clip_features)
            out.write(extract_record(result, name, model))

        failed = _run(found, backend, options, runtime, out, str(index), handle, retried)
    return 1 if failed else 0
