"""``r21d timeline`` and ``r21d stream``: sliding-window scoring of a file or a live source.

``r21d timeline VIDEO --model M [-o timeline.jsonl]`` scores windows over a whole file and
writes one JSON line per window, then the segments, and a PNG plot
(:mod:`r21d.infer.timeline`). ``r21d stream SOURCE --model M [-o windows.jsonl]`` scores a
file, URL or capture device as its frames arrive, one JSON line per window
(:mod:`r21d.infer.stream`). Both take the shared runtime options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from r21d.errors import BadOptionError, InputNotFoundError


def _add_window_arguments(p: argparse.ArgumentParser) -> None:
    from r21d.infer.runtime import add_runtime_arguments
    from r21d.infer.windows import DEFAULT_THRESHOLD

    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="checkpoint (.safetensors), ONNX model (.onnx) or TensorRT engine",
    )
    windows = p.add_argument_group(
        "windows (the model's clip length and frame step, the spec's resize, centre crop)"
    )
    windows.add_argument(
        "--stride-s",
        type=float,
        help="seconds between window starts (default: half a window)",
    )
    windows.add_argument(
        "--smooth",
        type=int,
        default=1,
        metavar="N",
        help="moving average of the probabilities over the last N windows (default 1: none)",
    )
    windows.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"smoothed probability a window's top class needs to count (default "
        f"{DEFAULT_THRESHOLD})",
    )
    windows.add_argument(
        "--top-k", type=int, help="labels per window (default 5, or the class count if smaller)"
    )
    add_runtime_arguments(p)


def register(subparsers) -> None:
    """Add ``timeline`` and ``stream`` to the ``r21d`` command."""
    p = subparsers.add_parser(
        "timeline",
        help="sliding-window scores over a whole video: JSONL per window, segments, a plot",
        description="Score windows of the model's clip length (at its frame step) every "
        "--stride-s seconds over a whole video, seek-based; write one JSON line per window, "
        "the segments where the smoothed top class stays above --threshold, and a PNG plot.",
    )
    p.add_argument("video", help="the video file")
    _add_window_arguments(p)
    p.add_argument(
        "-o", "--output", default="timeline.jsonl", help="JSONL output (default timeline.jsonl)"
    )
    p.add_argument(
        "--segments", help="write the segments to this JSONL file instead of after the windows"
    )
    p.add_argument("--plot", help="PNG plot (default: the output with a .png suffix)")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--probs", action="store_true", help="add every window's smoothed probabilities")
    p.add_argument(
        "--resize", choices=("fixed", "short_edge"), help="frame resizing (default: the spec's)"
    )
    p.set_defaults(func=timeline_command)

    p = subparsers.add_parser(
        "stream",
        help="score a live source (file, URL, capture device) window by window",
        description="Score a file, a URL PyAV opens (rtsp://, http(s)://, udp://, srt://) or "
        "a capture device (/dev/video0) as frames arrive: one JSON line per window (times, "
        "top-k, latency). A live source keeps up by skipping windows, never by changing the "
        "frame step.",
    )
    p.add_argument("source", help="file, URL or capture device")
    _add_window_arguments(p)
    p.add_argument("-o", "--output", help="JSONL output (default: stdout)")
    p.add_argument(
        "--format",
        dest="input_format",
        help="input format for PyAV: v4l2 (default for /dev/video*), avfoundation, dshow, ...",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="demuxer or protocol option, e.g. rtsp_transport=tcp (repeatable)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        help="stop when no frame arrives for this many seconds (default 10)",
    )
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="open a dropped or ended network source again (until --idle-timeout passes)",
    )
    p.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip windows to keep up (default: on for URLs and devices; a file with "
        "--realtime is paced at its frame rate)",
    )
    p.add_argument("--max-windows", type=int, help="stop after this many windows")
    p.set_defaults(func=stream_command)


def _backend(args: argparse.Namespace, batch: int | None = None):
    from r21d.infer.records import top_k_for
    from r21d.infer.runtime import runtime_from_args

    runtime = runtime_from_args(args)
    if batch is not None and runtime.batch_size not in (None, batch):
        raise BadOptionError(f"r21d stream scores one window at a time: --batch-size {batch}")
    backend = runtime.open(args.model)
    args.top_k = top_k_for(args.top_k, backend.spec, Path(args.model).name)
    return runtime, backend


def timeline_command(args: argparse.Namespace) -> int:
    """``r21d timeline``: exit 0 once the windows, segments and plot are written."""
    from r21d.infer.timeline import plot_timeline, score_timeline, write_timeline
    from r21d.outputs import output_file

    if not Path(args.video).is_file():
        raise InputNotFoundError(f"{args.video}: no such video file")
    output_file(args.output, "-o")
    if args.segments is not None:
        output_file(args.segments, "--segments")
    plot = None if args.no_plot else args.plot or str(Path(args.output).with_suffix(".png"))
    if plot is not None:
        output_file(plot, "--plot" if args.plot else "-o (its .png plot)")
    runtime, backend = _backend(args)
    timeline = score_timeline(
        args.video,
        backend,
        runtime,
        stride_s=args.stride_s,
        smooth=args.smooth,
        threshold=args.threshold,
        resize_mode=args.resize,
    )
    write_timeline(
        timeline, args.output, segments_path=args.segments, k=args.top_k, with_probs=args.probs
    )
    seconds = timeline.stride / timeline.fps
    print(
        f"{args.video}: {len(timeline.windows)} windows of {timeline.span} frames every "
        f"{timeline.stride} frames ({seconds:.3f} s) -> {args.output}"
    )
    print(f"{len(timeline.segments)} segment(s) above {timeline.threshold:g}:")
    for segment in timeline.segments:
        print(segment.describe())
    if plot is not None:
        print(f"plot: {plot_timeline(timeline, plot)}")
    return 0


def _input_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadOptionError(f"--option needs KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def stream_command(args: argparse.Namespace) -> int:
    """``r21d stream``: exit 0 when the source ended or went silent."""
    from r21d.infer.records import DEFAULT_TOP_K, json_line
    from r21d.infer.stream import StreamOptions, run_stream
    from r21d.outputs import output_file

    if args.output is not None:
        output_file(args.output, "-o")
    options = StreamOptions(
        stride_s=args.stride_s,
        smooth=args.smooth,
        threshold=args.threshold,
        top_k=DEFAULT_TOP_K if args.top_k is None else args.top_k,  # checked before the model
        idle_timeout=args.idle_timeout,
        reconnect=args.reconnect,
        input_format=args.input_format,
        input_options=_input_options(args.option),
        realtime=args.realtime,
        max_windows=args.max_windows,
    )
    _, backend = _backend(args, batch=1)
    options = dataclasses.replace(options, top_k=args.top_k)  # the model's classes bound it
    print(backend.describe(), file=sys.stderr)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    terminal = sys.stderr.isatty()

    def emit(record: dict) -> None:
        out.write(json_line(record))
        out.flush()

    def show(line: str) -> None:
        sys.stderr.write("\r" + line + "\x1b[K")
        sys.stderr.flush()

    try:
        summary = run_stream(args.source, backend, options, emit, show if terminal else None)
    finally:
        if terminal:
            sys.stderr.write("\n")
        if out is not sys.stdout:
            out.close()
    print(summary.describe(options.idle_timeout), file=sys.stderr)
    return 0
