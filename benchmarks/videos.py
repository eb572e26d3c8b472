"""Videos to benchmark on: the real clips in ../shared/videos, and synthetic H.264 videos
written once into the cache (a 10-second one and a long one with the same codec, size and
key-frame interval, for the "decode only what the clips need" check)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
"""The real test clips (never committed; see their MANIFEST.md)."""

REAL_CLIPS = ("arm_wrestling.mp4", "flipping_pancake.mkv", "filling_eyebrows.avi")
"""The real clips that decode fully and carry a Kinetics-400 label (MANIFEST.md)."""

REAL_LABELS = {
    "arm_wrestling.mp4": "arm wrestling",
    "flipping_pancake.mkv": "flipping pancake",
    "filling_eyebrows.avi": "filling eyebrows",
}


def real_clips(folder: Path = SHARED_VIDEOS) -> list[Path]:
    """The labelled real clips that exist under ``folder`` (empty where it is absent)."""
    return [folder / name for name in REAL_CLIPS if (folder / name).is_file()]


def write_synthetic_video(
    path: str | Path,
    seconds: float,
    *,
    fps: int = 30,
    size: tuple[int, int] = (128, 160),
    keyframe_seconds: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write an H.264 MP4 of moving textured noise, ``size`` = (height, width), with a key
    frame every ``keyframe_seconds`` (and no scene-cut key frames, so the interval is exact).

    Written to a temporary name and renamed, so an interrupted run never leaves a half video
    that a later run would take for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    rng = np.random.default_rng(seed)
    # A texture twice the frame size; each frame is a shifted window of it (cheap to make,
    # and real motion for the encoder, unlike pure noise that no codec compresses).
    # Made of 8x8 blocks, which the codec compresses well.
    blocks = rng.integers(0, 256, (2 * height // 8 + 1, 2 * width // 8 + 1, 3), dtype=np.uint8)
    texture = blocks.repeat(8, axis=0).repeat(8, axis=1)[: 2 * height, : 2 * width]
    n_frames = round(seconds * fps)
    gop = max(1, round(keyframe_seconds * fps))
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "preset": "ultrafast",
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "bf": "0",
        }
        for i in tqdm(range(n_frames), desc=f"writing {path.name}", leave=False, unit="frame"):
            dy, dx = (3 * i) % height, (5 * i) % width
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(texture[dy : dy + height, dx : dx + width]), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.replace(path)
    return path


def cached_video(
    cache_dir: str | Path,
    seconds: float,
    *,
    fps: int = 30,
    size: tuple[int, int] = (128, 160),
    keyframe_seconds: float = 2.0,
) -> Path:
    """A synthetic video from the cache, written on first use."""
    name = f"synthetic_{seconds:g}s_{size[0]}x{size[1]}_{fps}fps_k{keyframe_seconds:g}.mp4"
    path = Path(cache_dir) / "videos" / name
    if not path.is_file():
        write_synthetic_video(path, seconds, fps=fps, size=size, keyframe_seconds=keyframe_seconds)
    return path


def keyframe_interval(path: str | Path) -> int:
    """The largest distance, in frames, between consecutive key frames (demuxing only)."""
    flags = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        flags = [p.is_keyframe for p in container.demux(stream) if p.size]
    keys = [i for i, key in enumerate(flags) if key]
    return int(max(np.diff([*keys, len(flags)]))) if keys else len(flags)
