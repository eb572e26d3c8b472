"""Checkpoint -> one self-contained, validated, fully-convolutional ONNX file.

:func:`export_onnx` exports :class:`~r21d.models.heads.FullyConvolutional` with
``torch.onnx.export(..., dynamo=True)`` (batch, time, height and width dynamic, the batch only
for ``fixed_input`` ViTs; BatchNorm folded into the convs by the exporter's optimiser), then
checks the file the way Hugging Face Optimum does: onnxruntime and the torch model run the same
random inputs at several shapes, and a parity table (max abs difference of the probabilities,
top-1 agreement) is printed, stored in the file and enforced. A file that fails is deleted,
never left behind.

Metadata written to ``metadata_props``: ``r21d.spec`` (the spec, head ``fully_conv``),
``r21d.input`` (``uint8`` or ``float``), ``r21d.precision`` (``fp32`` or ``fp16``),
``r21d.parity`` (the validation table as JSON).
"""

from __future__ import annotations

import copy
import json
import logging
import os
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
from r21d.errors import BadOptionError, ValidationError
from r21d.models.heads import INPUT_FORMATS, FullyConvolutional, min_spatial_size
from r21d.spec import SPEC_KEY, ModelSpec

INPUT_NAMES = {"uint8": "frames", "float": "clips"}
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
"""Largest max-abs difference of the probabilities allowed against the fp32 torch model.

fp16 keeps 11 significant bits: a full-size R(2+1)D-18 with peaky (random) logits measured
up to 3e-2 on onnxruntime CPU, so fp16 is a precision mode to report, not a free lunch."""
MIN_OPSET = 18


class ParityError(ValidationError):
    """The exported graph does not reproduce the torch model within tolerance."""


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
    """(N, T, H, W) validation shapes: one clip at the crop size, the full resized frame with
    twice the frames, and four times the frames at the crop size.

    For an 8-frame R(2+1)D: (1, 8, 112, 112), (3, 16, 128, 171), (2, 32, 112, 112).
    A ``fixed_input`` model (a ViT) takes one clip shape: batches of 1 and 3 of it.
    """
    if spec.fixed_input:
        return [(n, spec.clip_len, spec.crop_size, spec.crop_size) for n in (1, 3)]
    crop = max(spec.crop_size, min_spatial_size(spec))
    frame_h, frame_w = (max(s, crop) for s in spec.typical_frame())
    clip = spec.clip_len
    return [(1, clip, crop, crop), (3, 2 * clip, frame_h, frame_w), (2, 4 * clip, crop, crop)]


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
    (:func:`default_parity_shapes`) and deleted with :class:`ParityError` if the probabilities
    differ by more than :data:`TOLERANCE`.
    """
    if input_format not in INPUT_FORMATS:
        raise BadOptionError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if precision not in PRECISIONS:
        raise BadOptionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if opset < MIN_OPSET:
        raise BadOptionError(f"opset {opset} is too old: the dynamo exporter needs {MIN_OPSET}+")
    model, spec = _load_source(source)
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise BadOptionError(f"output must be a .onnx file, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp.onnx")

    reference = FullyConvolutional(model, spec, input_format, logits_map)
    exported = reference
    if precision == "fp16":
        exported = FullyConvolutional(copy.deepcopy(model).half(), spec, input_format, logits_map)
    try:
        _torch_export(exported, spec, input_format, logits_map, opset, tmp)
        if validate:
            parity = validate_onnx(tmp, reference, precision, parity_shapes)
        else:
            parity = {"validated": False, "reason": "validation skipped (validate=False)"}
        proto = onnx.load(str(tmp))
        _set_metadata(
            proto,
            {
                SPEC_KEY: reference.spec.to_json(),
                INPUT_KEY: input_format,
                PRECISION_KEY: precision,
                PARITY_KEY: json.dumps(parity),
            },
        )
        onnx.save(proto, str(tmp))  # < 2 GB: weights stay inside the one file
        _require_single_file(tmp)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".data").unlink(missing_ok=True)
    return ExportReport(out_path, reference.spec, input_format, precision, opset, parity)


def _load_source(source) -> tuple[nn.Module, ModelSpec]:
    if isinstance(source, tuple):
        model, spec = source
    else:
        from r21d.checkpoint import load_checkpoint

        model, spec = load_checkpoint(source)
    # A private fp32 CPU copy: the export never moves or casts the caller's model.
    return copy.deepcopy(model).float().cpu().eval(), spec


def _torch_export(
    wrapper: FullyConvolutional,
    spec: ModelSpec,
    input_format: str,
    logits_map: bool,
    opset: int,
    path: Path,
) -> None:
    """Run the dynamo exporter with batch, time, height and width dynamic.

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
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=[INPUT_NAMES[input_format]],
                output_names=outputs,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    finally:
        registration.setLevel(level)


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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows = []
    for n, t, h, w in tqdm(shapes, desc="onnxruntime parity", leave=False):
        if reference.input_format == "uint8":
            x = rng.integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)
        else:
            x = rng.standard_normal((n, 3, t, h, w), dtype=np.float32)
        with torch.inference_mode():
            want = [o.numpy() for o in reference(torch.from_numpy(x))]
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
    worst = max(r["probs_max_abs_diff"] for r in rows)
    if not worst <= tolerance:  # also catches NaN
        raise ParityError(
            f"exported graph differs from torch by {worst:.3g} in probabilities "
            f"(tolerance {tolerance:g} for {precision}); file not written\n" + format_parity(parity)
        )
    return parity


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def _require_single_file(path: Path) -> None:
    """Refuse to finish with weights in a side ``.data`` file (the dynamo default)."""
    proto = onnx.load(str(path), load_external_data=False)
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external or os.path.exists(str(path) + ".data"):
        raise RuntimeError(f"export left weights outside {path.name}: {external[:3]}")
