"""Every backend checks a model file's outputs against its spec when it opens it.

The broken graphs are built for real with the onnx package from r21d's own exports: another
export's metadata on a graph with another class count (as a user who copied
``metadata_props`` made it), and graphs whose ``probs`` are scaled so they are no longer
probabilities. None of them may write a record.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from synthetic import write_video

from r21d.artefacts import OnnxModelError, load_onnx_info
from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.errors import BadModelFileError
from r21d.export.onnx import export_onnx
from r21d.infer.backends import PROBS_TOLERANCE, open_backend
from r21d.models import build_model, create_spec


@pytest.fixture(scope="module")
def exports(tmp_path_factory, spread):
    """Two tiny exports: ``five`` (labels a-e) and ``seven`` (7 classes, no labels)."""
    folder = tmp_path_factory.mktemp("probe")
    paths = {}
    for name, classes, labels in (("five", 5, tuple("abcde")), ("seven", 7, None)):
        spec = create_spec("r2plus1d_18", classes, 8, width=0.125, labels=labels)
        torch.manual_seed(classes)
        ckpt = save_checkpoint(spread(build_model(spec)), spec, folder / f"{name}.safetensors")
        paths[name] = export_onnx(ckpt, folder / f"{name}.onnx", validate=False).path
        paths[f"{name}_ckpt"] = ckpt
    return paths


def _graft_metadata(graph_path, metadata_path, out, open_class_dim=False):
    """``graph_path``'s graph carrying ``metadata_path``'s r21d metadata; with
    ``open_class_dim`` the probs output's class dimension is left undeclared, so only running
    the graph can tell."""
    proto = onnx.load(str(graph_path))
    del proto.metadata_props[:]
    proto.metadata_props.extend(onnx.load(str(metadata_path)).metadata_props)
    if open_class_dim:
        probs = next(o for o in proto.graph.output if o.name == "probs")
        probs.type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(proto, str(out))
    return out


def _scale_probs(graph_path, factor, out):
    """``graph_path`` with its ``probs`` output multiplied by ``factor`` (a Mul node)."""
    proto = onnx.load(str(graph_path))
    for node in proto.graph.node:
        node.output[:] = ["probs_unscaled" if o == "probs" else o for o in node.output]
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array(factor, np.float32), "probs_factor")
    )
    proto.graph.node.append(helper.make_node("Mul", ["probs_unscaled", "probs_factor"], ["probs"]))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def _one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_graph_with_another_exports_metadata_is_refused_everywhere(exports, tmp_path, capsys):
    bad = _graft_metadata(exports["seven"], exports["five"], tmp_path / "grafted.onnx")
    message = "its graph outputs 7 scores per clip but its r21d spec has 5 labels"
    with pytest.raises(OnnxModelError, match=message):
        load_onnx_info(bad)
    video = write_video(tmp_path / "v.mp4", 16, size=(160, 120))
    out = tmp_path / "records.jsonl"
    code = main(["score", str(video), "-m", str(bad), "-o", str(out), "--workers", "0"])
    err = _one_line(capsys.readouterr().err)
    assert code == 3 and str(bad) in err and message in err
    assert not out.exists() or out.read_text() == ""  # no record, not even an error record


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_probe_catches_a_class_count_the_graph_does_not_declare(exports, tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    bad = _graft_metadata(
        exports["seven"], exports["five"], tmp_path / "open.onnx", open_class_dim=True
    )
    load_onnx_info(bad)  # nothing declared to compare: only running it tells
    with pytest.raises(BadModelFileError, match=f"{bad}: its graph outputs 7 scores per clip"):
        open_backend(bad, backend=backend, device="cpu")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(
    ("factor", "message"),
    [
        (30.0, r"outputs scores from .* to .* for a probe clip, not probabilities in \[0, 1\]"),
        (0.5, r"scores for a probe clip sum to 0\.5, not 1 \(tolerance 0\.01\)"),
    ],
    ids=["above_one", "sum_half"],
)
def test_the_probe_catches_scores_that_are_not_probabilities(
    exports, tmp_path, backend, factor, message
):
    if backend == "openvino":
        pytest.importorskip("openvino")
    bad = _scale_probs(exports["five"], factor, tmp_path / "scaled.onnx")
    with pytest.raises(BadModelFileError, match=message) as e:
        open_backend(bad, backend=backend, device="cpu")
    assert str(bad) in str(e.value)


def test_a_checkpoint_with_broken_weights_is_refused_before_scoring(tmp_path, capsys):
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125)
    model = build_model(spec)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    ckpt = save_checkpoint(model, spec, tmp_path / "nan.safetensors")
    with pytest.raises(BadModelFileError, match="non-finite scores"):
        open_backend(ckpt)
    video = write_video(tmp_path / "v.mp4", 16, size=(160, 120))
    code = main(["score", str(video), "-m", str(ckpt), "--workers", "0"])
    err = _one_line(capsys.readouterr().err)
    assert code == 3 and "nan.safetensors: its model outputs non-finite scores" in err


def test_good_models_pass_the_probe_on_every_cpu_backend(exports):
    """The real exports open (fp32 and, where the CPU has it, OpenVINO bf16 within the stated
    tolerance), so the probe refuses only what is broken."""
    for path in (exports["five_ckpt"], exports["five"]):
        assert open_backend(path, device="cpu").spec.num_classes == 5
    ov = pytest.importorskip("openvino")
    precisions = ["fp32"]
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precisions.append("bf16")
    for precision in precisions:
        backend = open_backend(exports["seven"], "openvino", "cpu", precision)
        probs = backend.run(np.full((1, 8, 112, 112, 3), 128, np.uint8))[0]
        assert abs(float(probs.sum()) - 1) <= PROBS_TOLERANCE


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="needs tensorrt and a CUDA GPU",
)
def test_tensorrt_refuses_engines_whose_outputs_are_not_their_specs(exports, tmp_path):
    from r21d.export.tensorrt import build_engine

    shapes = {"min_shape": (1, 8, 112, 112), "opt_shape": (1, 8, 112, 112)}
    shapes["max_shape"] = (2, 8, 112, 112)
    grafted = _graft_metadata(
        exports["seven"], exports["five"], tmp_path / "open.onnx", open_class_dim=True
    )
    build_engine(grafted, tmp_path / "open.engine", **shapes)
    with pytest.raises(BadModelFileError, match="its engine outputs 7 scores per clip"):
        open_backend(tmp_path / "open.engine")
    build_engine(
        _scale_probs(exports["five"], 30.0, tmp_path / "x30.onnx"),
        tmp_path / "x30.engine",
        **shapes,
    )
    with pytest.raises(BadModelFileError, match=r"not probabilities in \[0, 1\]"):
        open_backend(tmp_path / "x30.engine")
