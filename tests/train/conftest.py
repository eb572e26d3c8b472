"""Synthetic motion videos shared by the training tests.

Two classes that only motion tells apart: a bright square on a dark background crossing the
middle of the frame, a few pixels a frame, left or right. Videos come in pairs, one the other
played backwards: both hold exactly the same frames (position, colours, speed are random per
pair), so appearance carries no information about the class, and a model cannot memorise a
video's look as a shortcut. Only the order of the frames, i.e. motion, separates the classes.
Written once per test session at 172x128; the decoder resizes them to the spec's 128x171.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import write_video

from r21d.train.data import VideoRecord, write_manifest

DIRECTIONS = ("left", "right")
FRAMES = 24
WIDTH, HEIGHT = 172, 128  # even numbers for yuv420p
SIDE = 32


def rightward_frames(rng: np.random.Generator) -> np.ndarray:
    """``FRAMES`` uint8 RGB frames of a square crossing the middle of the frame to the right."""
    speed = int(rng.integers(4, 6))  # pixels per frame
    slack = WIDTH - SIDE - speed * (FRAMES - 1)
    x0 = slack // 2 + int(rng.integers(-slack // 4, slack // 4 + 1))
    y = int(rng.integers(0, HEIGHT - SIDE + 1))
    frames = np.empty((FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames[:] = rng.integers(0, 60, size=3, dtype=np.uint8)
    colour = rng.integers(180, 256, size=3, dtype=np.uint8)
    for t in range(FRAMES):
        x = x0 + speed * t
        frames[t, y : y + SIDE, x : x + SIDE] = colour
    return frames


def write_motion_set(folder: Path, pairs: int, seed: int) -> Path:
    """``pairs`` right-moving videos and their time reversals, and a JSONL manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(pairs):
        right = rightward_frames(rng)
        for label, frames in ((0, right[::-1]), (1, right)):
            path = write_video(folder / f"{DIRECTIONS[label]}_{i:02d}.mp4", frames)
            records.append(VideoRecord(path, (label,)))
    return write_manifest(records, DIRECTIONS, folder / "manifest.jsonl")


@pytest.fixture(scope="session")
def motion_videos(tmp_path_factory) -> dict[str, Path]:
    """Manifests of a training set (16 videos per class) and a held-out set (6 per class)."""
    root = tmp_path_factory.mktemp("motion")
    return {
        "train": write_motion_set(root / "train", pairs=16, seed=1),
        "val": write_motion_set(root / "val", pairs=6, seed=2),
    }
