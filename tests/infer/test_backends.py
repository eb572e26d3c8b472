"""Backends: torch and onnxruntime agree, and every impossible request fails clearly."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from synthetic import write_video

from r21d.checkpoint import save_checkpoint
from r21d.export.onnx import export_onnx
from r21d.infer.backends import BackendError, open_backend
from r21d.infer.decode import decode_for_spec
from r21d.models import build_model, create_spec


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny_spec model as a checkpoint and as a uint8-input ONNX graph (one export)."""
    folder = tmp_path_factory.mktemp("models")
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125, labels=("a", "b", "c", "d", "e"))
    checkpoint = save_checkpoint(build_model(spec), spec, folder / "tiny.safetensors")
    onnx_path = export_onnx(checkpoint, folder / "tiny.onnx", validate=False).path
    return checkpoint, onnx_path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    return write_video(path, 40, size=(160, 120), pattern="moving_square", direction="up")


def test_torch_and_onnxruntime_give_the_same_scores(models, video):
    checkpoint, onnx_path = models
    torch_backend, ort_backend = open_backend(checkpoint), open_backend(onnx_path)
    assert (torch_backend.name, ort_backend.name) == ("torch", "onnxruntime")
    assert ort_backend.spec.labels == torch_backend.spec.labels

    for full_frame in (False, True):  # 112x112 crops, then 128x171 whole frames
        clips = decode_for_spec(video, torch_backend.spec, num_clips=3, full_frame=full_frame)
        probs_t, features_t = torch_backend.run(clips.clips)
        probs_o, features_o = ort_backend.run(clips.clips)
        assert probs_o.dtype == np.float32 and probs_o.shape == (3, 5)
        np.testing.assert_allclose(probs_o, probs_t, atol=1e-4)
        np.testing.assert_allclose(features_o, features_t, atol=1e-4)
        assert probs_o.mean(0).argmax() == probs_t.mean(0).argmax()


def test_onnxruntime_asked_for_cuda_never_runs_silently_on_the_cpu(models):
    _, onnx_path = models
    if "CUDAExecutionProvider" in ort.get_available_providers():
        backend = open_backend(onnx_path, device="cuda")
        assert backend._session.get_providers()[0] == "CUDAExecutionProvider"
        return
    with pytest.raises(BackendError, match="asked for CUDAExecutionProvider but runs on CPU"):
        open_backend(onnx_path, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = open_backend(onnx_path, device="cuda", allow_cpu_fallback=True)
    assert backend.device == "cpu"
    assert any("running on the CPU" in str(w.message) for w in caught)


def test_precisions_a_backend_cannot_run_are_refused(models):
    checkpoint, onnx_path = models
    with pytest.raises(BackendError, match="fp16 needs a CUDA device"):
        open_backend(checkpoint, precision="fp16")
    with pytest.raises(BackendError, match=r"is an fp32 graph.*export an fp16 graph"):
        open_backend(onnx_path, precision="fp16")
    with pytest.raises(BackendError, match=r"--backend openvino --precision bf16.*torch backend"):
        open_backend(onnx_path, precision="bf16")


def test_bf16_and_channels_last_stay_close_to_fp32(models):
    checkpoint, _ = models
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 112, 112, 3), dtype=np.uint8)
    reference = open_backend(checkpoint).run(frames)[0]
    channels_last = open_backend(checkpoint, channels_last=True)
    np.testing.assert_allclose(channels_last.run(frames)[0], reference, atol=1e-5)
    bf16 = open_backend(checkpoint, precision="bf16", channels_last=True)
    assert bf16.precision == "bf16" and "bf16" in bf16.describe()
    probs = bf16.run(frames)[0]
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference, atol=0.05)


@pytest.mark.parametrize("which", [0, 1], ids=["torch", "onnxruntime"])
def test_inputs_the_model_cannot_take_are_refused_before_running(models, which):
    backend = open_backend(models[which])
    with pytest.raises(ValueError, match="clip of 4 frames is shorter than the 8 frames"):
        backend.run(np.zeros((1, 4, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="smaller than the 112x112"):
        backend.run(np.zeros((1, 8, 96, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        backend.run(np.zeros((1, 8, 112, 112, 3), np.float32))


def test_backend_choice_from_the_file_and_flags(models, tmp_path):
    checkpoint, onnx_path = models
    with pytest.raises(FileNotFoundError):
        open_backend(tmp_path / "missing.safetensors")
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the backend"):
        open_backend(other)
    with pytest.raises(ValueError, match="channels_last applies to the torch backend"):
        open_backend(onnx_path, channels_last=True)
    with pytest.raises(ValueError, match="device must be"):
        open_backend(checkpoint, device="gpu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt present")
def test_tensorrt_backend_without_tensorrt_is_one_clear_error(tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        open_backend(engine)  # picked from the suffix; tensorrt imported only now
