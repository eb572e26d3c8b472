"""Bad model and weight files through the real ``r21d`` command: each is one line of stderr
with its documented exit code, naming the file (or the flag), and no code from a file runs."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from r21d.artefacts import record_path
from r21d.checkpoint import file_sha256, save_checkpoint
from r21d.cli import main


def _run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return code, err


class _System:
    """A pickle payload that runs a shell command when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return save_checkpoint(*tiny_model, tmp_path / "tiny.safetensors")


@pytest.mark.parametrize("source_format", ["caffe2", "torchvision", "videomae2"])
def test_a_malicious_pickle_is_refused_and_its_code_never_runs(source_format, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    if source_format == "caffe2":
        src = tmp_path / "evil.pkl"
        src.write_bytes(pickle.dumps({"blobs": {"conv1_w": _System(marker)}}, protocol=2))
        extra = ["--clip-len", "8"]
    else:
        src = tmp_path / "evil.pth"
        torch.save({"fc.weight": torch.zeros(2, 2), "args": _System(marker)}, src)
        extra = []
    out = tmp_path / "out.safetensors"
    code, err = _run(["convert", src, "--from", source_format, *extra, "-o", out], capsys)
    assert code == 4 and str(src) in err and "system" in err
    assert "weights_only=False" not in err and "will likely succeed" not in err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("truncated.pth", "half"),
        ("garbage.pth", b"not a torch file at all " * 20),
        ("empty.pth", b""),
        ("truncated.pkl", "half"),
        ("garbage.pkl", b"\x80\x02garbage" * 10),
    ],
)
def test_unreadable_weight_files_are_one_line_exit_4(name, content, tmp_path, capsys):
    src = tmp_path / name
    if content == "half":
        whole = tmp_path / f"whole{src.suffix}"
        if src.suffix == ".pth":
            torch.save({"fc.weight": torch.zeros(64, 64)}, whole)
        else:
            whole.write_bytes(pickle.dumps({"blobs": {"conv1_w": [0.0] * 500}}, protocol=2))
        content = whole.read_bytes()[: len(whole.read_bytes()) // 2]
    src.write_bytes(content)
    source_format = "ig65m" if src.suffix == ".pth" else "caffe2"
    argv = ["convert", src, "--from", source_format, "--clip-len", "8"]
    code, err = _run([*argv, "-o", tmp_path / "out.safetensors"], capsys)
    assert code == 4 and f"{src}: not a " in err
    assert "truncated, corrupted or another format" in err


@pytest.mark.parametrize("kind", ["truncated", "garbage", "no_spec", "bad_spec"])
def test_unusable_checkpoints_are_one_line_exit_3(kind, checkpoint, tmp_path, capsys):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        data = checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json header}")
    else:
        spec = '{"arch": "resnet"}' if kind == "bad_spec" else None
        save_file({"w": torch.zeros(2)}, str(path), metadata={"r21d.spec": spec} if spec else None)
    for argv in (["info", path], ["score", checkpoint, "-m", path, "--workers", "0"]):
        code, err = _run(argv, capsys)
        assert code == 3 and f"{path}: " in err, err
    if kind == "no_spec":
        assert "import foreign weights with `r21d convert` first" in err


def test_a_broken_engine_record_is_one_line_exit_3(tmp_path, capsys):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    record_path(engine).write_text('{"spec": {"arch": "r2plus1d"')  # cut short
    code, err = _run(["info", engine], capsys)
    assert code == 3 and "m.engine.json is not a valid engine record" in err
    record_path(engine).write_text(
        json.dumps({"spec": {"nonsense": 1}, "engine_sha256": file_sha256(engine)})
    )
    code, err = _run(["info", engine], capsys)
    assert code == 3 and "m.engine.json is not a valid engine record" in err


def test_a_folder_is_not_a_model_file(checkpoint, tmp_path, capsys):
    folder = tmp_path / "adir"
    folder.mkdir()
    for argv in (["info", folder], ["score", checkpoint, "-m", folder, "--workers", "0"]):
        code, err = _run(argv, capsys)
        assert code == 2 and f"{folder} is a folder, not a model file" in err
        assert ".safetensors" in err and ".onnx" in err and ".engine" in err


def test_info_on_foreign_weights_says_to_convert_them(tmp_path, capsys):
    weights = tmp_path / "r2plus1d.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    code, err = _run(["info", weights], capsys)
    assert code == 3 and str(weights) in err and "import them with `r21d convert`" in err


def test_convert_checks_its_output_before_importing(tiny_model, tmp_path, capsys):
    """A folder as -o is refused at once (no traceback, no temporary left behind)."""
    src = tmp_path / "tv.pth"
    torch.save(tiny_model[0].state_dict(), src)
    folder = tmp_path / "out"
    folder.mkdir()
    argv = ["convert", src, "--from", "torchvision", "--arch", "r2plus1d_18", "-o"]
    code, err = _run([*argv, folder], capsys)
    assert code == 2 and f"-o {folder} is a folder" in err
    assert list(folder.iterdir()) == [] and sorted(tmp_path.iterdir()) == [folder, src]
    code, err = _run([*argv, tmp_path / "model.onnx"], capsys)
    assert code == 2 and "-o" in err and ".safetensors" in err


@pytest.mark.parametrize("content", [b"", b"this is not a model\n", b"\x08\x07\x12\x04half"])
def test_unreadable_onnx_files_are_one_line_exit_3_for_every_reader(
    content, checkpoint, tmp_path, capsys
):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    for argv in (
        ["info", path],
        ["score", checkpoint, "-m", path, "--workers", "0"],
        ["score", checkpoint, "-m", path, "--backend", "openvino", "--device", "cpu"],
    ):
        code, err = _run(argv, capsys)
        assert code == 3 and f"{path} " in err and "ONNX" in err, err
