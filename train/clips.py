"""Training clips: temporal jittering, random crop, optional flip, normalisation (DESIGN s.11).

Decoding reuses the inference decoder (:mod:`r21d.infer.decode`), so training and scoring
resize frames identically: a window of ``clip_len`` frames ``frame_step`` apart, starting at a
random frame, resized to the spec's 128x171 (or short edge), then a random
``crop_size`` x ``crop_size`` crop and, if asked, a horizontal flip. Every random choice comes
from one ``numpy`` generator seeded per draw, so a clip is a pure function of its seed.

Horizontal flips are off by default: they turn "moving left" into "moving right", which is
harmless for most action classes and fatal for direction-sensitive ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from r21d.errors import BadOptionError
from r21d.infer.clips import clip_span
from r21d.infer.decode import decode_window, probe
from r21d.spec import ModelSpec


def normalize(frames: np.ndarray | torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 RGB ``(..., T, H, W, 3)`` -> float ``(..., 3, T, H, W)`` with the spec's mean/std."""
    x = torch.as_tensor(frames).float()
    mean = torch.tensor(spec.mean, dtype=torch.float32)
    std = torch.tensor(spec.std, dtype=torch.float32)
    x = (x - mean) / std
    return x.movedim(-1, -4).contiguous()


def sample_training_clip(
    path: str | Path, spec: ModelSpec, rng: np.random.Generator, *, flip: bool = False
) -> torch.Tensor:
    """One jittered, cropped, normalised training clip ``(3, clip_len, crop, crop)``.

    Raises the decoder's ``VideoError`` for a video that cannot be read.
    """
    info = probe(path)
    span = clip_span(spec.clip_len, spec.frame_step)
    start = int(rng.integers(0, max(1, info.num_frames - span + 1)))
    frames = decode_window(
        path,
        start,
        clip_len=spec.clip_len,
        frame_step=spec.frame_step,
        resize_mode=spec.resize_mode,
        resize_size=spec.resize_size,
    )
    return normalize(random_crop(frames, spec.crop_size, rng, flip=flip), spec)


def random_crop(
    frames: np.ndarray, size: int, rng: np.random.Generator, *, flip: bool = False
) -> np.ndarray:
    """The same random ``size`` x ``size`` window of all frames ``(T, H, W, 3)``, maybe mirrored."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise BadOptionError(f"frames of {h}x{w} are smaller than the {size}x{size} crop")
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    crop = frames[:, y : y + size, x : x + size]
    if flip and rng.random() < 0.5:
        crop = crop[:, :, ::-1]
    return np.ascontiguousarray(crop)
