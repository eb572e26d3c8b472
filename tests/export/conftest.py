"""Export fixtures: the tiny model (tests/conftest.py) saved and exported once."""

from __future__ import annotations

import contextlib
import io

import pytest

from r21d.checkpoint import save_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """The tiny model as an r21d checkpoint."""
    return save_checkpoint(*tiny_model, tmp_path_factory.mktemp("tiny_ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """The tiny model saved as a checkpoint and exported with ``r21d export onnx`` (uint8,
    fp32, validated at the default shapes); returns (onnx path, printed output)."""
    from r21d.cli import main

    folder = tmp_path_factory.mktemp("tiny_onnx")
    ckpt = save_checkpoint(*tiny_model, folder / "tiny.safetensors")
    out = folder / "tiny.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "onnx", str(ckpt), "-o", str(out)]) == 0
    return out, printed.getvalue()
