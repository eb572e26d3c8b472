"""VideoMAE V2 export: ONNX with a dynamic batch only, uint8 frames in, spec inside, parity
against Hugging Face transformers in onnxruntime; TensorRT profiles over the batch only.

Exporting a 12-block ViT takes about half a minute on 2 cores, so the exports are shared per
module and marked slow; the shape and profile rules are checked without exporting.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hf_videomae import huggingface_copy, huggingface_probs, random_vit

from r21d.export.onnx import default_parity_shapes, export_onnx
from r21d.export.tensorrt import default_profile
from r21d.models import create_spec
from r21d.models.heads import FullyConvolutional, check_input_shape
from r21d.spec import SPEC_KEY, ModelSpec


def test_parity_shapes_and_trt_profile_vary_the_batch_only():
    spec = create_spec("videomae2_vit_b", 400)
    assert default_parity_shapes(spec) == [(1, 16, 224, 224), (3, 16, 224, 224)]
    low, opt, high = default_profile(spec)
    assert (low, opt, high) == ((1, 16, 224, 224), (8, 16, 224, 224), (32, 16, 224, 224))
    for n, t, h, w in (low, opt, high):
        check_input_shape(spec, (n, t, h, w, 3), "uint8")
    cnn = create_spec("r2plus1d_18", 5, 8)
    assert default_profile(cnn)[2][1:] != default_profile(cnn)[0][1:]  # CNNs: T, H, W vary


@pytest.fixture(scope="module")
def vit_s_onnx(tmp_path_factory):
    """Random ViT-S (non-zero q/v biases, layer scale) for 4 x 64 x 64 clips, exported fp32
    and fp16 with uint8 frames in."""
    model, spec = random_vit("videomae2_vit_s", 10, 4, 64)
    folder = tmp_path_factory.mktemp("vit_onnx")
    reports = {
        precision: export_onnx(
            (model, spec), folder / f"vit_s_{precision}.onnx", precision=precision
        )
        for precision in ("fp32", "fp16")
    }
    return model, spec, reports


def input_dims(path):
    proto = onnx.load(str(path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims], proto


@pytest.mark.slow
def test_onnx_batch_only_dynamic_with_spec_and_parity(vit_s_onnx):
    model, spec, reports = vit_s_onnx
    path = reports["fp32"].path
    dims, proto = input_dims(path)
    assert isinstance(dims[0], str) and dims[1:] == [4, 64, 64, 3]  # only the batch is symbolic
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelSpec.from_json(meta[SPEC_KEY]) == spec.replace(head="fully_conv")
    parity = json.loads(meta["r21d.parity"])
    assert [r["shape"] for r in parity["rows"]] == [[1, 4, 64, 64], [3, 4, 64, 64]]
    assert all(r["probs_max_abs_diff"] <= 1e-4 for r in parity["rows"])

    # Independently of the export's own check: onnxruntime against transformers.
    hf = huggingface_copy(model, spec)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = torch.randint(0, 256, (5, 4, 64, 64, 3), dtype=torch.uint8)
    probs, features = session.run(None, {"frames": frames.numpy()})
    want = huggingface_probs(hf, frames, spec).numpy()
    assert 0.3 < want.max() < 0.999
    assert np.abs(probs - want).max() < 1e-4
    assert features.shape == (5, 384)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"frames": np.zeros((1, 6, 64, 64, 3), np.uint8)})


@pytest.mark.slow
def test_onnx_fp16_graph_within_its_tolerance(vit_s_onnx):
    model, spec, reports = vit_s_onnx
    report = reports["fp16"]
    assert report.parity["validated"] and report.parity["tolerance"] == 5e-2
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    frames = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    got = session.run(None, {"frames": frames.numpy()})[0]
    with torch.no_grad():
        want = FullyConvolutional(model, spec)(frames)[0].numpy()
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 5e-2
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.slow
def test_onnx_vit_b_matches_transformers(tmp_path):
    model, spec = random_vit("videomae2_vit_b", 10, 4, 64)
    report = export_onnx((model, spec), tmp_path / "vit_b.onnx")
    assert max(r["probs_max_abs_diff"] for r in report.parity["rows"]) <= 1e-4
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    frames = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    probs = session.run(None, {"frames": frames.numpy()})[0]
    want = huggingface_probs(huggingface_copy(model, spec), frames, spec).numpy()
    assert np.abs(probs - want).max() < 1e-4
