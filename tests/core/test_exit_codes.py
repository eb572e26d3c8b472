"""Every documented exit code of ``r21d``, each from a real failure, and a bug's traceback."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import yaml
from synthetic import write_video

from r21d import errors
from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.models import build_model, create_spec


def _run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_exit_codes_are_distinct_per_kind_and_documented():
    kinds = {
        errors.BadOptionError: 2,
        errors.InputNotFoundError: 2,
        errors.BadModelFileError: 3,
        errors.BadWeightsError: 4,
        errors.RuntimeUnavailableError: 5,
        errors.MissingPackageError: 5,
        errors.DownloadError: 6,
        errors.ValidationError: 7,
        errors.BadVideoError: 8,
        errors.UnusableDataError: 8,
    }
    for kind, code in kinds.items():
        assert issubclass(kind, errors.R21dError) and kind.exit_code == code, kind
        assert f"\n {code}    " in errors.__doc__, code


def test_0_success(checkpoint, capsys):
    code, err = _run(["info", checkpoint], capsys)
    assert code == 0 and err == ""


def test_1_some_videos_failed_the_rest_scored(checkpoint, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "good.mp4", 16, size=(160, 120))
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "r.jsonl"
    argv = ["score", folder, "--model", checkpoint, "-o", out, "--clips", "1", "--workers", "0"]
    code, _ = _run(argv, capsys)
    assert code == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["error", "ok"]


def test_2_bad_option_or_missing_input(checkpoint, tmp_path, capsys):
    code, err = _run(["score", tmp_path / "nowhere", "--model", checkpoint], capsys)
    assert code == 2 and err.strip() == f"r21d score: error: {tmp_path / 'nowhere'} not found"
    code, err = _run(["score", checkpoint, "--model", checkpoint, "--top-k", "0"], capsys)
    assert code == 2 and "--top-k must be >= 1" in err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage errors use 2 as well
        main(["score", "--no-such-flag"])
    assert usage.value.code == 2


def test_3_unusable_model_file(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json header}")
    code, err = _run(["info", bad], capsys)
    assert code == 3 and err.count("\n") == 1 and "model.safetensors" in err


def test_4_weights_that_do_not_import(tmp_path, capsys):
    blobs = tmp_path / "weights.pkl"
    blobs.write_bytes(pickle.dumps({"blobs": {"conv1_w": [[1.0]]}}, protocol=2))
    argv = ["convert", blobs, "--from", "caffe2", "--arch", "r2plus1d_18", "--clip-len", "8"]
    code, err = _run([*argv, "-o", tmp_path / "out.safetensors"], capsys)
    assert code == 4 and err.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_5_runtime_or_device_unavailable(checkpoint, tmp_path, capsys):
    write_video(tmp_path / "v.mp4", 16, size=(160, 120))
    argv = ["score", tmp_path / "v.mp4", "--model", checkpoint, "--device", "cuda"]
    code, err = _run([*argv, "-o", tmp_path / "r.jsonl"], capsys)
    assert code == 5 and "sees no CUDA GPU" in err


def test_7_export_that_fails_validation_leaves_no_file(tmp_path, capsys):
    """Logits beyond fp16's range (65504) overflow in an fp16 graph: parity fails."""
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125)
    model = build_model(spec)
    with torch.no_grad():
        model.fc.weight.fill_(3e3)  # features ~O(10): logits far past 65504 in fp16
        model.fc.bias.copy_(torch.arange(5.0) * 1e5)
    ckpt = save_checkpoint(model, spec, tmp_path / "hot.safetensors")
    out = tmp_path / "hot.onnx"
    code, err = _run(["export", "onnx", ckpt, "-o", out, "--precision", "fp16"], capsys)
    assert code == 7 and "file not written" in err
    assert not out.exists()


def test_8_training_data_that_cannot_be_decoded(tmp_path, capsys):
    folder = tmp_path / "data"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        (folder / label / "clip.mp4").write_bytes(b"\0" * 64)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"train_manifest": str(folder), "output_dir": str(tmp_path / "run"), "width": 0.125}
        )
    )
    argv = ["train", "--config", config, "--max-steps", "1", "--workers", "0", "--no-progress"]
    code, err = _run([*argv, "--batch-size", "1"], capsys)
    assert code == 8 and "undecodable" in err


def test_an_internal_bug_keeps_its_traceback(checkpoint, monkeypatch):
    """A KeyError inside r21d is a bug, not a user error: it propagates from main()."""
    import r21d.checkpoint

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(r21d.checkpoint, "load_checkpoint", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["info", str(checkpoint)])


def test_the_command_prints_a_bugs_traceback(tmp_path):
    """Through the real entry point: a bug exits 1 with Python's traceback on stderr."""
    code = (
        "import sys, r21d.checkpoint\n"
        "def broken(*a, **k): raise KeyError('a bug')\n"
        "r21d.checkpoint.load_checkpoint = broken\n"
        "from r21d.cli import main\n"
        "sys.exit(main(['info', sys.argv[1]]))\n"
    )
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125)
    ckpt = save_checkpoint(build_model(spec), spec, tmp_path / "m.safetensors")
    run = subprocess.run(
        [sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "KeyError: 'a bug'" in run.stderr


def _with_stdout_closed(argv, cwd) -> subprocess.CompletedProcess:
    """Run ``r21d ARGV`` in a real process whose stdout pipe has no reader (``| head -1``
    after head exited): every write to stdout fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "r21d", *map(str, argv)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            cwd=cwd,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("command", ["info", "download", "score"])
def test_a_closed_output_pipe_is_one_line_and_exit_141(command, checkpoint, tmp_path):
    argv = {
        "info": ["info", checkpoint],
        "download": ["download", "--list", "--cache-dir", tmp_path / "cache"],
        "score": ["score", tmp_path / "v.mp4", "-m", checkpoint, "-o", tmp_path / "r.jsonl"],
    }[command]
    if command == "score":
        write_video(tmp_path / "v.mp4", 16, size=(160, 120))
        argv += ["--clips", "1", "--workers", "1"]
    run = _with_stdout_closed(argv, tmp_path)
    assert run.returncode == 141  # 128 + SIGPIPE, as a shell reports `... | head -1`
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert errors == [f"r21d {command}: error: output pipe closed"]
    if command != "score":  # score also reports its progress on stderr
        assert run.stderr == errors[0] + "\n"
