"""Reading any r21d artefact back: its spec and what else it says about itself.

An artefact is a checkpoint (``.safetensors``: spec in the safetensors metadata), an ONNX
model (``.onnx``: spec, input format, precision and parity table in ``metadata_props``) or a
TensorRT engine (``.engine``/``.plan``: spec in the JSON record beside it, see
:mod:`r21d.export.tensorrt`). :func:`read_spec` reads the spec of any of them; every reader
(``r21d info``, the inference backends) goes through here, so a corrupted, truncated or
foreign file fails the same clear way, and nothing here needs TensorRT or an exporter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from r21d.errors import BadModelFileError, BadOptionError, InputNotFoundError
from r21d.spec import SPEC_KEY, ModelSpec, SpecError

INPUT_KEY = "r21d.input"
PRECISION_KEY = "r21d.precision"
PARITY_KEY = "r21d.parity"
ONNX_PRECISIONS = ("fp32", "fp16")
INPUT_FORMATS = ("uint8", "float")
"""``uint8``: raw RGB frames ``(N, T, H, W, 3)``; ``float``: normalised ``(N, 3, T, H, W)``."""
SUFFIX_KINDS = {
    ".safetensors": "checkpoint",
    ".onnx": "onnx",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}
"""What each artefact suffix holds."""
EXPECTED_FILES = "a .safetensors checkpoint, an .onnx model or a .engine/.plan TensorRT engine"
FOREIGN_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".bin")
"""Suffixes of foreign weight files, which ``r21d convert`` imports."""


def existing_file(path: str | Path) -> Path:
    """``path`` as an existing model file; a missing path or a folder is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise BadOptionError(f"{path} is a folder, not a model file (expected {EXPECTED_FILES})")
    if not path.exists():
        raise InputNotFoundError(f"model file {path} not found")
    return path


def artefact_kind(path: str | Path) -> str:
    """``checkpoint``, ``onnx`` or ``tensorrt`` from the file's suffix; a clear error otherwise."""
    path = Path(path)
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        hint = (
            ": foreign weights, import them with `r21d convert` first"
            if path.suffix.lower() in FOREIGN_SUFFIXES
            else ""
        )
        raise BadModelFileError(f"cannot tell what {path} is: expected {EXPECTED_FILES}{hint}")
    return kind


def model_file(path: str | Path) -> tuple[Path, str]:
    """An existing artefact and its kind (:func:`existing_file`, then :func:`artefact_kind`)."""
    path = existing_file(path)
    return path, artefact_kind(path)


def read_spec(path: str | Path) -> ModelSpec:
    """The spec inside any artefact (checkpoint, ONNX model or engine record)."""
    kind = artefact_kind(path)
    if kind == "checkpoint":
        from r21d.checkpoint import read_spec as read_checkpoint_spec

        return read_checkpoint_spec(path)
    if kind == "onnx":
        return load_onnx_info(path).spec
    return ModelSpec.from_dict(read_engine_record(path)["spec"])


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
    path = existing_file(path)
    import onnx

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
    if precision not in ONNX_PRECISIONS:
        raise OnnxModelError(
            f"{path}: {PRECISION_KEY} is {precision!r}, not one of {ONNX_PRECISIONS}"
        )
    try:
        parity = json.loads(meta.get(PARITY_KEY, '{"validated": false, "reason": "no record"}'))
    except json.JSONDecodeError:
        raise OnnxModelError(f"{path}: {PARITY_KEY} metadata is not JSON") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    info = OnnxInfo(
        spec=spec,
        input_format=input_format,
        precision=precision,
        opset=opset,
        inputs=[_value_info(v) for v in proto.graph.input],
        outputs=[_value_info(v) for v in proto.graph.output],
        parity=parity,
    )
    check_graph_matches_spec(info, path)
    return info


def check_graph_matches_spec(info: OnnxInfo, path: str | Path) -> None:
    """Refuse a graph whose declared input or class dimension is not what its r21d metadata
    says (metadata copied from another export): a :class:`OnnxModelError` naming both."""
    wrong = "the metadata does not belong to this graph"
    if len(info.inputs) == 1:
        dtype = info.inputs[0]["dtype"]
        if (dtype == "uint8") != (info.input_format == "uint8"):
            raise OnnxModelError(
                f"{path}: its graph takes {dtype} input but its {INPUT_KEY} metadata says "
                f"{info.input_format}: {wrong}"
            )
    probs = next((o for o in info.outputs if o["name"] == "probs"), None)
    if probs is None:
        names = [o["name"] for o in info.outputs]
        raise OnnxModelError(f"{path}: its graph has no 'probs' output (outputs {names})")
    classes = probs["shape"][-1] if len(probs["shape"]) == 2 else None
    if isinstance(classes, int) and classes not in (0, info.spec.num_classes):
        raise OnnxModelError(
            f"{path}: its graph outputs {classes} scores per clip but its r21d spec has "
            f"{spec_classes(info.spec)}: {wrong}"
        )


def spec_classes(spec: ModelSpec) -> str:
    """``5 labels`` (or ``5 classes`` for a spec without class names), for messages."""
    return f"{spec.num_classes} {'labels' if spec.labels else 'classes'}"


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


def _value_info(value) -> dict:
    import onnx

    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
    }


def _format_value(value: dict) -> str:
    dims = ", ".join(str(d) for d in value["shape"])
    return f"{value['name']} {value['dtype']} [{dims}]"


def format_parity(parity: dict) -> str:
    """A parity record (as stored under ``r21d.parity``) as a text table."""
    if not parity.get("validated"):
        return f"not validated: {parity.get('reason', 'unknown')}"
    lines = [
        f"parity vs {parity['reference']} on {parity['runtime']} "
        f"({parity['precision']}, tolerance {parity['tolerance']:g} on probs)",
        f"{'N x T x H x W':>18}  {'max|dprobs|':>11}  {'max|dfeat|':>10}  {'top-1 agree':>11}",
    ]
    for row in parity["rows"]:
        shape = "x".join(str(s) for s in row["shape"])
        lines.append(
            f"{shape:>18}  {row['probs_max_abs_diff']:>11.2e}  "
            f"{row['features_max_abs_diff']:>10.2e}  {row['top1_agreement']:>11.1%}"
        )
    return "\n".join(lines)


def record_path(engine_path: str | Path) -> Path:
    """Where the JSON record of an engine lives: ``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


class EngineError(BadModelFileError):
    """A TensorRT engine r21d cannot describe or use (missing or stale ``.json`` record)."""


def read_engine_record(engine_path: str | Path, verify: bool = True) -> dict:
    """The JSON record beside an engine, its spec validated (and, with ``verify``, its hash
    checked so a record left over from another build cannot describe this engine)."""
    engine_path = existing_file(engine_path)
    path = record_path(engine_path)
    if not path.is_file():
        raise EngineError(
            f"{engine_path} has no {path.name} beside it: r21d needs the spec that "
            "`r21d export trt` writes there"
        )
    try:
        record = json.loads(path.read_text())
        ModelSpec.from_dict(record["spec"])
    except (json.JSONDecodeError, KeyError, TypeError, SpecError) as e:
        raise EngineError(f"{path} is not a valid engine record: {e}") from None
    from r21d.checkpoint import file_sha256

    if verify and record.get("engine_sha256") != file_sha256(engine_path):
        raise EngineError(f"{path.name} was written for a different build of {engine_path.name}")
    return record


def describe_engine(path: str | Path) -> dict:
    """What ``r21d info model.engine`` prints (no TensorRT needed)."""
    path = Path(path)
    record = read_engine_record(path)
    flat = {k: v for k, v in record.items() if k not in ("spec", "profile")}
    profile = {k: "x".join(map(str, v)) for k, v in record["profile"].items()}
    return {
        "file": str(path),
        "kind": "tensorrt engine",
        "bytes": path.stat().st_size,
        **flat,
        "profile_NxTxHxW": profile,
        "spec": record["spec"],
    }
