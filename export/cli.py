"""``r21d export onnx`` and ``r21d export trt``: the export job on the command line."""

from __future__ import annotations

import argparse
import json

from r21d.artefacts import INPUT_FORMATS, format_parity
from r21d.export.onnx import MAX_OPSET, MIN_OPSET, PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export onnx`` and ``export trt`` to the ``r21d`` command."""
    from r21d.export.tensorrt import parse_shape

    export = subparsers.add_parser("export", help="export a checkpoint to ONNX or TensorRT")
    sub = export.add_subparsers(dest="target", required=True, metavar="TARGET")

    p = sub.add_parser("onnx", help="checkpoint -> validated fully-convolutional ONNX file")
    p.add_argument("checkpoint", help="r21d .safetensors checkpoint")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument(
        "--input",
        dest="input_format",
        choices=INPUT_FORMATS,
        default="uint8",
        help="uint8: raw RGB frames NTHWC, normalised in the graph (default); "
        "float: normalised clips NCTHW",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--logits-map", action="store_true", help="also output per-position logits")
    p.add_argument(
        "--opset", type=int, default=MIN_OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}"
    )
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime parity check")
    p.set_defaults(func=_export_onnx)

    p = sub.add_parser("trt", help="r21d ONNX file -> TensorRT engine (+ .json record)")
    p.add_argument("onnx", help="an .onnx file written by `r21d export onnx`")
    p.add_argument("-o", "--output", required=True, help="output .engine (or .plan) file")
    p.add_argument("--precision", choices=PRECISIONS, help="default: the ONNX graph's")
    for name in ("min", "opt", "max"):
        p.add_argument(f"--{name}-shape", type=parse_shape, metavar="NxTxHxW", help="profile shape")
    p.add_argument("--timing-cache", help="timing cache file (read if present, then written)")
    p.add_argument(
        "--version-compatible",
        action="store_true",
        help="engine that later TensorRT versions can run",
    )
    p.add_argument("--workspace-gib", type=float, help="builder workspace limit in GiB")
    p.set_defaults(func=_export_trt)


def _export_onnx(args: argparse.Namespace) -> int:
    from r21d.export.onnx import ParityError, check_opset, check_output, export_onnx

    # The options the user typed are checked, and named, before minutes of export work.
    check_opset(args.opset, "--opset")
    check_output(args.output, "-o")
    try:
        report = export_onnx(
            args.checkpoint,
            args.output,
            input_format=args.input_format,
            precision=args.precision,
            logits_map=args.logits_map,
            validate=not args.no_validate,
            opset=args.opset,
        )
    except ParityError as e:
        print(format_parity(e.parity))  # the table that failed; the error line goes to stderr
        raise
    print(report.table())
    print(
        f"wrote {report.path} ({report.spec.name}, {report.precision}, input "
        f"{report.input_format}, opset {report.opset})"
    )
    return 0


def _export_trt(args: argparse.Namespace) -> int:
    from r21d.export.tensorrt import build_engine, check_outputs, record_path

    check_outputs(args.output, args.timing_cache, "-o", "--timing-cache")
    record = build_engine(
        args.onnx,
        args.output,
        precision=args.precision,
        min_shape=args.min_shape,
        opt_shape=args.opt_shape,
        max_shape=args.max_shape,
        timing_cache=args.timing_cache,
        version_compatible=args.version_compatible,
        workspace_gib=args.workspace_gib,
    )
    print(json.dumps(record["profile"]))
    print(
        f"wrote {args.output} (TensorRT {record['tensorrt_version']}, {record['precision']}) "
        f"and {record_path(args.output)}"
    )
    return 0
