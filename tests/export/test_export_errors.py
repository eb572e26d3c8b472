"""What a user gets wrong with ``r21d export``, through the real command: one line on stderr
naming the flag or file, the documented exit code, and no file left behind.

Every refusal of an option happens before any export work: nothing is printed on stdout (the
parity table is the export's first output) and the checks that need no model are made before
the checkpoint is read, so a missing checkpoint is not what gets reported.
"""

from __future__ import annotations

import json
import os

import onnx
import pytest
import torch

from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.export import onnx as onnx_export
from r21d.models import build_model, create_spec


def run(argv, capsys) -> tuple[int, str, str]:
    """``r21d ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The single line of ``err`` (asserting there is exactly one)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def files_in(folder):
    """Every file and folder under ``folder``, hidden temporaries included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def folder(tmp_path, tiny_checkpoint):
    """A fresh folder holding (a link to) the tiny checkpoint."""
    (tmp_path / "tiny.safetensors").symlink_to(tiny_checkpoint)
    return tmp_path


@pytest.mark.parametrize("opset", [99, 26, 17, 0])
def test_opset_outside_the_range_is_one_line_before_any_work(folder, capsys, opset):
    argv = ["export", "onnx", folder / "missing.safetensors", "-o", folder / "t.onnx"]
    code, out, err = run([*argv, "--opset", opset], capsys)
    assert code == 2 and out == ""
    assert one_line(err) == (
        f"r21d export: error: --opset {opset} is not supported: r21d writes ONNX opsets 18 to 25"
    )
    assert files_in(folder) == ["tiny.safetensors"]


def test_opset_asked_for_is_the_opset_written_and_validated(folder, capsys):
    out = folder / "t21.onnx"
    code, printed, err = run(
        ["export", "onnx", folder / "tiny.safetensors", "-o", out, "--opset", 21], capsys
    )
    assert code == 0, err
    assert f"wrote {out}" in printed and "opset 21" in printed
    proto = onnx.load(str(out))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 21
    parity = json.loads({p.key: p.value for p in proto.metadata_props}["r21d.parity"])
    assert parity["validated"] and all(r["probs_max_abs_diff"] <= 1e-4 for r in parity["rows"])
    onnx.checker.check_model(proto)  # the appended parity record leaves a valid model
    assert files_in(folder) == ["t21.onnx", "tiny.safetensors"]


def _blocker(folder):
    """A regular file where a folder would have to be created."""
    (folder / "notes.txt").write_text("a file, not a folder")
    return folder / "notes.txt" / "sub" / "t.onnx"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (lambda f: f / "adir", "-o {out} is a folder; give a file name"),
        (lambda f: f / "adir.onnx", "-o {out} is a folder; give a file name"),
        (lambda f: "/dev/null", "-o /dev/null is a device, not a regular file"),
        (_blocker, "-o {out}: cannot create the folder {parent} (Not a directory)"),
        (lambda f: f / "t.txt", "-o {out}: the output must be a .onnx file"),
    ],
    ids=["folder", "folder.onnx", "device", "uncreatable-parent", "suffix"],
)
def test_unusable_onnx_output_is_one_line_before_any_work(folder, capsys, output, message):
    (folder / "adir").mkdir()
    (folder / "adir.onnx").mkdir()
    out = output(folder)
    before = files_in(folder)
    argv = ["export", "onnx", folder / "missing.safetensors", "-o", out]
    code, printed, err = run(argv, capsys)
    assert code == 2 and printed == ""
    expected = message.format(out=out, parent=folder / "notes.txt" / "sub")
    assert one_line(err) == f"r21d export: error: {expected}"
    assert files_in(folder) == before


def test_missing_checkpoint_names_it(folder, capsys):
    missing = folder / "nope.safetensors"
    code, _, err = run(["export", "onnx", missing, "-o", folder / "t.onnx"], capsys)
    assert code == 2 and one_line(err) == f"r21d export: error: model file {missing} not found"
    assert files_in(folder) == ["tiny.safetensors"]


def test_failed_validation_is_one_line_with_the_table_on_stdout(tmp_path, capsys):
    """Logits beyond fp16's range (65504) overflow in an fp16 graph: parity really fails."""
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125)
    model = build_model(spec)
    with torch.no_grad():
        model.fc.weight.fill_(3e3)
        model.fc.bias.copy_(torch.arange(5.0) * 1e5)
    ckpt = save_checkpoint(model, spec, tmp_path / "hot.safetensors")
    argv = ["export", "onnx", ckpt, "-o", tmp_path / "hot.onnx", "--precision", "fp16"]
    code, printed, err = run(argv, capsys)
    assert code == 7
    line = one_line(err)
    assert line.startswith("r21d export: error: exported graph differs from torch by ")
    assert "(tolerance 0.05 for fp16); file not written" in line
    assert " at 1x8x112x112 " in line or " at 3x16x128x171 " in line  # the worst shape
    assert "max|dprobs|" in printed and "3x16x128x171" in printed  # the failing table
    assert files_in(tmp_path) == ["hot.safetensors"]


def test_interrupted_export_leaves_no_file(folder, capsys, monkeypatch):
    """Ctrl-C after the graph is on disk (during validation): the temporary goes too."""
    seen = []

    def interrupt(path, *args, **kwargs):
        seen.append(files_in(folder))
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "validate_onnx", interrupt)
    code, _, err = run(
        ["export", "onnx", folder / "tiny.safetensors", "-o", folder / "t.onnx"], capsys
    )
    assert code == 130 and one_line(err) == "interrupted"
    (written,) = seen  # the graph had been written, under a temporary name beside the output
    assert [f for f in written if f != "tiny.safetensors"] == [f".t.onnx.partial-{os.getpid()}"]
    assert files_in(folder) == ["tiny.safetensors"]


def test_a_file_too_big_for_one_onnx_file_is_refused_before_exporting(folder, capsys, monkeypatch):
    """Weights past protobuf's 2 GiB (a ViT-H in fp32) cannot be one file; the tiny model
    stands in for one under a lowered limit, since building a real one takes 2.5 GB."""
    monkeypatch.setattr(onnx_export, "MAX_FILE_BYTES", 10_000)
    argv = ["export", "onnx", folder / "tiny.safetensors", "-o", folder / "t.onnx"]
    code, printed, err = run(argv, capsys)
    assert code == 2 and printed == ""
    line = one_line(err)
    assert line.startswith("r21d export: error: r2plus1d_18 has 0.00")
    assert "GB of fp32 weights: over the 0.00 GB that one ONNX file holds" in line
    assert line.endswith("(try --precision fp16)")
    assert files_in(folder) == ["tiny.safetensors"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda f: ["-o", f / "adir"], "-o {f}/adir is a folder; give a file name"),
        (lambda f: ["-o", "/dev/null"], "-o /dev/null is a device, not a regular file"),
        (lambda f: ["-o", f / "m.trt"], "-o {f}/m.trt: the output must be a .engine/.plan file"),
        (lambda f: ["-o", f / "m.engine"], "-o {f}/m.engine.json is a folder; give a file name"),
        (
            lambda f: ["-o", f / "ok.engine", "--timing-cache", f / "adir"],
            "--timing-cache {f}/adir is a folder; give a file name",
        ),
    ],
    ids=["folder", "device", "suffix", "record-is-a-folder", "timing-cache-folder"],
)
def test_unusable_engine_output_is_one_line_before_tensorrt(folder, capsys, args, message):
    """Checked before the ONNX file is read or TensorRT imported: these fail the same with
    and without TensorRT, and with an ONNX file that does not exist."""
    (folder / "adir").mkdir()
    (folder / "m.engine.json").mkdir()
    before = files_in(folder)
    code, printed, err = run(["export", "trt", folder / "missing.onnx", *args(folder)], capsys)
    assert code == 2 and printed == ""
    assert one_line(err) == "r21d export: error: " + message.format(f=folder)
    assert files_in(folder) == before
