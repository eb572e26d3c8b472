"""Issue 7's proof on real videos: the real Kinetics-400 I3D through the whole pipeline.

The paper's protocol (10 uniformly spaced clips, short side 256, centre crop 224, mean of the
clip softmax outputs) through the scoring engine with PyTorch fp32, PyTorch bf16 and
onnxruntime fp32 must rank the labels in shared/videos/MANIFEST.md first, and the exported ONNX
graph must agree with PyTorch fp32 to 1e-4 on every video's probabilities.
"""

from pathlib import Path

import numpy as np
import pytest

from r21d.export.onnx import export_onnx
from r21d.infer.backends import open_backend
from r21d.infer.engine import ScoreOptions, score_videos
from r21d.infer.runtime import RuntimeOptions

pytestmark = pytest.mark.slow

EXPECTED_TOP1 = {
    "arm_wrestling.mp4": "arm wrestling",
    "flipping_pancake.mkv": "flipping pancake",
    "filling_eyebrows.avi": "filling eyebrows",
}


@pytest.fixture(scope="module")
def videos(shared_videos) -> list[str]:
    return [str(shared_videos / name) for name in EXPECTED_TOP1]


@pytest.fixture(scope="module")
def torch_fp32(i3d_checkpoint, videos):
    return _score(i3d_checkpoint, videos, "torch", "fp32")


def _score(model: Path, videos: list[str], backend: str, precision: str) -> dict:
    scorer = open_backend(model, backend, "cpu", precision)
    results = score_videos(videos, scorer, ScoreOptions(num_clips=10), RuntimeOptions(workers=1))
    by_name = {Path(r.path).name: r for r in results}
    assert all(r.ok and r.clips == 10 for r in by_name.values()), by_name
    return {"spec": scorer.spec, **by_name}


def _assert_expected_top1(scores: dict) -> None:
    spec = scores["spec"]
    got = {name: spec.label(int(np.argmax(scores[name].probs))) for name in EXPECTED_TOP1}
    assert got == EXPECTED_TOP1


def test_pytorch_fp32_ranks_the_true_label_first(torch_fp32):
    _assert_expected_top1(torch_fp32)
    assert torch_fp32["arm_wrestling.mp4"].probs.max() > 0.9
    assert torch_fp32["filling_eyebrows.avi"].probs.max() > 0.5


def test_pytorch_bf16_ranks_the_true_label_first(i3d_checkpoint, videos, torch_fp32):
    bf16 = _score(i3d_checkpoint, videos, "torch", "bf16")
    _assert_expected_top1(bf16)
    for name in EXPECTED_TOP1:  # a precision mode, not a free lunch: bounded, not equal
        assert np.abs(bf16[name].probs - torch_fp32[name].probs).max() < 0.1


def test_onnxruntime_fp32_matches_pytorch_within_1e4(i3d_checkpoint, videos, torch_fp32, tmp_path):
    onnx_path = tmp_path / "i3d.onnx"
    export_onnx(i3d_checkpoint, onnx_path, parity_shapes=[(1, 64, 224, 224)])
    ort = _score(onnx_path, videos, "onnxruntime", "fp32")
    _assert_expected_top1(ort)
    for name in EXPECTED_TOP1:
        assert np.abs(ort[name].probs - torch_fp32[name].probs).max() <= 1e-4, name
