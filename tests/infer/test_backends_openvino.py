"""The OpenVINO backend: same scores as torch fp32 on our ONNX, precision always explicit."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import write_video

from r21d.checkpoint import save_checkpoint
from r21d.errors import BadModelFileError, MissingPackageError
from r21d.export.onnx import export_onnx
from r21d.infer.backends import BackendError, open_backend
from r21d.infer.decode import decode_for_spec
from r21d.infer.runtime import RuntimeOptions
from r21d.models import build_model, create_spec

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def models(tmp_path_factory, spread):
    """A tiny R(2+1)D (spread weights, so probabilities are far from uniform) as a checkpoint
    and as the uint8-input ONNX graph onnxruntime also runs."""
    folder = tmp_path_factory.mktemp("models")
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125, labels=("a", "b", "c", "d", "e"))
    checkpoint = save_checkpoint(spread(build_model(spec)), spec, folder / "tiny.safetensors")
    onnx_path = export_onnx(checkpoint, folder / "tiny.onnx", validate=False).path
    return checkpoint, onnx_path


@pytest.fixture(scope="module")
def clips(models, tmp_path_factory):
    video = write_video(
        tmp_path_factory.mktemp("video") / "square.mp4",
        40,
        size=(160, 120),
        pattern="moving_square",
        direction="up",
    )
    spec = open_backend(models[0]).spec
    return {
        full: decode_for_spec(video, spec, num_clips=3, full_frame=full).clips
        for full in (False, True)
    }


def test_openvino_fp32_matches_torch_fp32(models, clips):
    checkpoint, onnx_path = models
    reference = open_backend(checkpoint, precision="fp32", channels_last=False)
    backend = RuntimeOptions.parse("openvino:fp32", device="cpu").open(onnx_path)
    assert (backend.name, backend.precision, backend.device) == ("openvino", "fp32", "cpu")
    assert backend.spec.labels == reference.spec.labels
    for frames in clips.values():  # 112x112 crops, then 128x171 whole frames (fully conv)
        probs_t, features_t = reference.run(frames)
        probs, features = backend.run(frames)
        assert probs.dtype == np.float32 and probs.shape == (3, 5)
        assert probs_t.max() > 0.4  # far from uniform: a wrong graph would show
        np.testing.assert_allclose(probs, probs_t, atol=1e-4)
        np.testing.assert_allclose(features, features_t, atol=1e-4, rtol=1e-4)


def test_precision_defaults_to_fp32_never_openvinos_own_bf16(models, clips):
    checkpoint, onnx_path = models
    frames = clips[False]
    reference = open_backend(checkpoint, channels_last=False).run(frames)[0]
    default = open_backend(onnx_path, backend="openvino", device="cpu")
    assert default.precision == "fp32"
    np.testing.assert_allclose(default.run(frames)[0], reference, atol=1e-4)
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BackendError, match="no native bf16"):
            open_backend(onnx_path, backend="openvino", device="cpu", precision="bf16")
        return
    bf16 = open_backend(onnx_path, backend="openvino", device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and "bf16" in bf16.describe()
    probs = bf16.run(frames)[0]
    drift = np.abs(probs - reference).max()
    assert 1e-4 < drift < 0.05  # bf16 really ran (beyond the fp32 tolerance), and stayed close


def test_requests_openvino_cannot_serve_are_refused(models):
    checkpoint, onnx_path = models
    with pytest.raises(BackendError, match="runs on the CPU"):
        open_backend(onnx_path, backend="openvino", device="cuda:0")
    with pytest.raises(BackendError, match="fp32 or bf16"):
        open_backend(onnx_path, backend="openvino", device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="--channels-last applies to the torch backend"):
        open_backend(onnx_path, backend="openvino", device="cpu", channels_last=True)
    with pytest.raises(BadModelFileError, match="not a readable ONNX model"):
        open_backend(checkpoint, backend="openvino", device="cpu")


def test_missing_openvino_is_one_clear_error(models, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # what an install without it sees
    with pytest.raises(MissingPackageError, match=r"OpenVINO is not installed: pip install r21d"):
        open_backend(models[1], backend="openvino", device="cpu")
