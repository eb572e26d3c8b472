"""Export fixtures: a tiny model with weights that make positions disagree, exported once."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from r21d.checkpoint import save_checkpoint
from r21d.models import build_model, create_spec


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BatchNorm statistics calibrated on structured noise and a wide classifier, so that
    features vary from position to position and probabilities are far from uniform (with
    freshly initialised statistics every position looks alike)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(4, 3, 8, 112, 112, generator=gen)
    clips = noise * torch.linspace(0, 4, 112) + torch.linspace(-2, 2, 112)[:, None]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 1.0  # running statistics := this batch's statistics
        model.train()(clips)
        for bn in bns:
            bn.momentum = 0.1
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=gen) * 0.3)
        model.fc.bias.zero_()
    return model.eval()


@pytest.fixture(scope="session")
def spread():
    """:func:`spread_weights`, for tests that build models of their own."""
    return spread_weights


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
