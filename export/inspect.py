"""Read an exported ONNX model back: its spec, input format, precision and parity record.

Every reader (``r21d info``, the onnxruntime and TensorRT backends) goes through
:func:`load_onnx_info`, so a corrupted, truncated or foreign file fails the same clear way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from r21d.errors import BadModelFileError, InputNotFoundError
from r21d.export.fully_conv import INPUT_FORMATS
from r21d.export.onnx import INPUT_KEY, PARITY_KEY, PRECISION_KEY, PRECISIONS, format_parity
from r21d.spec import SPEC_KEY, ModelSpec, SpecError


class OnnxModelError(BadModelFileError):
    """A file that is not a usable r21d ONNX model."""


@dataclass
class OnnxInfo:
    """What an r21d ONNX file says about itself."""

    spec: ModelSpec
    input_format: str
    precision: str
    opset: int
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    parity: dict = field(default_factory=dict)


def load_onnx_info(path: str | Path) -> OnnxInfo:
    """Parse ``path`` (weights included, to catch truncation) and read the r21d metadata."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, checker ValidationError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxModelError(
            f"{path} is not a readable ONNX model (corrupted, truncated or another format): "
            f"{reason}"
        ) from None
    if not proto.graph.node:
        raise OnnxModelError(f"{path} holds no ONNX graph (empty or not an ONNX file)")
    meta = {p.key: p.value for p in proto.metadata_props}
    if SPEC_KEY not in meta:
        raise OnnxModelError(
            f"{path} has no {SPEC_KEY!r} metadata: it was not exported by r21d "
            "(export it with `r21d export onnx CHECKPOINT`)"
        )
    try:
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    except SpecError as e:
        raise OnnxModelError(f"{path}: bad {SPEC_KEY} metadata: {e}") from None
    input_format = meta.get(INPUT_KEY, "")
    if input_format not in INPUT_FORMATS:
        raise OnnxModelError(f"{path}: {INPUT_KEY} is {input_format!r}, not one of {INPUT_FORMATS}")
    precision = meta.get(PRECISION_KEY, "")
    if precision not in PRECISIONS:
        raise OnnxModelError(f"{path}: {PRECISION_KEY} is {precision!r}, not one of {PRECISIONS}")
    try:
        parity = json.loads(meta.get(PARITY_KEY, '{"validated": false, "reason": "no record"}'))
    except json.JSONDecodeError:
        raise OnnxModelError(f"{path}: {PARITY_KEY} metadata is not JSON") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        spec=spec,
        input_format=input_format,
        precision=precision,
        opset=opset,
        inputs=[_value_info(v) for v in proto.graph.input],
        outputs=[_value_info(v) for v in proto.graph.output],
        parity=parity,
    )


def load_onnx_spec(path: str | Path) -> ModelSpec:
    """The spec stored in an r21d ONNX file; :class:`OnnxModelError` for anything else."""
    return load_onnx_info(path).spec


def describe_onnx(path: str | Path) -> dict:
    """What ``r21d info model.onnx`` prints: spec, inputs/outputs, opset, format, parity."""
    path = Path(path)
    info = load_onnx_info(path)
    rows = info.parity.get("rows", [])
    return {
        "file": str(path),
        "kind": "onnx",
        "bytes": path.stat().st_size,
        "opset": info.opset,
        "input_format": info.input_format,
        "precision": info.precision,
        "validated": bool(info.parity.get("validated")),
        "max_probs_diff": max((r["probs_max_abs_diff"] for r in rows), default=None),
        "inputs": [_format_value(v) for v in info.inputs],
        "outputs": [_format_value(v) for v in info.outputs],
        "parity": format_parity(info.parity),
        "spec": json.loads(info.spec.to_json()),
    }


def _value_info(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
    }


def _format_value(value: dict) -> str:
    dims = ", ".join(str(d) for d in value["shape"])
    return f"{value['name']} {value['dtype']} [{dims}]"
