"""Where clips sit in a video: window arithmetic in time and crop arithmetic in space.

Pure integer arithmetic, no decoding, so every rule of the test-time protocol (DESIGN.md s.6)
can be checked in isolation:

- a clip is ``clip_len`` frames taken every ``frame_step`` frames, so it spans
  ``(clip_len - 1) * frame_step + 1`` frames of the video;
- ``num_clips`` clips start uniformly from the first valid start to the last:
  ``start_i = floor(i * (N - span) / (K - 1))``; one clip sits in the centre;
- a video shorter than one span gets every clip at frame 0 and its missing frames are the
  last frame repeated (not looped: looping would put a jump backwards in time inside the clip).
"""

from __future__ import annotations

from r21d.errors import BadOptionError
from r21d.spec import RESIZE_MODES


def clip_span(clip_len: int, frame_step: int = 1) -> int:
    """Number of video frames one clip covers, first to last frame inclusive."""
    if clip_len < 1:
        raise BadOptionError(f"clip_len must be >= 1, got {clip_len}")
    if frame_step < 1:
        raise BadOptionError(f"frame_step must be >= 1, got {frame_step}")
    return (clip_len - 1) * frame_step + 1


def clip_starts(
    num_frames: int, clip_len: int, frame_step: int = 1, num_clips: int = 10
) -> list[int]:
    """First frame of each of ``num_clips`` uniformly spaced clips (DESIGN.md s.6).

    ``start_i = floor(i * (N - span) / (K - 1))`` for K > 1, the centre start for K = 1, and all
    zeros when the video is shorter than one clip span (see :func:`clip_frame_indices`).
    """
    span = clip_span(clip_len, frame_step)
    if num_clips < 1:
        raise BadOptionError(f"num_clips must be >= 1, got {num_clips}")
    if num_frames < 0:
        raise BadOptionError(f"num_frames must be >= 0, got {num_frames}")
    room = num_frames - span
    if room <= 0:
        return [0] * num_clips
    if num_clips == 1:
        return [room // 2]
    return [i * room // (num_clips - 1) for i in range(num_clips)]


def stride_frames(stride_s: float | None, fps: float, clip_len: int, frame_step: int = 1) -> int:
    """Frames between the starts of consecutive sliding windows: ``stride_s`` seconds at
    ``fps`` rounded to whole frames (at least one), or half a window span for ``None``."""
    span = clip_span(clip_len, frame_step)
    if stride_s is None:
        return max(1, span // 2)
    if not stride_s > 0:
        raise BadOptionError(f"the window stride must be > 0 seconds, got {stride_s}")
    if not fps > 0:
        raise BadOptionError(f"a stride in seconds needs a frame rate, got {fps} fps")
    return max(1, round(stride_s * fps))


def window_starts(num_frames: int, clip_len: int, frame_step: int, stride: int) -> list[int]:
    """First frame of every sliding window: ``0, stride, 2*stride, ...`` while a whole window
    fits (the tail after the last one is not covered); one window at 0 when the video is
    shorter than one span (its last frame repeated, see :func:`clip_frame_indices`)."""
    span = clip_span(clip_len, frame_step)
    if stride < 1:
        raise BadOptionError(f"the window stride must be >= 1 frame, got {stride}")
    if num_frames < 0:
        raise BadOptionError(f"num_frames must be >= 0, got {num_frames}")
    return list(range(0, max(1, num_frames - span + 1), stride))


def clip_frame_indices(start: int, clip_len: int, frame_step: int, num_frames: int) -> list[int]:
    """Video frame indices of the clip starting at ``start``.

    Indices past the end of a short video are clamped to the last frame, i.e. the last frame
    is repeated; :func:`is_short` tells whether that happens.
    """
    clip_span(clip_len, frame_step)
    if num_frames < 1:
        raise BadOptionError(f"a clip needs at least one frame, the video has {num_frames}")
    last = num_frames - 1
    return [min(start + k * frame_step, last) for k in range(clip_len)]


def is_short(num_frames: int, clip_len: int, frame_step: int = 1) -> bool:
    """True when the video is shorter than one clip span, so frames must be repeated."""
    return num_frames < clip_span(clip_len, frame_step)


def resized_shape(
    height: int, width: int, resize_mode: str, resize_size: tuple[int, ...] | int
) -> tuple[int, int]:
    """(height, width) of an upright ``height x width`` frame after resizing.

    ``fixed``: exactly ``resize_size = (h, w)``, aspect not kept (Caffe2's 128x171).
    ``short_edge``: the short side becomes ``resize_size[0]``, the long side keeps the aspect
    ratio, rounded to the nearest pixel.
    """
    size = (resize_size,) if isinstance(resize_size, int) else tuple(resize_size)
    if resize_mode == "fixed":
        if len(size) != 2 or min(size) < 1:
            raise BadOptionError(f"fixed resizing needs resize_size=(height, width), got {size}")
        return size[0], size[1]
    if resize_mode == "short_edge":
        if len(size) != 1 or size[0] < 1:
            raise BadOptionError(f"short_edge resizing needs resize_size=(short_side,), got {size}")
        short = size[0]
        if height <= width:
            return short, max(short, round(width * short / height))
        return max(short, round(height * short / width)), short
    raise BadOptionError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def crop_boxes(
    height: int, width: int, crop_size: int | None, crops: int = 1
) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each crop of a ``height x width`` frame.

    ``crop_size=None`` is the whole frame (fully-convolutional scoring). One crop is centred;
    three crops sit at the start, centre and end of the long side (left/centre/right for a
    landscape frame, top/centre/bottom for a portrait one), centred on the short side.
    """
    if crops not in (1, 3):
        raise BadOptionError(f"crops must be 1 or 3, got {crops}")
    if crop_size is None:
        if crops != 1:
            raise BadOptionError("three crops need a crop_size; crop_size=None is the whole frame")
        return [(0, 0, height, width)]
    if not 1 <= crop_size <= min(height, width):
        raise BadOptionError(f"crop_size {crop_size} does not fit a {height}x{width} frame")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    if crops == 1:
        return [(top, left, crop_size, crop_size)]
    if width >= height:
        return [(top, x, crop_size, crop_size) for x in (0, left, width - crop_size)]
    return [(y, left, crop_size, crop_size) for y in (0, top, height - crop_size)]
