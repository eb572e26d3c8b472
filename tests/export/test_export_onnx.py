"""ONNX export: dynamic shapes, one self-contained file, metadata, parity in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from r21d.artefacts import load_onnx_info
from r21d.export import onnx as onnx_export
from r21d.export.onnx import ParityError, default_parity_shapes, export_onnx, validate_onnx
from r21d.models import build_model, create_spec
from r21d.models.heads import FullyConvolutional
from r21d.spec import SPEC_KEY, ModelSpec

PARITY_SHAPES = [(1, 8, 112, 112), (3, 16, 128, 171)]


def run_both(path, model, spec, input_format, shapes, logits_map=False):
    """Max abs differences (probs, features[, logits_map]) and top-1 agreement, onnxruntime vs
    torch, computed here rather than trusted from the export's own report."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = FullyConvolutional(model, spec, input_format, logits_map)
    rng = np.random.default_rng(7)
    results = []
    for n, t, h, w in shapes:
        if input_format == "uint8":
            x = rng.integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)
        else:
            x = rng.standard_normal((n, 3, t, h, w), dtype=np.float32)
        with torch.inference_mode():
            want = [o.numpy() for o in wrapper(torch.from_numpy(x))]
        got = session.run(None, {session.get_inputs()[0].name: x})
        diffs = [float(np.abs(g - w_).max()) for g, w_ in zip(got, want, strict=True)]
        agree = float((got[0].argmax(1) == want[0].argmax(1)).mean())
        results.append((diffs, agree, got[0]))
    return results


def test_cli_export_is_one_file_with_spec_and_parity(tiny_onnx, tiny_model):
    path, printed = tiny_onnx
    model, spec = tiny_model
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx", "tiny.safetensors"]
    proto = onnx.load(str(path), load_external_data=False)
    assert not [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded

    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelSpec.from_json(meta[SPEC_KEY]) == spec.replace(head="fully_conv")
    assert meta["r21d.input"] == "uint8" and meta["r21d.precision"] == "fp32"
    parity = json.loads(meta["r21d.parity"])
    assert parity["validated"] and parity["tolerance"] == 1e-4
    assert [tuple(r["shape"]) for r in parity["rows"]] == PARITY_SHAPES
    assert all(r["probs_max_abs_diff"] <= 1e-4 for r in parity["rows"])
    assert "3x16x128x171" in printed and "top-1 agree" in printed  # the table was printed

    (frames,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in frames.type.tensor_type.shape.dim]
    assert frames.name == "frames" and dims == ["batch", "time", "height", "width", 3]
    assert frames.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in proto.graph.output] == ["probs", "features"]


def test_tiny_export_matches_torch_in_onnxruntime(tiny_onnx, tiny_model):
    """At the validated shapes and at four times the frames, which the export does not try."""
    path, _ = tiny_onnx
    model, spec = tiny_model
    shapes = [*PARITY_SHAPES, (2, 32, 112, 112)]
    for diffs, agree, probs in run_both(path, model, spec, "uint8", shapes):
        assert max(diffs) <= 1e-4 and agree == 1.0
        assert probs.max() > 0.5  # far from uniform: the comparison means something


def test_default_parity_shapes_follow_the_spec(tiny_model):
    assert default_parity_shapes(tiny_model[1]) == PARITY_SHAPES
    se = create_spec("r2plus1d_34", 10, 32, resize_mode="short_edge", resize_size=(128,))
    assert default_parity_shapes(se) == [(1, 32, 112, 112), (3, 64, 128, 171)]


def test_float_input_with_logits_map(tiny_model, tmp_path):
    model, spec = tiny_model
    out = tmp_path / "float.onnx"
    report = export_onnx(
        (model, spec), out, input_format="float", logits_map=True, parity_shapes=[(1, 8, 128, 171)]
    )
    assert report.parity["rows"][0]["shape"] == [1, 8, 128, 171]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["clips"]
    assert [o.name for o in session.get_outputs()] == ["probs", "features", "logits_map"]
    ((diffs, agree, _),) = run_both(out, model, spec, "float", [(2, 16, 128, 171)], True)
    assert max(diffs) <= 1e-4 and agree == 1.0


def test_fp16_graph_keeps_uint8_in_fp32_out(tiny_model, tmp_path):
    model, spec = tiny_model
    out = tmp_path / "half.onnx"
    report = export_onnx((model, spec), out, precision="fp16", parity_shapes=[(2, 8, 128, 171)])
    proto = onnx.load(str(out))
    weights = {t.data_type for t in proto.graph.initializer if len(t.dims) == 5}
    assert weights == {onnx.TensorProto.FLOAT16}  # every conv weight is fp16
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {onnx.TensorProto.FLOAT}
    assert load_onnx_info(out).precision == "fp16"
    assert report.parity["tolerance"] == onnx_export.TOLERANCE["fp16"] == 5e-2
    ((diffs, agree, _),) = run_both(out, model, spec, "uint8", [(1, 16, 112, 128)])
    assert diffs[0] <= 1e-2 and agree == 1.0
    assert diffs[0] > 0  # really computed in half precision


def test_parity_failure_deletes_the_file(tiny_model, tmp_path, monkeypatch):
    model, spec = tiny_model
    out = tmp_path / "bad.onnx"
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", -1.0)  # no difference can pass
    with pytest.raises(ParityError, match="differs from torch"):
        export_onnx((model, spec), out, parity_shapes=[(1, 8, 112, 112)])
    assert list(tmp_path.iterdir()) == []


def test_validation_catches_a_different_model(tiny_onnx, tiny_model, spread):
    path, _ = tiny_onnx
    model, spec = tiny_model
    other = spread(build_model(spec), seed=1)
    with pytest.raises(ParityError, match="tolerance 0.0001"):
        validate_onnx(path, FullyConvolutional(other, spec), "fp32", [(1, 8, 112, 112)])


def test_bad_arguments_are_refused_before_exporting(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_onnx(tiny_model, tmp_path / "a.onnx", precision="int8")
    with pytest.raises(ValueError, match="opset 17 is not supported: r21d writes ONNX opsets 18"):
        export_onnx(tiny_model, tmp_path / "a.onnx", opset=17)
    with pytest.raises(ValueError, match="out_path .*a.txt: the output must be a .onnx file"):
        export_onnx(tiny_model, tmp_path / "a.txt")
    with pytest.raises(ValueError, match="input format"):
        export_onnx(tiny_model, tmp_path / "a.onnx", input_format="rgb")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_real_size_r2plus1d_18_parity(tmp_path, spread):
    """One real-size export (random weights, 400 classes) at the three standard shapes."""
    spec = create_spec("r2plus1d_18", 400, 8)
    torch.manual_seed(0)
    model = spread(build_model(spec))
    report = export_onnx((model, spec), tmp_path / "r2plus1d_18.onnx")
    rows = report.parity["rows"]
    assert [tuple(r["shape"]) for r in rows] == PARITY_SHAPES
    assert all(r["probs_max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0 for r in rows)
    assert (tmp_path / "r2plus1d_18.onnx").stat().st_size > 4 * 30e6  # weights inside
    assert list(tmp_path.iterdir()) == [tmp_path / "r2plus1d_18.onnx"]
