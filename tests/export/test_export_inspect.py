"""Reading exported ONNX files back, and the clear errors for files that are not."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from r21d.artefacts import OnnxModelError, describe_onnx
from r21d.artefacts import read_spec as load_onnx_spec
from r21d.cli import main


def test_spec_and_description_round_trip(tiny_onnx, tiny_model):
    path, _ = tiny_onnx
    spec = tiny_model[1]
    assert load_onnx_spec(path) == spec.replace(head="fully_conv")
    info = describe_onnx(path)
    assert info["kind"] == "onnx" and info["spec"]["labels"] == ["a", "b", "c", "d", "e"]
    assert info["input_format"] == "uint8" and info["precision"] == "fp32"
    assert info["opset"] >= 18 and info["validated"] is True
    assert info["max_probs_diff"] <= 1e-4
    assert info["inputs"] == ["frames uint8 [batch, time, height, width, 3]"]
    assert info["outputs"] == ["probs float32 [batch, 5]", "features float32 [batch, 64]"]


def test_r21d_info_prints_spec_and_parity(tiny_onnx, capsys):
    path, _ = tiny_onnx
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fully_conv" in out and "3x16x128x171" in out and "5: a, b, c, d, e" in out
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["clip_len"] == 8


def _spec_less(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a readable ONNX model"),
        ("truncated_early", "not a readable ONNX model"),
        ("text", "not a readable ONNX model"),
        ("empty", "not a readable ONNX model"),
        ("spec_less", "has no 'r21d.spec' metadata: it was not exported by r21d"),
        ("bad_spec", "bad r21d.spec metadata: unknown arch"),
        ("wrong_input", "its graph takes uint8 input but its r21d.input metadata says float"),
    ],
)
def test_broken_files_fail_clearly(kind, message, tiny_onnx, tmp_path, capsys):
    good = tiny_onnx[0].read_bytes()
    path = tmp_path / f"{kind}.onnx"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "truncated_early":
        path.write_bytes(good[:100])
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "spec_less":
        _spec_less(path)
    else:
        proto = onnx.load_from_string(good)
        for prop in proto.metadata_props:
            if prop.key == "r21d.spec" and kind == "bad_spec":
                prop.value = prop.value.replace('"r2plus1d"', '"resnet"')
            if prop.key == "r21d.input" and kind == "wrong_input":
                prop.value = "float"
        onnx.save(proto, str(path))

    with pytest.raises(OnnxModelError, match=message):
        load_onnx_spec(path)
    assert main(["info", str(path)]) == 3  # a model file that cannot be used
    err = capsys.readouterr().err
    assert err.startswith("r21d info: error: ") and message.split(":")[0] in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_onnx_spec("/nonexistent/model.onnx")


def test_info_refuses_a_graph_carrying_another_exports_metadata(tiny_onnx, tmp_path, capsys):
    """Metadata (spec and a 'validated' parity record) copied from the validated tiny export
    onto a 7-class graph: r21d info must not call it validated, and says why."""
    from r21d.export.onnx import export_onnx
    from r21d.models import build_model, create_spec

    spec = create_spec("r2plus1d_18", 7, 8, width=0.125)
    other = export_onnx((build_model(spec), spec), tmp_path / "seven.onnx", validate=False)
    proto = onnx.load(str(other.path))
    del proto.metadata_props[:]
    proto.metadata_props.extend(onnx.load(str(tiny_onnx[0])).metadata_props)
    grafted = tmp_path / "grafted.onnx"
    onnx.save(proto, str(grafted))
    assert describe_onnx(tiny_onnx[0])["validated"] is True  # what the copied record claims
    assert main(["info", str(grafted)]) == 3
    captured = capsys.readouterr()
    assert "validated" not in captured.out and len(captured.err.strip().splitlines()) == 1
    assert captured.err.strip() == (
        f"r21d info: error: {grafted}: its graph outputs 7 scores per clip but its r21d spec "
        "has 5 labels: the metadata does not belong to this graph"
    )
