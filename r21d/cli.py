"""The ``r21d`` command: one entry point, one subcommand per job.

Core subcommands (convert, info) live here. Each job package registers its own through a
``register(subparsers)`` function named in the ``r21d.commands`` entry-point group of
``pyproject.toml``, so the core never imports the packages built on top of it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
from importlib.metadata import entry_points
from pathlib import Path

from r21d.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE_CLOSED, R21dError

COMMAND_GROUP = "r21d.commands"
"""Entry-point group of the subcommand registrars (``name = "module:register"``)."""


def _convert(args: argparse.Namespace) -> int:
    from r21d.checkpoint import save_checkpoint
    from r21d.importers import convert
    from r21d.outputs import output_file

    output = output_file(args.output, "-o", suffixes=(".safetensors",))  # before importing
    model, spec = convert(
        args.src, args.source_format, args.arch, args.clip_len, args.labels, args.label_map
    )
    out = save_checkpoint(model, spec, output)
    print(
        f"imported {args.src} ({args.source_format}) as {spec.name}, {spec.num_classes} classes, "
        f"clip {spec.clip_len} -> {out}"
    )
    return 0


def describe_checkpoint(path: Path) -> dict:
    """Family, spec, test protocol (views per video), parameter count and GFLOP per view (one
    clip at the crop size) of a checkpoint: what ``r21d info`` prints."""
    from r21d.checkpoint import load_checkpoint
    from r21d.flops import count_flops, count_parameters
    from r21d.models import family

    model, spec = load_checkpoint(path)
    shape = (1, 3, spec.clip_len, spec.crop_size, spec.crop_size)
    return {
        "file": str(path),
        "kind": "checkpoint",
        "family": family(spec),
        "views": f"{spec.views} ({spec.num_clips} clips x {spec.num_crops} crops)",
        "spec": json.loads(spec.to_json()),
        "parameters": count_parameters(model),
        "gflop_per_view": round(count_flops(model, shape) / 1e9, 3),
        "flop_input": list(shape),
    }


def _info(args: argparse.Namespace) -> int:
    from r21d.artefacts import describe_engine, describe_onnx, model_file

    path, kind = model_file(args.file)
    if kind == "onnx":
        info = describe_onnx(path)
    elif kind == "tensorrt":
        info = describe_engine(path)
    else:
        info = describe_checkpoint(path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_format_info(info))
    return 0


def _format_info(info: dict) -> str:
    spec = info.pop("spec")
    labels = spec.pop("labels")
    lines = [f"{k:>16}: {v}" for k, v in info.items() if not isinstance(v, (dict, list))]
    lines += [f"{k:>16}: {v}" for k, v in info.items() if isinstance(v, (dict, list))]
    lines.append("            spec:")
    lines += [f"{k:>16}  {v}" for k, v in spec.items()]
    shown = (
        "numeric (no class names)"
        if not labels
        else (f"{len(labels)}: {', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}")
    )
    lines.append(f"{'labels':>16}  {shown}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The full ``r21d`` argument parser."""
    from r21d.importers import FORMATS
    from r21d.models import model_names

    parser = argparse.ArgumentParser(
        prog="r21d",
        description="R(2+1)D action recognition faithful to the Caffe2 originals.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="import foreign weights into an r21d checkpoint")
    p.add_argument("src", help="weight file (.pkl Caffe2 blobs, .pth state dict, .ckpt I3D)")
    p.add_argument("--from", dest="source_format", required=True, choices=FORMATS)
    p.add_argument(
        "--arch",
        choices=model_names(),
        help="default: the format's usual model (VideoMAE V2: the size the shapes show)",
    )
    p.add_argument("--clip-len", type=int, help="clip length the weights were trained for")
    p.add_argument("--labels", help="'kinetics400' or a text file with one class name per line")
    p.add_argument(
        "--label-map",
        help="VideoMAE V2: JSON list of head rows to keep (label_710to400.json: K710 -> K400)",
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors checkpoint")
    p.set_defaults(func=_convert)

    p = sub.add_parser("info", help="spec, size and cost of a checkpoint, ONNX model or engine")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_info)

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by an in-memory stream, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    """Entry point: an :class:`~r21d.errors.R21dError` prints one line and exits with its
    code (see :mod:`r21d.errors`); anything else is a bug and keeps its traceback.

    A closed output pipe (``r21d info X | head -1``) is one line and
    :data:`~r21d.errors.EXIT_PIPE_CLOSED`; stdout then points at ``os.devnull`` so the
    interpreter's final flush cannot fail again.
    """
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args) or EXIT_OK
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except R21dError as e:
        print(f"r21d {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe (a worker's): a bug, with its traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        print(f"r21d {args.command}: error: output pipe closed", file=sys.stderr)
        return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
