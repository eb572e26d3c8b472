"""Export fixtures: a tiny model with weights that make positions disagree, exported once."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from export_helpers import spread_weights

from r21d.checkpoint import save_checkpoint
from r21d.models import build_model, create_spec


@pytest.fixture(scope="session")
def tiny_model():
    """(model, spec): the tiny_spec model (R(2+1)D-18 at 1/8 width, 5 classes, 8 frames)."""
    spec = create_spec("r2plus1d_18", 5, 8, width=0.125, labels=("a", "b", "c", "d", "e"))
    torch.manual_seed(0)
    return spread_weights(build_model(spec)), spec


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
