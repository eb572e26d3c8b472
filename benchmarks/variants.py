"""Backend variants (backend x precision x memory format) and opening them on a model.

A variant is a :class:`~r21d.infer.runtime.RuntimeOptions`, written ``backend:precision[:cl]``
on the command line, e.g. ``torch:bf16:cl`` (PyTorch, bfloat16, channels_last_3d) or
``onnxruntime:fp32`` (:meth:`~r21d.infer.runtime.RuntimeOptions.parse`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from r21d.benchmarks.ceiling import precision_supported
from r21d.benchmarks.models import BenchModel
from r21d.errors import BadOptionError
from r21d.infer.runtime import RuntimeOptions

Variant = RuntimeOptions
"""A benchmark variant is a set of runtime options; its ``label`` is ``backend:precision[:cl]``."""


def variant_of(backend: str, precision: str, channels_last: bool = False) -> RuntimeOptions:
    """The runtime options of one variant (device, threads and batch size are set per run)."""
    return RuntimeOptions(backend=backend, precision=precision, channels_last=channels_last)


REFERENCE = variant_of("torch", "fp32")
"""Torch fp32 eager, the variant every ratio is taken against."""


def parse_variants(text: str) -> list[Variant]:
    """Comma-separated variants; the reference (torch:fp32) is always included, first."""
    variants = [RuntimeOptions.parse(t) for t in text.split(",") if t.strip()]
    return [REFERENCE] + [v for v in dict.fromkeys(variants) if v != REFERENCE]


def default_variants(device: str) -> list[Variant]:
    """Every variant worth timing on ``device``, dropping what it cannot run."""
    candidates = [
        REFERENCE,
        variant_of("torch", "fp32", True),
        variant_of("torch", "bf16", True),
        variant_of("torch", "fp16", True),
        variant_of("onnxruntime", "fp32"),
        variant_of("openvino", "fp32"),
        variant_of("openvino", "bf16"),
    ]
    if device.startswith("cuda"):
        candidates += [variant_of("onnxruntime", "fp16"), variant_of("tensorrt", "fp16")]
    return [v for v in candidates if variant_available(v, device)[0]]


def variant_available(variant: Variant, device: str) -> tuple[bool, str]:
    """(True, "") or (False, why not) for running ``variant`` on ``device``."""
    if not precision_supported(variant.precision, device):
        return False, f"{device} has no native {variant.precision}"
    if variant.backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed"
        if device.startswith("cuda"):
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return False, "onnxruntime has no CUDAExecutionProvider here"
    if variant.backend == "openvino":
        if device != "cpu":
            return False, "the openvino backend runs on the CPU"
        if importlib.util.find_spec("openvino") is None:
            return False, "openvino is not installed (pip install r21d[openvino])"
    if variant.backend == "tensorrt":
        if not device.startswith("cuda"):
            return False, "TensorRT needs a CUDA device"
        if importlib.util.find_spec("tensorrt") is None:
            return False, "tensorrt is not installed"
    return True, ""


def open_variant(model: BenchModel, variant: Variant, device: str):
    """An inference backend for ``model`` as ``variant`` describes; ``.run(uint8 frames
    (N, T, H, W, 3)) -> (probs, features)``.

    onnxruntime, OpenVINO and TensorRT need an exported graph: it is built on first use into an
    ``exports`` folder beside the checkpoint and reused while newer than the checkpoint.
    OpenVINO reads the fp32 graph and computes in the variant's precision.
    """
    path = model.checkpoint
    if variant.backend in ("onnxruntime", "tensorrt"):
        path = exported_onnx(model, variant.precision)
    if variant.backend == "openvino":
        path = exported_onnx(model, "fp32")
    if variant.backend == "tensorrt":
        path = built_engine(path, variant.precision)
    return variant.replace(device=device).open(path)


def _fresh(artefact: Path, source: Path) -> bool:
    return artefact.is_file() and artefact.stat().st_mtime >= source.stat().st_mtime


def exported_onnx(model: BenchModel, precision: str) -> Path:
    """The model's uint8-input ONNX graph in ``precision`` (exported once, then cached).

    Export-time validation is skipped: numerical agreement is what ``r21d bench parity``
    measures, on real clips.
    """
    from r21d.export.onnx import export_onnx

    if precision == "bf16":
        raise BadOptionError("no bf16 ONNX graphs: onnxruntime runs fp32 or fp16 graphs")
    out = model.checkpoint.parent / "exports" / f"{model.checkpoint.stem}.{precision}.onnx"
    if not _fresh(out, model.checkpoint):
        export_onnx(model.checkpoint, out, precision=precision, validate=False)
    return out


def built_engine(onnx_path: Path, precision: str) -> Path:
    """A TensorRT engine for ``onnx_path`` (built once with the default optimisation profile
    and a timing cache, then reused while newer than the graph)."""
    from r21d.export.tensorrt import build_engine

    engine = onnx_path.with_suffix(".engine")
    if not _fresh(engine, onnx_path):
        cache = onnx_path.parent / "tensorrt.timing-cache"
        build_engine(onnx_path, engine, precision=precision, timing_cache=cache)
    return engine
