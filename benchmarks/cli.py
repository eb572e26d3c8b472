"""``r21d bench``: run the benchmarks and write their reports (see benchmarks/README.md).

r21d bench all [--quick] [--device cuda] [--out DIR]     every benchmark, one index
r21d bench model [--variants ...] [--batch-sizes ...]      latency and throughput
r21d bench pipeline [--model M] [--variant V]              engine against the model alone
r21d bench baseline [--model M] [--videos ...]             r21d score against the ports' way
r21d bench parity [--model M] [--variants ...]             backends/precisions vs torch fp32
r21d bench accuracy --manifest labels.csv --model M        accuracy per protocol choice
r21d bench stream [--model M] [--variants ...]             live latency, windows/s
r21d bench ray [--model M] [--decode-cpus 1,0.5]             Ray on one machine vs local
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r21d.infer.runtime import RuntimeOptions


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``112x112,128x171`` -> ((112, 112), (128, 171))."""
    try:
        return tuple(
            (int(h), int(w)) for h, w in (part.lower().split("x") for part in text.split(","))
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW[,HxW...], got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4; got {text!r}") from None


def _model_names(text: str) -> list[tuple[str, int]]:
    """``r2plus1d_18:8,r2plus1d_34:32`` -> [(name, clip_len), ...]."""
    out = []
    for part in text.split(","):
        name, _, clip = part.partition(":")
        if not clip.isdigit():
            raise argparse.ArgumentTypeError(f"expected NAME:CLIP_LEN, got {part!r}")
        out.append((name, int(clip)))
    return out


def _common(p: argparse.ArgumentParser) -> None:
    from r21d.infer.runtime import add_runtime_arguments

    add_runtime_arguments(p)
    p.add_argument(
        "--out",
        type=Path,
        help="results folder (default benchmarks/results, or benchmarks/results/gpu-<device>; "
        "a quick/ subfolder of it with --quick)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="built models and synthetic videos (default $R21D_BENCH_CACHE or ~/.cache/r21d/bench)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, tiny videos, 1-2 repeats: checks the benchmark runs",
    )


def _device(args) -> str:
    """The device to benchmark on (``auto`` resolved); ``--threads`` applied to torch."""
    from r21d.infer.runtime import parse_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return parse_device(args.device)


def _variant_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variant",
        help="backend:precision[:cl], short for --backend --precision [--channels-last] "
        "(default torch:fp32, or what those options say)",
    )


def _variant(args) -> RuntimeOptions:
    """The variant the runtime options (or ``--variant``) name; torch fp32 by default."""
    from r21d.infer.runtime import RuntimeOptions, runtime_from_args

    if args.variant:
        return RuntimeOptions.parse(args.variant)
    backend = "torch" if args.backend == "auto" else args.backend
    runtime = runtime_from_args(args, backend=backend, precision=args.precision or "fp32")
    return runtime.replace(channels_last=bool(runtime.channels_last))


def _model_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--model", type=Path, help=f"checkpoint to use (default: {what})")


def _videos_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--videos",
        nargs="+",
        type=Path,
        help="videos to use (default: the real clips in ../shared/videos and a "
        "synthetic 10-second video)",
    )


def register(subparsers) -> None:
    """Add ``r21d bench`` and its subcommands."""
    from r21d.benchmarks.run_all import BENCHMARKS

    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: speed, pipeline, baseline, parity, accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    p = sub.add_parser("all", help="every benchmark, reports and an index.md in one folder")
    _common(p)
    p.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)}",
    )
    p.set_defaults(func=_all)

    p = sub.add_parser("index", help="rewrite index.md from the reports already in a folder")
    p.add_argument("--device", default="cpu", help="the device the reports are from")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    p.set_defaults(func=_index)

    p = sub.add_parser("model", help="latency/throughput per backend, precision and shape")
    _common(p)
    p.add_argument(
        "--models",
        type=_model_names,
        help="NAME:CLIP_LEN list of random-weight models (default: r2plus1d_18 and "
        "r2plus1d_34 at 8 and 32 frames)",
    )
    p.add_argument(
        "--checkpoint", type=Path, action="append", help="time this checkpoint instead (repeatable)"
    )
    p.add_argument(
        "--variants",
        help="backend:precision[:cl] list, e.g. "
        "torch:fp32:cl,torch:bf16:cl,onnxruntime:fp32 (default: all that run here)",
    )
    p.add_argument(
        "--peers",
        help="peer list, e.g. openvino:fp32,openvino:bf16, or none (default: every peer that "
        "runs here; none when --variants is given)",
    )
    p.add_argument(
        "--isolation",
        help="shared (all in this process), separate (each in its own) or shared,separate "
        "(default: both on a full run, shared with --quick)",
    )
    p.add_argument(
        "--batch-sizes", type=_ints, help="e.g. 1,4 (first: all models; rest: the first model only)"
    )
    p.add_argument("--frame-sizes", type=_sizes, help="e.g. 112x112,128x171")
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--max-seconds", type=float, help="stop repeating a config after this long")
    p.set_defaults(func=_model)

    p = sub.add_parser("pipeline", help="engine videos/s against the model alone; decoding")
    _common(p)
    _model_arg(p, "R(2+1)D-18 8 frames, random weights")
    _videos_arg(p)
    _variant_arg(p)
    p.add_argument("--repeats", type=int)
    p.add_argument("--long-seconds", type=float, help="length of the long video (default 600)")
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("baseline", help="r21d score against the public ports' pipeline")
    _common(p)
    _model_arg(p, "R(2+1)D-18 8 frames, random weights")
    _videos_arg(p)
    p.add_argument("--variants", help="engine variants (default torch:fp32 and the fastest)")
    p.add_argument("--repeats", type=int, help="timed passes over all videos (default 3)")
    p.set_defaults(func=_baseline)

    p = sub.add_parser("parity", help="every backend/precision against torch fp32")
    _common(p)
    _model_arg(p, "the downloaded Kinetics-400 I3D, else R(2+1)D-18 8 frames random")
    _videos_arg(p)
    p.add_argument("--variants", help="variants to compare (default: all that exist here)")
    p.set_defaults(func=_parity)

    p = sub.add_parser("accuracy", help="top-1/top-5 per clips, resize and head")
    _common(p)
    p.add_argument("--manifest", type=Path, required=True, help="CSV of path,label rows")
    p.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    _variant_arg(p)
    p.set_defaults(func=_accuracy)

    p = sub.add_parser("ray", help="Ray engine on a local cluster against the local engine")
    _common(p)
    _model_arg(p, "R(2+1)D-18 8 frames, random weights")
    _videos_arg(p)
    p.add_argument("--decode-cpus", help="CPUs per decode task to compare, e.g. 1,0.5,0.25")
    p.add_argument("--clips", type=int, help="clips per video (default 10)")
    p.add_argument("--num-videos", type=int, help="videos per run (default 8)")
    p.set_defaults(func=_ray)

    p = sub.add_parser("stream", help="r21d stream: live latency and windows/s per backend")
    _common(p)
    _model_arg(p, "R(2+1)D-18 8 frames, random weights")
    p.add_argument("--video", type=Path, help="source video (default: a synthetic 10 s one)")
    p.add_argument(
        "--variants",
        help="backend:precision[:cl] list (default torch:fp32,torch:bf16:cl,onnxruntime:fp32)",
    )
    p.add_argument("--stride-s", type=float, help="seconds between windows (default: half one)")
    p.set_defaults(func=_stream)


def _suite(args):
    """(suite, results folder, machine info taken now, before the benchmark starts)."""
    from r21d.benchmarks.machine import machine_info
    from r21d.benchmarks.models import DEFAULT_CACHE
    from r21d.benchmarks.run_all import Suite, default_out

    device = _device(args)
    suite = Suite(device, args.cache_dir or DEFAULT_CACHE, args.quick)
    out = args.out or default_out(device, args.quick)
    return suite, out, machine_info()


def _real(path):
    from r21d.benchmarks.models import real_model

    return None if path is None else real_model(path)


def _all(args) -> int:
    from r21d.benchmarks.models import DEFAULT_CACHE
    from r21d.benchmarks.run_all import run_all

    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    return run_all(
        args.out,
        device=_device(args),
        quick=args.quick,
        cache_dir=args.cache_dir or DEFAULT_CACHE,
        only=only,
    )


def _index(args) -> int:
    from r21d.benchmarks.run_all import default_out, rewrite_index

    print(rewrite_index(args.out or default_out(args.device), args.device))
    return 0


def _model(args) -> int:
    from r21d.benchmarks.models import random_checkpoint, real_model
    from r21d.benchmarks.peers import parse_peers
    from r21d.benchmarks.run_all import bench_model, publish
    from r21d.benchmarks.variants import parse_variants

    suite, out, machine = _suite(args)
    settings = suite.model_settings()
    if args.variants:
        settings.variants = parse_variants(args.variants)
        settings.peers = []
    if args.peers:
        settings.peers = parse_peers(args.peers)
    if args.isolation:
        settings.isolation = tuple(x.strip() for x in args.isolation.split(",") if x.strip())
    for name in ("batch_sizes", "frame_sizes", "warmup", "repeats", "max_seconds"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.checkpoint:
        models = [real_model(p) for p in args.checkpoint]
    elif args.models:
        models = [random_checkpoint(n, c, suite.cache_dir) for n, c in args.models]
    else:
        models = None
    publish(bench_model(suite, out, models, settings), out, machine)
    return 0


def _pipeline(args) -> int:
    from r21d.benchmarks.run_all import bench_pipeline, publish

    suite, out, machine = _suite(args)
    settings = suite.pipeline_settings()
    settings.variant = _variant(args)
    for name in ("workers", "batch_size", "repeats", "long_seconds"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    publish(bench_pipeline(suite, out, _real(args.model), settings, args.videos), out, machine)
    return 0


def _baseline(args) -> int:
    from r21d.benchmarks.run_all import bench_baseline, publish
    from r21d.benchmarks.variants import parse_variants

    suite, out, machine = _suite(args)
    settings = suite.baseline_settings()
    if args.variants:
        settings.variants = parse_variants(args.variants)
    if args.repeats is not None:
        settings.repeats = args.repeats
    publish(bench_baseline(suite, out, _real(args.model), settings, args.videos), out, machine)
    return 0


def _parity(args) -> int:
    from r21d.benchmarks.run_all import bench_parity, publish
    from r21d.benchmarks.variants import REFERENCE, parse_variants

    suite, out, machine = _suite(args)
    settings = suite.parity_settings()
    if args.variants:
        settings.variants = [v for v in parse_variants(args.variants) if v != REFERENCE]
    publish(bench_parity(suite, out, _real(args.model), settings, args.videos), out, machine)
    return 0


def _accuracy(args) -> int:
    from r21d.benchmarks.run_all import bench_accuracy, publish

    suite, out, machine = _suite(args)
    settings = suite.accuracy_settings()
    settings.variant = _variant(args)
    publish(bench_accuracy(suite, out, _real(args.model), args.manifest, settings), out, machine)
    return 0


def _ray(args) -> int:
    from r21d.benchmarks.run_all import bench_ray, publish
    from r21d.errors import BadOptionError

    suite, out, machine = _suite(args)
    settings = suite.ray_settings()
    if args.decode_cpus:
        try:
            settings.decode_cpus = tuple(float(x) for x in args.decode_cpus.split(","))
        except ValueError:
            text = args.decode_cpus
            raise BadOptionError(f"--decode-cpus: expected CPUs like 1,0.5; got {text!r}") from None
    if args.clips is not None:
        settings.num_clips = args.clips
    if args.num_videos is not None:
        settings.videos = args.num_videos
    publish(bench_ray(suite, out, _real(args.model), settings, args.videos), out, machine)
    return 0


def _stream(args) -> int:
    from r21d.benchmarks.run_all import bench_stream, publish
    from r21d.benchmarks.stream_bench import StreamSettings
    from r21d.infer.runtime import RuntimeOptions

    suite, out, machine = _suite(args)
    settings = StreamSettings(suite.device, stride_s=args.stride_s, threads=args.threads)
    if args.variants:
        settings.variants = [RuntimeOptions.parse(v) for v in args.variants.split(",") if v]
    report = bench_stream(suite, out, _real(args.model), settings, args.video)
    publish(report, out, machine)
    return 0
