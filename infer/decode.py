"""Video file -> uint8 RGB clips, decoding only the frames the clips need (DESIGN.md s.6, s.8).

``decode_clips`` places ``num_clips`` windows uniformly over the video (:mod:`.clips`), reads
each window with a :class:`~.frame_reader.FrameReader` (seek to the key frame before it, decode
forward, or keep decoding when the next window is close), scales every used frame inside
libswscale (``reformat(frame, width=..., height=..., format="rgb24")``, bilinear), turns it
upright if the file carries a display rotation, and cuts the crops.

Frame counts: the count in the header (or duration x rate) decides where windows go. When the
stream ends earlier than that, the true count is known and the windows are placed again from it
(once), so a file whose header claims too many frames still gets ``num_clips`` evenly spread
clips. A video shorter than one clip repeats its last frame and is flagged ``short``. A decoding
error in the frames a clip needs (for example ``InvalidDataError`` mid-stream) is a
:class:`VideoError`: clips made of damaged frames are not scored silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from r21d.errors import BadOptionError
from r21d.spec import ModelSpec

from .clips import (
    clip_frame_indices,
    clip_span,
    clip_starts,
    crop_boxes,
    is_short,
    resized_shape,
    stride_frames,
    window_starts,
)
from .frame_reader import FrameReader
from .video_info import (
    VideoError,
    VideoInfo,
    frame_rate,
    header_frame_count,
    open_video,
    stream_duration,
)

Window = list[tuple[int, VideoFrame]]
"""Consecutive decoded frames with their frame indices."""
Box = tuple[int, int, int, int]
"""A crop as (top, left, height, width)."""
Allocator = Callable[[tuple[int, ...], type], np.ndarray]
"""Makes the output array of a shape and dtype (``np.empty`` by default)."""

__all__ = [
    "DecodedClips",
    "VideoError",
    "VideoInfo",
    "decode_clips",
    "decode_for_spec",
    "decode_window",
    "probe",
]


@dataclass
class DecodedClips:
    """Clips of one video, ready for normalisation.

    ``clips`` is uint8 RGB of shape (num_clips * crops, clip_len, H, W, 3), C-contiguous,
    ordered clip-major then crop. ``starts`` are the first frame of each clip; ``short`` is True
    when the video was shorter than one clip and frames were repeated; ``frames_decoded``
    counts every frame the decoder produced for this result.
    """

    clips: np.ndarray
    starts: list[int]
    frames_decoded: int
    info: VideoInfo
    short: bool


def probe(path: str | Path) -> VideoInfo:
    """Frame count, rate, duration, upright size, rotation and start time of a video."""
    with open_video(path) as (container, stream):
        return _open_reader(path, container, stream, keep=1)[1]


def decode_clips(
    path: str | Path,
    *,
    clip_len: int,
    frame_step: int = 1,
    num_clips: int | None = 10,
    resize_mode: str = "fixed",
    resize_size: tuple[int, ...] | int = (128, 171),
    crop_size: int | None = 112,
    crops: int = 1,
    allocate: Allocator = np.empty,
    stride_s: float | None = None,
    part: slice | None = None,
) -> DecodedClips:
    """``num_clips`` uniformly spaced clips of ``clip_len`` frames, resized and cropped.

    ``resize_mode`` is ``"fixed"`` (``resize_size=(h, w)``) or ``"short_edge"``
    (``resize_size=(short_side,)``). ``crop_size=None`` keeps the whole resized frame; ``crops=3``
    takes three crops along the long side (start, centre, end). ``allocate(shape, dtype)``
    makes the output array, so a caller can have the frames written straight into memory it
    shares with another process.

    ``stride_s`` takes sliding windows instead, one every ``stride_s`` seconds from the first
    frame (:func:`.clips.window_starts`; ``num_clips`` is then unused, may be None), and
    ``part`` keeps only those windows (a slice of them), so a long video can be decoded in
    parts of bounded size.
    """
    span = clip_span(clip_len, frame_step)
    if stride_s is None and (num_clips or 0) < 1:
        raise BadOptionError(f"num_clips must be >= 1, got {num_clips}")
    resized_shape(1, 1, resize_mode, resize_size)  # reject a bad mode or size before decoding
    with open_video(path) as (container, stream):
        reader, info = _open_reader(path, container, stream, keep=span)
        height, width = resized_shape(info.height, info.width, resize_mode, resize_size)
        boxes = crop_boxes(height, width, crop_size, crops)
        scaler = FrameScaler(reader.rotation, height, width)
        box_h, box_w = boxes[0][2], boxes[0][3]

        def place(num_frames: int) -> list[int]:
            if stride_s is None:
                return clip_starts(num_frames, clip_len, frame_step, num_clips)
            stride = stride_frames(stride_s, info.fps, clip_len, frame_step)
            return window_starts(num_frames, clip_len, frame_step, stride)[part or slice(None)]

        num_frames = info.num_frames
        count = len(place(num_frames))  # a re-placement after an over-count never adds clips
        clips = allocate((count * len(boxes), clip_len, box_h, box_w, 3), np.uint8)
        for attempt in range(2):  # a second pass only when the header over-counted
            starts = place(num_frames)
            short = is_short(num_frames, clip_len, frame_step)
            for j, start in enumerate(starts):
                frames = reader.read(start, span)
                if len(frames) < span and reader.end is not None:  # the stream ended early
                    _check_not_truncated(path, reader.end, info)
                    sliding = stride_s is not None  # windows past the end are dropped
                    later = j < len(starts) - 1 and reader.end >= span
                    if attempt == 0 and (sliding or later):
                        break  # later windows would start past the end: place them again
                    frames = _last_window(path, reader, span)
                    starts[j] = frames[0][0]
                short = short or len(frames) < span
                out = clips[j * len(boxes) : (j + 1) * len(boxes)]
                _cut_crops(out, frames, frame_step, scaler, boxes)
                scaler.forget_before(frames[0][0])
            else:
                break
            num_frames = reader.end
            scaler.forget_before(None)
        clips = clips[: len(starts) * len(boxes)]

        if reader.end is not None and reader.end != info.num_frames:
            info = replace(
                info,
                num_frames=reader.end,
                duration=reader.end / info.fps,
                frame_count_source="decoded",
            )
        return DecodedClips(clips, starts, reader.frames_decoded, info, short)


def decode_for_spec(
    path: str | Path,
    spec: ModelSpec,
    *,
    num_clips: int | None = 10,
    crops: int = 1,
    full_frame: bool = False,
    allocate: Allocator = np.empty,
    stride_s: float | None = None,
    part: slice | None = None,
) -> DecodedClips:
    """:func:`decode_clips` with clip length, sampling, resizing and crop taken from ``spec``.

    ``full_frame=True`` keeps the whole resized frame (fully-convolutional scoring);
    ``stride_s`` and ``part`` select sliding windows as in :func:`decode_clips`.
    """
    return decode_clips(
        path,
        clip_len=spec.clip_len,
        frame_step=spec.frame_step,
        num_clips=num_clips,
        resize_mode=spec.resize_mode,
        resize_size=spec.resize_size,
        crop_size=None if full_frame else spec.crop_size,
        crops=crops,
        allocate=allocate,
        stride_s=stride_s,
        part=part,
    )


def decode_window(
    path: str | Path,
    start: int,
    *,
    clip_len: int,
    frame_step: int = 1,
    resize_mode: str,
    resize_size: tuple[int, ...] | int,
) -> np.ndarray:
    """One clip starting at frame ``start``, resized but not cropped: (clip_len, H, W, 3) uint8.

    A window running past the end of the video is moved back to end at the last frame; a video
    shorter than the window repeats its last frame.
    """
    span = clip_span(clip_len, frame_step)
    resized_shape(1, 1, resize_mode, resize_size)
    with open_video(path) as (container, stream):
        reader, info = _open_reader(path, container, stream, keep=span)
        height, width = resized_shape(info.height, info.width, resize_mode, resize_size)
        scaler = FrameScaler(reader.rotation, height, width)
        frames = reader.read(start, span)
        if len(frames) < span and reader.end is not None:
            _check_not_truncated(path, reader.end, info)
            frames = _last_window(path, reader, span)
        out = np.empty((1, clip_len, height, width, 3), dtype=np.uint8)
        _cut_crops(out, frames, frame_step, scaler, [(0, 0, height, width)])
        return out[0]


def _open_reader(path, container, stream, keep: int) -> tuple[FrameReader, VideoInfo]:
    """A reader at the start of ``stream`` and the stream's :class:`VideoInfo`."""
    fps = frame_rate(path, stream)
    reader = FrameReader(path, container, stream, fps, keep=keep)
    num_frames, source = header_frame_count(path, container, stream, fps)
    width, height = stream.codec_context.width, stream.codec_context.height
    pixel_aspect = stream.sample_aspect_ratio  # non-square pixels (anamorphic DVD, some phones)
    if pixel_aspect and pixel_aspect > 0 and pixel_aspect != 1:
        width = round(width * pixel_aspect)
    if reader.rotation % 180:
        width, height = height, width
    duration = stream_duration(container, stream)
    info = VideoInfo(
        num_frames=num_frames,
        fps=float(fps),
        duration=duration if duration else float(num_frames / fps),
        width=width,
        height=height,
        rotation=reader.rotation,
        start_time=float(reader.origin * reader.time_base),
        frame_count_source=source,
        codec=stream.codec_context.name,
    )
    return reader, info


MIN_READABLE = 0.5
"""A stream that ends before this fraction of the frames its header promises is truncated."""


def _check_not_truncated(path: str | Path, end: int, info: VideoInfo) -> None:
    """Raise VideoError when far fewer frames could be read than the file claims."""
    if end < info.num_frames * MIN_READABLE:
        promised = {"header": "its header promises", "duration": "its duration implies"}
        claim = promised.get(info.frame_count_source, "its packets promise")
        raise VideoError(
            f"{path}: only {end} frames could be decoded but {claim} {info.num_frames} "
            "(truncated or damaged file)"
        )


def _last_window(path: str | Path, reader: FrameReader, span: int) -> Window:
    """The last ``span`` frames of a stream whose end is known (all of them if fewer)."""
    assert reader.end is not None
    frames = reader.read(max(0, reader.end - span), span)
    if not frames:
        raise VideoError(f"{path}: no frame could be decoded near the end")
    return frames


def _cut_crops(
    out: np.ndarray, frames: Window, frame_step: int, scaler: FrameScaler, boxes: list[Box]
) -> None:
    """Fill ``out`` (crops, clip_len, h, w, 3) from one window of frames.

    Frame k of the clip is window frame ``k * frame_step``; past the end of a short window the
    last frame is repeated (:func:`.clips.clip_frame_indices`).
    """
    clip_len = out.shape[1]
    for k, index in enumerate(clip_frame_indices(0, clip_len, frame_step, len(frames))):
        image = scaler(frames[index])
        for c, (top, left, h, w) in enumerate(boxes):
            out[c, k] = image[top : top + h, left : left + w]


class FrameScaler:
    """Decoded frame -> upright uint8 RGB array of the resized size, memoised by frame index.

    Scaling and the YUV -> RGB conversion happen in one libswscale pass (bilinear). It runs
    single-threaded: the decoder has its own threads and the scoring engine runs several
    decoding processes, so more threads here would only compete with them.
    """

    def __init__(self, rotation: int, height: int, width: int) -> None:
        self._turns = round(rotation / 90) % 4  # np.rot90 turns counter-clockwise, like rotation
        # the stored frame is scaled before it is turned, so a quarter turn swaps its size
        self._size = (height, width) if self._turns % 2 == 0 else (width, height)
        self._done: dict[int, np.ndarray] = {}
        self._reformatter = VideoReformatter()  # one swscale context for the whole video

    def __call__(self, item: tuple[int, VideoFrame]) -> np.ndarray:
        index, frame = item
        if index not in self._done:
            h, w = self._size
            image = self._reformatter.reformat(
                frame, width=w, height=h, format="rgb24", interpolation="BILINEAR", threads=1
            ).to_ndarray()
            self._done[index] = np.rot90(image, self._turns) if self._turns else image
        return self._done[index]

    def forget_before(self, index: int | None) -> None:
        """Drop memoised frames before ``index`` (all of them for None)."""
        self._done = {} if index is None else {i: a for i, a in self._done.items() if i >= index}
