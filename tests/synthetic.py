"""Write small deterministic test videos with PyAV, and read back what they encode.

Tests import this module (``from synthetic import write_video, read_index``; ``tests/`` is on
``sys.path`` because ``tests/conftest.py`` lives there) to make videos in ``tmp_path`` instead of
committing binary fixtures. Two patterns:

- ``"index"``: every frame shows its own frame index as a 4x4 grid of black/white cells (16
  bits, most significant bit top-left). :func:`read_index` reads it back from a decoded frame of
  any size, so a test can prove that seeking and timestamp ordering returned the right frames.
- ``"moving_square"``: a white square on a dark background moving a fixed number of pixels per
  frame in ``direction`` (degrees counter-clockwise from "right", or one of ``"right"``,
  ``"left"``, ``"up"``, ``"down"``), wrapping around the edges. Videos that differ only in
  ``direction`` make a motion-only classification task; ``seed`` moves the starting point and
  the colours so samples of one class are not identical.

The container comes from the file suffix (``.mp4``, ``.mkv``, ``.avi``, ``.mov``, ``.ts``).
"""

from __future__ import annotations

import contextlib
import io
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = 4
"""The index pattern is a GRID x GRID grid of cells, one bit each."""
MAX_INDEX = 2 ** (GRID * GRID) - 1

DIRECTIONS = {"right": 0.0, "up": 90.0, "left": 180.0, "down": 270.0}
VFR_PATTERN = (0.5, 1.0, 1.5)
"""Frame durations of a ``vfr=True`` video, in units of 1/fps, repeated (average rate = fps)."""


def index_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame (h, w, 3) whose 4x4 cell grid spells ``index`` in binary."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} does not fit in {GRID * GRID} bits")
    width, height = size
    bits = [(index >> (GRID * GRID - 1 - b)) & 1 for b in range(GRID * GRID)]
    cells = np.array(bits, dtype=np.uint8).reshape(GRID, GRID) * 255
    rows = np.arange(height) * GRID // height
    cols = np.arange(width) * GRID // width
    return np.repeat(cells[rows][:, cols][:, :, None], 3, axis=2)


def read_index(frame: np.ndarray) -> int:
    """The index spelled by an :func:`index_frame` after encoding, decoding and resizing.

    Each bit is the mean brightness of the middle half of its cell, thresholded at 128.
    """
    height, width = frame.shape[:2]
    gray = frame.astype(np.float32).mean(axis=2)
    value = 0
    for r in range(GRID):
        for c in range(GRID):
            y0, y1 = (4 * r + 1) * height // (4 * GRID), (4 * r + 3) * height // (4 * GRID)
            x0, x1 = (4 * c + 1) * width // (4 * GRID), (4 * c + 3) * width // (4 * GRID)
            value = (value << 1) | int(gray[y0:y1, x0:x1].mean() > 128)
    return value


def moving_square_frame(
    index: int, size: tuple[int, int], direction: str | float = "right", seed: int = 0
) -> np.ndarray:
    """Frame ``index`` of a square moving ``size/16`` pixels per frame in ``direction``."""
    width, height = size
    angle = math.radians(DIRECTIONS[direction] if isinstance(direction, str) else direction)
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    background = rng.integers(10, 60, size=3, dtype=np.uint8)
    colour = rng.integers(190, 256, size=3, dtype=np.uint8)
    speed = max(width, height) / 16
    side = max(4, min(width, height) // 4)
    x = int(x0 + index * speed * math.cos(angle)) % width
    y = int(y0 - index * speed * math.sin(angle)) % height  # image y grows downwards
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = background
    ys = (y + np.arange(side)) % height
    xs = (x + np.arange(side)) % width
    frame[np.ix_(ys, xs)] = colour
    return frame


def vfr_times(num_frames: int, fps: float) -> list[float]:
    """Presentation times (s) of the frames of a ``vfr=True`` video."""
    times, t = [], 0.0
    for i in range(num_frames):
        times.append(t)
        t += VFR_PATTERN[i % len(VFR_PATTERN)] / fps
    return times


def write_video(
    path: str | Path,
    frames: int | np.ndarray = 48,
    *,
    fps: int = 25,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    gop: int = 12,
    bframes: int = 0,
    rotation: float | None = None,
    pattern: str = "index",
    direction: str | float = "right",
    seed: int = 0,
    vfr: bool = False,
    start: float = 0.0,
    faststart: bool = False,
    streamed: bool = False,
    pixel_aspect: Fraction | None = None,
) -> Path:
    """Write a video and return its path.

    ``frames`` is a frame count (content from ``pattern``) or an array (n, h, w, 3) of uint8
    RGB frames. ``size`` is (width, height), even numbers. ``gop`` is the exact key-frame
    interval; ``bframes`` > 0 makes the decode order differ from the presentation order.
    ``rotation`` stores a display rotation (degrees counter-clockwise, as ``frame.rotation``
    reads it back). ``vfr`` gives frames the irregular durations of :data:`VFR_PATTERN`.
    ``start`` is the time (s) of the first frame (MPEG-TS files usually start late).
    ``faststart`` puts the MP4 index before the frames, so a truncated copy still opens.
    ``streamed`` writes an MKV as if to a pipe: no frame count, duration or seek index.
    ``pixel_aspect`` stores non-square pixels (displayed width = width x pixel_aspect).
    """
    path = Path(path)
    if isinstance(frames, np.ndarray):
        images = list(frames)
        size = (frames.shape[2], frames.shape[1])
    elif pattern == "index":
        images = [index_frame(i, size) for i in range(frames)]
    elif pattern == "moving_square":
        images = [moving_square_frame(i, size, direction, seed) for i in range(frames)]
    else:
        raise ValueError(f"unknown pattern {pattern!r}; use 'index' or 'moving_square'")

    time_base = Fraction(1, 1000) if vfr else Fraction(1, fps)
    times = vfr_times(len(images), fps) if vfr else [i / fps for i in range(len(images))]
    options = {"movflags": "faststart"} if faststart else {}
    if streamed and path.suffix != ".mkv":
        raise ValueError("streamed=True writes MKV only")
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_Unseekable(path)) if streamed else str(path)
        fmt = "matroska" if streamed else None
        container = stack.enter_context(av.open(target, "w", format=fmt, options=options))
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {
                "preset": "ultrafast",
                "crf": "12",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
            }
        else:
            stream.codec_context.max_b_frames = bframes
            stream.codec_context.bit_rate = 4_000_000
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pixel_aspect is not None:
            stream.codec_context.sample_aspect_ratio = pixel_aspect
        for image, t in zip(images, times, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = round((start + t) / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


class _Unseekable(io.RawIOBase):
    """A write-only file that cannot seek, so muxers write it like a live stream."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed in close())

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()
        super().close()
