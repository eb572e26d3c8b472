"""r21d ONNX model -> TensorRT engine, with the spec in a JSON file beside it.

A thin layer over the documented TensorRT Python API (``tensorrt`` is imported only inside
these functions; it is not installable on every machine):

* one optimisation profile (min/opt/max input shape) for the dynamic batch, time, height and
  width, defaulting from the spec;
* precision: TensorRT 11 builds strongly typed networks only, so an FP16 engine comes from an
  FP16 ONNX graph (``r21d export onnx --precision fp16``); TensorRT 10 can also build FP16 from
  an FP32 graph with the ``FP16`` builder flag;
* a timing cache file, read before and written after the build, so rebuilds are fast;
* ``version_compatible`` engines (``BuilderFlag.VERSION_COMPATIBLE``) run on later TensorRT
  versions; other engines only on the version that built them.

``<engine>.json`` records the spec, the input name, format and profile, the precision, the
TensorRT version and the engine's SHA-256, so :func:`describe_engine` and the inference engine
need no TensorRT to know what an engine is.

The engine, its record and the timing cache are checked as outputs before the build starts and
written atomically (:mod:`r21d.outputs`): a failed or interrupted build leaves no partial file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from r21d.artefacts import ONNX_PRECISIONS as PRECISIONS
from r21d.artefacts import SUFFIX_KINDS, load_onnx_info, record_path
from r21d.checkpoint import file_sha256
from r21d.errors import (
    BadModelFileError,
    BadOptionError,
    RuntimeUnavailableError,
)
from r21d.models.heads import check_input_shape, min_spatial_size
from r21d.optional import import_optional
from r21d.outputs import atomic_file, output_file
from r21d.spec import ModelSpec

Shape = tuple[int, int, int, int]
"""(N, T, H, W): batch, frames, height, width, whatever the input layout."""
ENGINE_SUFFIXES = tuple(s for s, kind in SUFFIX_KINDS.items() if kind == "tensorrt")
"""What an engine file may be called: the suffixes r21d reads as TensorRT engines."""


def default_profile(spec: ModelSpec) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) shapes: batch 1/8/32, time clip_len/clip_len/4*clip_len, frames from
    the crop size up to the resized frame (16:9 at most for short-edge resizing). A
    ``fixed_input`` model (a ViT) varies the batch only."""
    if spec.fixed_input:
        clip = (spec.clip_len, spec.crop_size, spec.crop_size)
        return (1, *clip), (8, *clip), (32, *clip)
    crop = max(spec.crop_size, min_spatial_size(spec))
    opt_hw = max_hw = tuple(max(s, crop) for s in spec.typical_frame())
    if spec.resize_mode == "short_edge":
        max_hw = (opt_hw[0], round(opt_hw[0] * 16 / 9))
    clip = spec.clip_len
    return (1, clip, crop, crop), (8, clip, *opt_hw), (32, 4 * clip, *max_hw)


def parse_shape(text: str) -> Shape:
    """``"8x16x128x171"`` -> (8, 16, 128, 171)."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise BadOptionError(f"shape must be NxTxHxW with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def check_outputs(
    engine_path: str | Path,
    timing_cache: str | Path | None = None,
    engine_flag: str = "engine_path",
    cache_flag: str = "timing_cache",
) -> Path:
    """``engine_path`` (a ``.engine``/``.plan`` file), the record beside it and the timing
    cache as files that can be written (:func:`r21d.outputs.output_file`), else a
    :class:`BadOptionError` naming the flag."""
    engine_path = output_file(engine_path, engine_flag, suffixes=ENGINE_SUFFIXES)
    output_file(record_path(engine_path), engine_flag)
    if timing_cache is not None:
        output_file(timing_cache, cache_flag)
    return engine_path


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str | None = None,
    min_shape: Shape | None = None,
    opt_shape: Shape | None = None,
    max_shape: Shape | None = None,
    timing_cache: str | Path | None = None,
    version_compatible: bool = False,
    workspace_gib: float | None = None,
) -> dict:
    """Build a TensorRT engine from an r21d ONNX file; returns the record written beside it.

    ``precision`` defaults to the ONNX graph's. Shapes are ``(N, T, H, W)`` and default to
    :func:`default_profile`; each is checked against the spec before TensorRT starts.
    """
    engine_path = check_outputs(engine_path, timing_cache)
    info = load_onnx_info(onnx_path)
    spec = info.spec
    precision = precision or info.precision
    if precision not in PRECISIONS:
        raise BadOptionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" and info.precision == "fp16":
        raise BadOptionError(f"{onnx_path} is an FP16 graph; export an FP32 one for an FP32 engine")
    shapes = _profile(spec, info.input_format, min_shape, opt_shape, max_shape)

    trt = import_optional("tensorrt")
    major = int(trt.__version__.split(".")[0])
    strongly_typed = info.precision == "fp16" or major >= 11
    if precision == "fp16" and info.precision == "fp32" and major >= 11:
        raise BadOptionError(
            f"TensorRT {trt.__version__} builds strongly typed networks only: an FP16 engine "
            "needs an FP16 graph (r21d export onnx --precision fp16), not the FP32 "
            f"{Path(onnx_path).name}"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # TensorRT 11: every network is strongly typed, no flag needed
    if strongly_typed and major < 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BadModelFileError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision == "fp16" and not strongly_typed:  # TensorRT 10 weak typing
        config.set_flag(trt.BuilderFlag.FP16)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *(_layout(s, info.input_format) for s in shapes))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path:
        cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeUnavailableError(
            f"TensorRT failed to build an engine from {onnx_path} (see log)"
        )
    engine_bytes = bytes(serialized)
    record = {
        "spec": json.loads(spec.to_json()),
        "input_name": input_name,
        "input_format": info.input_format,
        "input_layout": "NTHWC" if info.input_format == "uint8" else "NCTHW",
        "outputs": [o["name"] for o in info.outputs],
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": {k: list(s) for k, s in zip(("min", "opt", "max"), shapes, strict=True)},
        "tensorrt_version": trt.__version__,
        "version_compatible": version_compatible,
        "onnx": Path(onnx_path).name,
        "onnx_sha256": file_sha256(onnx_path),
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
    }
    # Both files are complete before either is renamed into place.
    with atomic_file(engine_path) as engine_tmp, atomic_file(record_path(engine_path)) as rec_tmp:
        engine_tmp.write_bytes(engine_bytes)
        rec_tmp.write_text(json.dumps(record, indent=2))
    if cache_path:
        with atomic_file(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return record


def _profile(
    spec: ModelSpec,
    input_format: str,
    min_shape: Shape | None,
    opt_shape: Shape | None,
    max_shape: Shape | None,
) -> tuple[Shape, Shape, Shape]:
    defaults = default_profile(spec)
    shapes = tuple(
        tuple(given) if given else default
        for given, default in zip((min_shape, opt_shape, max_shape), defaults, strict=True)
    )
    for name, shape in zip(("min", "opt", "max"), shapes, strict=True):
        if len(shape) != 4:
            raise BadOptionError(f"{name} shape must be (N, T, H, W), got {shape}")
        try:
            check_input_shape(spec, _layout(shape, input_format), input_format)
        except ValueError as e:
            raise BadOptionError(f"{name} shape {'x'.join(map(str, shape))}: {e}") from None
    low, opt, high = shapes
    if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
        raise BadOptionError(
            f"profile needs min <= opt <= max in every dim, got {low}, {opt}, {high}"
        )
    return shapes  # type: ignore[return-value]


def _layout(shape: Shape, input_format: str) -> tuple[int, ...]:
    """(N, T, H, W) -> the input tensor's shape: NTHWC uint8 frames or NCTHW float clips."""
    n, t, h, w = shape
    return (n, t, h, w, 3) if input_format == "uint8" else (n, 3, t, h, w)
