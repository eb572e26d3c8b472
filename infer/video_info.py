"""Opening a video file and reading what it holds: frame count, rate, size, rotation.

Every way a file can fail to open becomes a :class:`VideoError` with one specific message, so
a batch scorer can report the file and carry on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.container import InputContainer
from av.video.stream import VideoStream

from r21d.errors import BadVideoError


class VideoError(BadVideoError):
    """A video that cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video stream holds.

    ``num_frames`` comes from ``frame_count_source``: ``"header"`` (the container's frame
    count), ``"duration"`` (duration x frame rate, for MKV/WebM/TS headers without a count) or
    ``"decoded"`` (counted by reading the file: demuxing packets when neither is known, or the
    frames actually decoded when the header claimed more than exist). ``fps`` is the average
    rate (frames / duration), also for variable-frame-rate files. ``width`` and ``height`` are
    the displayed size: non-square pixels stretched to square ones and the display ``rotation``
    (degrees counter-clockwise, as ``frame.rotation`` reports it) applied. ``start_time`` is
    the presentation time (s) of the first frame; MPEG-TS streams often start late.
    """

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int
    start_time: float
    frame_count_source: str
    codec: str = ""


@contextmanager
def open_video(path: str | Path) -> Iterator[tuple[InputContainer, VideoStream]]:
    """Open ``path`` and yield its container and first video stream (threaded decoding)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video file ({_reason(e)})") from None
    try:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise VideoError(f"{path}: no video stream (streams found: {kinds})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoError(f"{path}: no decoder for its video codec")
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def frame_rate(path: str | Path, stream: VideoStream) -> Fraction:
    """Average frame rate of the stream (falls back to the guessed and base rates)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise VideoError(f"{path}: the video stream has no usable frame rate")


def stream_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """Duration (s) of the video stream: its header, its DURATION tag (MKV), else the file's.

    The file's duration is the longest stream's, so it can over-estimate the video when the
    audio runs longer; it is only the last resort.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = _parse_clock(stream.metadata.get("DURATION", ""))
    if tag:
        return tag
    if container.duration:
        return container.duration / av.time_base
    return None


def _parse_clock(text: str) -> float | None:
    """Seconds in an ``HH:MM:SS.fraction`` tag, or None."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        return None
    try:
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def header_frame_count(
    path: str | Path, container: InputContainer, stream: VideoStream, fps: Fraction
) -> tuple[int, str]:
    """(frame count, source) from the header, else duration x rate, else counting packets."""
    if stream.frames > 0:
        return stream.frames, "header"
    duration = stream_duration(container, stream)
    if duration:
        return max(1, round(duration * fps)), "duration"
    return count_packets(path), "decoded"


def count_packets(path: str | Path) -> int:
    """Number of video packets in the file, read without decoding (one packet per frame)."""
    with open_video(path) as (container, stream):
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as e:
            raise VideoError(
                f"{path}: cannot read the file to count frames ({_reason(e)})"
            ) from None


def _reason(error: av.FFmpegError) -> str:
    """FFmpeg's own words for an error, without the errno noise."""
    return error.strerror or str(error)
