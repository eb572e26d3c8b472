"""TensorRT: clear errors without it, the JSON record, and a real build where it imports."""

from __future__ import annotations

import importlib.util
import json

import pytest

from r21d.artefacts import EngineError, describe_engine, read_engine_record, record_path
from r21d.artefacts import read_spec as load_engine_spec
from r21d.checkpoint import file_sha256
from r21d.cli import main
from r21d.export.tensorrt import build_engine, default_profile, parse_shape
from r21d.models import create_spec

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_default_profile_from_the_spec(tiny_model):
    assert default_profile(tiny_model[1]) == (
        (1, 8, 112, 112),
        (8, 8, 128, 171),
        (32, 32, 128, 171),
    )
    se = create_spec("r2plus1d_34", 10, 32, resize_mode="short_edge", resize_size=(128,))
    assert default_profile(se) == ((1, 32, 112, 112), (8, 32, 128, 171), (32, 128, 128, 228))


def test_parse_shape():
    assert parse_shape("8x16x128X171") == (8, 16, 128, 171)
    for bad in ("8x16x128", "8x0x128x171", "axbxcxd"):
        with pytest.raises(ValueError, match="NxTxHxW"):
            parse_shape(bad)


def test_profile_shorter_than_the_clip_is_refused_before_tensorrt(tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match="min shape 1x4x112x112: clip of 4 frames is shorter"):
        build_engine(tiny_onnx[0], tmp_path / "m.engine", min_shape=(1, 4, 112, 112))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        build_engine(tiny_onnx[0], tmp_path / "m.engine", opt_shape=(64, 8, 112, 112))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed")
def test_missing_tensorrt_is_one_clear_line(tiny_onnx, tmp_path, capsys):
    with pytest.raises(ImportError, match=r"pip install r21d\[tensorrt\]"):
        build_engine(tiny_onnx[0], tmp_path / "m.engine")
    assert main(["export", "trt", str(tiny_onnx[0]), "-o", str(tmp_path / "m.engine")]) == 5
    err = capsys.readouterr().err.strip()
    assert err == (
        "r21d export: error: TensorRT is not installed: "
        "pip install r21d[tensorrt] (or pip install tensorrt)"
    )
    assert list(tmp_path.iterdir()) == []


def _record(engine, spec):
    """A record as build_engine writes it, for an engine file of arbitrary bytes: the
    record is plain JSON, so describing engines needs no TensorRT."""
    engine.write_bytes(b"serialized engine bytes")
    record = {
        "spec": json.loads(spec.to_json()),
        "input_name": "frames",
        "input_format": "uint8",
        "input_layout": "NTHWC",
        "outputs": ["probs", "features"],
        "precision": "fp16",
        "strongly_typed": True,
        "profile": {"min": [1, 8, 112, 112], "opt": [8, 8, 128, 171], "max": [32, 32, 128, 171]},
        "tensorrt_version": "11.0.0",
        "version_compatible": False,
        "onnx": "tiny.onnx",
        "onnx_sha256": "0" * 64,
        "engine_sha256": file_sha256(engine),
    }
    record_path(engine).write_text(json.dumps(record))
    return record


def test_engine_record_describes_the_engine(tiny_model, tmp_path, capsys):
    spec = tiny_model[1].replace(head="fully_conv")
    engine = tmp_path / "m.engine"
    _record(engine, spec)
    assert record_path(engine).name == "m.engine.json"
    assert load_engine_spec(engine) == spec
    info = describe_engine(engine)
    assert info["precision"] == "fp16" and info["tensorrt_version"] == "11.0.0"
    assert info["profile_NxTxHxW"] == {
        "min": "1x8x112x112",
        "opt": "8x8x128x171",
        "max": "32x32x128x171",
    }
    assert main(["info", str(engine)]) == 0
    out = capsys.readouterr().out
    assert "tensorrt engine" in out and "fully_conv" in out and "32x32x128x171" in out


def test_stale_or_missing_record_is_refused(tiny_model, tmp_path, capsys):
    engine = tmp_path / "m.engine"
    _record(engine, tiny_model[1])
    engine.write_bytes(b"a different build")
    with pytest.raises(EngineError, match="different build"):
        read_engine_record(engine)
    record_path(engine).unlink()
    with pytest.raises(EngineError, match="no m.engine.json beside it"):
        load_engine_spec(engine)
    assert main(["info", str(engine)]) == 3  # a model file that cannot be used
    assert "no m.engine.json beside it" in capsys.readouterr().err


requires_tensorrt_gpu = pytest.mark.skipif(
    not HAVE_TENSORRT or not __import__("torch").cuda.is_available(),
    reason="needs tensorrt and a CUDA GPU",
)


@requires_tensorrt_gpu
def test_build_engine_writes_engine_record_and_timing_cache(tiny_onnx, tmp_path):
    import tensorrt as trt

    engine, cache = tmp_path / "tiny.engine", tmp_path / "timing.cache"
    record = build_engine(
        tiny_onnx[0],
        engine,
        min_shape=(1, 8, 112, 112),
        opt_shape=(2, 8, 128, 171),
        max_shape=(4, 16, 128, 171),
        timing_cache=cache,
    )
    assert cache.stat().st_size > 0
    assert read_engine_record(engine) == record
    assert record["tensorrt_version"] == trt.__version__ and record["precision"] == "fp32"
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    deserialized = runtime.deserialize_cuda_engine(engine.read_bytes())
    assert deserialized.get_tensor_name(0) == "frames"


@requires_tensorrt_gpu
def test_tensorrt_11_refuses_fp16_from_an_fp32_graph(tiny_onnx, tmp_path):
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) < 11:
        pytest.skip("TensorRT 10 builds FP16 from FP32 graphs with the FP16 flag")
    with pytest.raises(ValueError, match="strongly typed networks only"):
        build_engine(tiny_onnx[0], tmp_path / "m.engine", precision="fp16")
