"""Synthetic motion videos shared by the training tests.

Two classes that only motion tells apart: a bright square on a dark background moving left or
right (random start position and colours per video, the same appearance statistics in both
classes). Written once per test session at 172x128 (the decoder resizes to 128x171).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import write_video

from r21d.train.data import VideoRecord, write_manifest

DIRECTIONS = ("left", "right")
FRAMES = 24
SIZE = (172, 128)  # (width, height), even numbers for yuv420p


def write_motion_set(folder: Path, per_class: int, seed: int) -> Path:
    """``per_class`` videos of each direction and a JSONL manifest listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for label, direction in enumerate(DIRECTIONS):
        for i in range(per_class):
            path = folder / f"{direction}_{i:02d}.mp4"
            write_video(
                path,
                FRAMES,
                size=SIZE,
                pattern="moving_square",
                direction=direction,
                seed=seed * 1000 + label * 100 + i,
            )
            records.append(VideoRecord(path, (label,)))
    return write_manifest(records, DIRECTIONS, folder / "manifest.jsonl")


@pytest.fixture(scope="session")
def motion_videos(tmp_path_factory) -> dict[str, Path]:
    """Manifests of a training set (16 per class) and a held-out set (6 per class)."""
    root = tmp_path_factory.mktemp("motion")
    return {
        "train": write_motion_set(root / "train", per_class=16, seed=1),
        "val": write_motion_set(root / "val", per_class=6, seed=2),
    }
