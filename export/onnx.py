"""Checkpoint -> one self-contained, validated, fully-convolutional ONNX file.

:func:`export_onnx` exports :class:`~r21d.models.heads.FullyConvolutional` with
``torch.onnx.export(..., dynamo=True)`` (batch, time, height and width dynamic, the batch only
for ``fixed_input`` ViTs; BatchNorm folded into the convs by the exporter's optimiser), then
checks the file the way Hugging Face Optimum does: onnxruntime and the torch model run the same
random inputs at several shapes, and a parity table (max abs difference of the probabilities,
top-1 agreement) is printed, stored in the file and enforced.

The output path, the opset and the file size are checked before any work; the file is written
under a temporary name beside the output (:func:`r21d.outputs.atomic_file`) and renamed only
once validated, so a failure or Ctrl-C leaves nothing behind. The graph is serialised once:
the spec goes in before the write, the parity record is appended after validation.

Metadata written to ``metadata_props``: ``r21d.spec`` (the spec, head ``fully_conv``),
``r21d.input`` (``uint8`` or ``float``), ``r21d.precision`` (``fp32`` or ``fp16``),
``r21d.parity`` (the validation table as JSON).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from r21d.artefacts import INPUT_KEY, PARITY_KEY, PRECISION_KEY, format_parity
from r21d.artefacts import ONNX_PRECISIONS as PRECISIONS
from r21d.errors import BadOptionError, RuntimeUnavailableError, ValidationError
from r21d.models.heads import INPUT_FORMATS, FullyConvolutional, min_spatial_size
from r21d.outputs import atomic_file, output_file
from r21d.spec import SPEC_KEY, ModelSpec

INPUT_NAMES = {"uint8": "frames", "float": "clips"}
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
"""Largest max-abs difference of the probabilities allowed against the fp32 torch model.

fp16 keeps 11 significant bits: a full-size R(2+1)D-18 with peaky (random) logits measured
up to 3e-2 on onnxruntime CPU, so fp16 is a precision mode to report, not a free lunch."""
MIN_OPSET = 18
MAX_OPSET = 25
"""Opsets written: the dynamo exporter emits 18 and onnxscript's version converter (0.7)
converts it up to 25; each was exported and validated in onnxruntime 1.32."""
MAX_FILE_BYTES = 2**31 - 2**24
"""Weights beyond this do not fit one ONNX file (protobuf's 2 GiB limit, less room for the
graph): such a model is refused before any work rather than split into side files."""


class ParityError(ValidationError):
    """The exported graph does not reproduce the torch model within tolerance; ``parity`` is
    the table that shows it."""

    def __init__(self, message: str, parity: dict):
        super().__init__(message)
        self.parity = parity


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it validated."""

    path: Path
    spec: ModelSpec
    input_format: str
    precision: str
    opset: int
    parity: dict

    def table(self) -> str:
        """The parity table as text."""
        return format_parity(self.parity)


def default_parity_shapes(spec: ModelSpec) -> list[tuple[int, int, int, int]]:
    """(N, T, H, W) validation shapes: one clip at the crop size, and three clips of the full
    resized frame with twice the frames.

    For an 8-frame R(2+1)D: (1, 8, 112, 112), (3, 16, 128, 171). Every dynamic dim takes two
    values (batch, length, a square and a non-square frame), and the first shape has a
    smaller batch and length than the example the graph is traced with (:func:`_torch_export`).
    A ``fixed_input`` model (a ViT) takes one clip shape: batches of 1 and 3 of it.
    """
    if spec.fixed_input:
        return [(n, spec.clip_len, spec.crop_size, spec.crop_size) for n in (1, 3)]
    crop = max(spec.crop_size, min_spatial_size(spec))
    frame_h, frame_w = (max(s, crop) for s in spec.typical_frame())
    return [(1, spec.clip_len, crop, crop), (3, 2 * spec.clip_len, frame_h, frame_w)]


def check_opset(opset: int, name: str = "opset") -> int:
    """``opset`` if r21d can write it (:data:`MIN_OPSET` to :data:`MAX_OPSET`), else a
    :class:`BadOptionError` naming ``name`` (the CLI passes ``--opset``)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BadOptionError(
            f"{name} {opset} is not supported: r21d writes ONNX opsets {MIN_OPSET} to {MAX_OPSET}"
        )
    return opset


def check_output(path: str | Path, flag: str = "out_path") -> Path:
    """``path`` as an ``.onnx`` file that can be written (:func:`r21d.outputs.output_file`),
    else a :class:`BadOptionError` naming ``flag``."""
    return output_file(path, flag, suffixes=(".onnx",))


def export_onnx(
    source: str | Path | tuple[nn.Module, ModelSpec],
    out_path: str | Path,
    *,
    input_format: str = "uint8",
    precision: str = "fp32",
    logits_map: bool = False,
    validate: bool = True,
    opset: int = MIN_OPSET,
    parity_shapes: list[tuple[int, int, int, int]] | None = None,
) -> ExportReport:
    """Export a checkpoint (or a ``(model, spec)`` pair) to a validated ONNX file.

    ``input_format`` ``uint8``: input ``frames`` ``(N, T, H, W, 3)`` raw RGB, normalised
    in-graph; ``float``: input ``clips`` ``(N, 3, T, H, W)`` normalised. Outputs ``probs``,
    ``features`` (and ``logits_map`` when asked). ``precision="fp16"`` computes in fp16 between
    fp32 casts at the boundaries (inputs stay uint8/fp32, outputs fp32). With ``validate``
    (the default) the file is checked against the fp32 torch model at ``parity_shapes``
    (:func:`default_parity_shapes`) and not written (:class:`ParityError`) if the
    probabilities differ by more than :data:`TOLERANCE`.
    """
    if input_format not in INPUT_FORMATS:
        raise BadOptionError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if precision not in PRECISIONS:
        raise BadOptionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_opset(opset)
    out_path = check_output(out_path)
    model, spec = _load_source(source)
    reference = FullyConvolutional(model, spec, input_format, logits_map)
    exported = reference
    if precision == "fp16":
        exported = FullyConvolutional(copy.deepcopy(model).half(), spec, input_format, logits_map)
    _check_file_size(exported, precision)

    with atomic_file(out_path) as tmp:
        metadata = {
            SPEC_KEY: reference.spec.to_json(),
            INPUT_KEY: input_format,
            PRECISION_KEY: precision,
        }
        _write_graph(exported, spec, input_format, logits_map, opset, metadata, tmp)
        del exported  # an fp16 copy's weights are in the file now: free them for validation
        if validate:
            parity = validate_onnx(tmp, reference, precision, parity_shapes)
        else:
            parity = {"validated": False, "reason": "validation skipped (validate=False)"}
        _append_metadata(tmp, {PARITY_KEY: json.dumps(parity)})
    return ExportReport(out_path, reference.spec, input_format, precision, opset, parity)


def _load_source(source) -> tuple[nn.Module, ModelSpec]:
    if not isinstance(source, tuple):
        from r21d.checkpoint import load_checkpoint

        model, spec = load_checkpoint(source)
        return model.float().eval(), spec
    model, spec = source
    # A private fp32 CPU copy: the export never moves or casts the caller's model.
    return copy.deepcopy(model).float().cpu().eval(), spec


def _check_file_size(wrapper: FullyConvolutional, precision: str) -> None:
    size = sum(t.numel() * t.element_size() for t in wrapper.state_dict().values())
    if size > MAX_FILE_BYTES:
        hint = " (try --precision fp16)" if precision == "fp32" else ""
        raise BadOptionError(
            f"{wrapper.spec.name} has {size / 1e9:.2f} GB of {precision} weights: over the "
            f"{MAX_FILE_BYTES / 1e9:.2f} GB that one ONNX file holds{hint}"
        )


def _write_graph(
    wrapper: FullyConvolutional,
    spec: ModelSpec,
    input_format: str,
    logits_map: bool,
    opset: int,
    metadata: dict[str, str],
    path: Path,
) -> None:
    """Export ``wrapper`` and write it, weights inside and ``metadata`` set, to ``path``."""
    program = _torch_export(wrapper, spec, input_format, logits_map, opset)
    written = program.model.opset_imports.get("")
    if written != opset:
        import onnxscript

        raise RuntimeUnavailableError(
            f"onnxscript {onnxscript.__version__} could not convert the graph to opset {opset} "
            f"(it stays at {written}): upgrade onnxscript or export opset {written}"
        )
    proto = program.model_proto  # the one copy of the weights as protobuf
    del program
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    path.write_bytes(proto.SerializeToString())


def _append_metadata(path: Path, values: dict[str, str]) -> None:
    """Add ``metadata_props`` entries to a written ONNX file without rewriting it: protobuf
    concatenates a repeated field across serialised messages, so a ``ModelProto`` holding only
    these entries, appended to the file, parses as the model with them added."""
    extra = onnx.ModelProto()
    for key, value in values.items():
        extra.metadata_props.add(key=key, value=value)
    with path.open("ab") as f:
        f.write(extra.SerializeToString())


def _torch_export(
    wrapper: FullyConvolutional,
    spec: ModelSpec,
    input_format: str,
    logits_map: bool,
    opset: int,
) -> torch.onnx.ONNXProgram:
    """Run the dynamo exporter with batch, time, height and width dynamic; nothing is written.

    torch.export's fake tensors choose memory formats by asking whether a size is 1, and
    record the answer as a guard; an example that pools to a single position would pin every
    dim to it. So the example pools to at least 2 positions in every dim and the declared
    lower bounds keep it there. The ONNX graph itself has no such bound (its ops are
    shape-generic, as the parity check at 1 position proves); the real minimums are enforced
    by :func:`~r21d.models.heads.check_input_shape` from the spec.

    A ``fixed_input`` model (a ViT, whose position table fixes the token grid) gets a dynamic
    batch only: time, height and width stay at the spec's clip shape.
    """
    size = min_spatial_size(spec)
    t, h, w = 2 * spec.clip_len, size + 16, size + 32
    if spec.fixed_input:
        t, h, w = spec.clip_len, spec.crop_size, spec.crop_size
    if input_format == "uint8":
        example = torch.randint(0, 256, (2, t, h, w, 3), dtype=torch.uint8)
        t_axis, h_axis, w_axis = 1, 2, 3
    else:
        example = torch.randn(2, 3, t, h, w)
        t_axis, h_axis, w_axis = 2, 3, 4
    dim = torch.export.Dim
    dynamic = {
        "x": {
            0: dim("batch", min=2),
            t_axis: dim("time", min=spec.clip_len + 1),
            h_axis: dim("height", min=size + 1),
            w_axis: dim("width", min=size + 1),
        }
    }
    if spec.fixed_input:
        dynamic = {"x": {0: dim("batch", min=2)}}
    outputs = ["probs", "features"] + (["logits_map"] if logits_map else [])
    # The exporter logs that torchvision's ops are unavailable and torch warns about its own
    # internal deprecations: noise for an r21d user, silenced for this call only.
    # A failed opset conversion logs a traceback and keeps opset 18; _write_graph refuses it.
    loggers = [
        logging.getLogger(name)
        for name in ("torch.onnx._internal.exporter._registration", "onnxscript.version_converter")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=[INPUT_NAMES[input_format]],
                output_names=outputs,
                opset_version=opset,
                verbose=False,
            )
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def validate_onnx(
    path: str | Path,
    reference: FullyConvolutional,
    precision: str,
    shapes: list[tuple[int, int, int, int]] | None = None,
) -> dict:
    """Run ``path`` in onnxruntime (CPU) and ``reference`` in torch on the same random inputs.

    Returns the parity record stored in the file; raises :class:`ParityError` when the
    probabilities differ by more than :data:`TOLERANCE` for ``precision``.
    """
    import onnxruntime as ort

    shapes = shapes or default_parity_shapes(reference.spec)
    options = ort.SessionOptions()
    # Without the arena, memory a shape no longer needs goes back: a lower peak over the parity
    # shapes (benchmarks/export_cost.py measures the export's peak per phase).
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows = []
    # A progress bar on a terminal only (disable=None): no noise in logs and pipes.
    for n, t, h, w in tqdm(shapes, desc="onnxruntime parity", leave=False, disable=None):
        if reference.input_format == "uint8":
            x = rng.integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)
        else:
            x = rng.standard_normal((n, 3, t, h, w), dtype=np.float32)
        with torch.inference_mode():  # clip by clip: a third of the activation memory
            clips = [reference(c) for c in torch.from_numpy(x).split(1)]
            want = [torch.cat(outputs).numpy() for outputs in zip(*clips, strict=True)]
        got = session.run(None, {input_name: x})
        rows.append(
            {
                "shape": [n, t, h, w],
                "probs_max_abs_diff": float(np.abs(got[0] - want[0]).max()),
                "features_max_abs_diff": float(np.abs(got[1] - want[1]).max()),
                "top1_agreement": float((got[0].argmax(1) == want[0].argmax(1)).mean()),
            }
        )
    tolerance = TOLERANCE[precision]
    parity = {
        "validated": True,
        "reference": "torch fp32 FullyConvolutional",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "precision": precision,
        "tolerance": tolerance,
        "rows": rows,
    }
    worst = max(rows, key=lambda r: np.nan_to_num(r["probs_max_abs_diff"], nan=np.inf))
    if not worst["probs_max_abs_diff"] <= tolerance:  # also catches NaN
        shape = "x".join(map(str, worst["shape"]))
        raise ParityError(
            f"exported graph differs from torch by {worst['probs_max_abs_diff']:.3g} in "
            f"probabilities at {shape} (tolerance {tolerance:g} for {precision}); "
            "file not written",
            parity,
        )
    return parity
