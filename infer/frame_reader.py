"""Decoding the frames of a video by index, touching only the parts that are asked for.

:class:`FrameReader` hands out runs of consecutive frames (``read(start, count)``). For each run
it either keeps decoding forward from where it is, when the gap is no longer than the key-frame
interval seen so far, or seeks to the key frame before ``start``
(``container.seek(pts, stream=stream, backward=True)``) and decodes forward from there, dropping
the frames before ``start``. The cost of reading K windows is therefore about K x (window +
key-frame interval) decoded frames, whatever the length of the video.

Frame index <-> time: frame ``i`` is the first frame presented at or after
``origin + i / fps`` (within half a frame), where ``origin`` is the first frame's timestamp and
``fps`` the stream's average rate. For constant-rate video that is exactly the i-th frame. For
variable-rate video it places a window's start by time (so windows are spread evenly in time,
not in frame count) and the frames of a window are the consecutive frames decoded from there.

Timestamps: frames are used in the decoder's output order, which is presentation order. The
timestamp used for locating frames is ``frame.pts``, unless the first frames' pts are not
increasing while their dts are (AVI files with packed B-frames label frames with the pts of
the wrong packet); then ``frame.dts`` is used, like FFmpeg's best-effort timestamp.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Generator, Iterator
from fractions import Fraction
from pathlib import Path

import av
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from r21d.errors import BadOptionError

from .video_info import VideoError

LOOKAHEAD = 8
"""Frames decoded at open to learn the first timestamp, the rotation and the timestamp clock."""
SEEK_TRIES = 4
"""Seeks tried, each further before the target, before decoding from the first frame."""

Timed = tuple[Fraction, VideoFrame]


class FrameReader:
    """Consecutive runs of decoded frames of one stream, by frame index.

    ``keep`` is the longest run that will be asked for; the reader holds that many recent
    frames so overlapping runs are not decoded twice. ``gop`` is the largest key-frame interval
    seen (at least one second of frames): a run starting at most that far ahead is reached by
    decoding forward, a farther one by seeking. ``frames_decoded`` counts every frame the
    decoder produced, including the ones dropped on the way to a wanted frame. ``end`` is the
    index one past the last frame once decoding has reached the end of the stream.
    """

    def __init__(
        self,
        path: str | Path,
        container: InputContainer,
        stream: VideoStream,
        fps: Fraction,
        keep: int,
    ) -> None:
        self.path = str(path)
        self.frames_decoded = 0
        self.end: int | None = None
        self._min_gop = max(1, round(fps))  # until a key-frame interval is seen: one second
        self.gop = self._min_gop
        self._container = container
        self._stream = stream
        self._step = 1 / (fps * Fraction(stream.time_base))  # timestamp ticks per frame
        self._history: deque[tuple[int, VideoFrame]] = deque(maxlen=keep)
        self._next = 0
        self._last_key: int | None = None
        self.origin = self._last_ts = Fraction(0)

        raw = self._decode()
        head = list(itertools.islice(raw, LOOKAHEAD))
        if not head:
            raise VideoError(f"{self.path}: no video frame could be decoded")
        self._use_dts = _dts_is_better(head)
        # display rotation in degrees counter-clockwise, normalised to (-180, 180]
        self.rotation = -((180 - round(head[0].rotation or 0)) % 360 - 180)
        self.origin = _timestamp(head[0], self._use_dts) or Fraction(0)
        self._last_ts = self.origin
        self._frames: Generator[Timed, None, None] | None = self._timed(itertools.chain(head, raw))

    @property
    def time_base(self) -> Fraction:
        """Unit of the timestamps (seconds per tick)."""
        return Fraction(self._stream.time_base)

    def read(self, start: int, count: int) -> list[tuple[int, VideoFrame]]:
        """Frames ``start .. start+count-1`` as (index, frame), fewer where the stream ends."""
        if start < 0 or count < 1:
            raise BadOptionError(f"bad frame range: start {start}, count {count}")
        stop = start + count if self.end is None else min(start + count, self.end)
        first_held = self._history[0][0] if self._history else self._next
        held = first_held <= start
        cheap_forward = self._frames is not None and start - self._next <= self.gop
        if not (held and (self._next >= stop or cheap_forward)):
            self._seek(start)
        while self._next < stop and self._frames is not None:
            item = next(self._frames, None)
            if item is None:
                self.end = self._next
                self._frames = None
                break
            self._push(item[1])
        return [(i, f) for i, f in self._history if start <= i < stop]

    def _push(self, frame: VideoFrame) -> None:
        """Append the next frame in presentation order; learn the key-frame interval."""
        if frame.key_frame:
            if self._last_key is not None and self._next > self._last_key:
                self.gop = max(self.gop, self._next - self._last_key)
            self._last_key = self._next
        self._history.append((self._next, frame))
        self._next += 1

    def _seek(self, start: int) -> None:
        """Jump to a key frame before frame ``start`` and decode up to it."""
        target = self.origin + start * self._step
        landed = None
        margin = 0  # frames to seek before the target when a seek lands after it
        for _ in range(SEEK_TRIES):
            if target - margin * self._step <= self.origin:
                break
            landed = self._seek_and_drop(target, target - margin * self._step)
            if landed is not None:
                break
            margin = 2 * margin if margin else max(self.gop, self._min_gop)
        if landed is None:  # decode from the first frame, where no seek can go wrong
            landed = self._seek_and_drop(target, None)
        before, first, dropped = landed
        self.gop = max(self.gop, dropped)
        self._history.clear()
        self._last_key = None
        if first is None:  # the target lies past the last frame: index what came before by time
            last = round((before[-1][0] - self.origin) / self._step) if before else start - 1
            self.end = max(0, last + 1)
            before = before[len(before) - min(len(before), self.end) :]
            self._next = self.end - len(before)
        else:
            before = before[len(before) - min(len(before), start) :]
            self._next = start - len(before)
        for _, frame in before:
            self._push(frame)
        if first is not None:
            self._push(first[1])

    def _seek_and_drop(
        self, target: Fraction, seek_to: Fraction | None
    ) -> tuple[list[Timed], Timed | None, int] | None:
        """Seek to ``seek_to`` (None: the first frame), decode up to the frame at ``target``.

        After a real seek, frames before the first key frame are dropped (the demuxer may land
        on any packet, e.g. in MPEG-TS, and those frames were decoded without their references),
        and the seek has failed, returning None, if no key frame comes before the target.
        Returns the last ``keep`` frames before the target, the first frame at or after it
        (None when the stream ends first) and how many frames lay between the key frame and
        the target (a lower bound of the key-frame interval).
        """
        if self._frames is not None:
            self._frames.close()
        try:
            self._container.seek(
                math.floor(self.origin if seek_to is None else seek_to),
                stream=self._stream,
                backward=True,
            )
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: cannot seek in this file ({e.strerror or e})") from None
        self._frames = self._timed(self._decode())
        latest = target + self._step / 2
        keyed = seek_to is None
        before: deque[Timed] = deque(maxlen=self._history.maxlen)
        dropped = 0
        for ts, frame in self._frames:
            if not keyed:
                if ts > latest:
                    return None
                if not frame.key_frame:
                    continue
                keyed = True
            if ts >= target - self._step / 2:
                return list(before), (ts, frame), dropped
            before.append((ts, frame))
            dropped += 1
        self._frames = None
        return (list(before), None, dropped) if keyed else None

    def _decode(self) -> Iterator[VideoFrame]:
        """Decoder output from the current position; decoding errors become VideoError."""
        try:
            for frame in self._container.decode(self._stream):
                self.frames_decoded += 1
                yield frame
        except av.FFmpegError as e:
            seconds = float((self._last_ts - self.origin) * self.time_base)
            what = "corrupt video data" if isinstance(e, av.InvalidDataError) else "decoding failed"
            raise VideoError(
                f"{self.path}: {what} after {seconds:.2f} s ({e.strerror or e})"
            ) from None

    def _timed(self, frames: Iterator[VideoFrame]) -> Generator[Timed, None, None]:
        """(timestamp, frame) pairs; a frame without a timestamp gets the previous one + 1."""
        previous: Fraction | None = None
        for frame in frames:
            ts = _timestamp(frame, self._use_dts)
            if ts is None:
                ts = self.origin if previous is None else previous + self._step
            previous = self._last_ts = ts
            yield ts, frame


def _timestamp(frame: VideoFrame, use_dts: bool) -> Fraction | None:
    value = frame.dts if use_dts else frame.pts
    return None if value is None else Fraction(value)


def _dts_is_better(frames: list[VideoFrame]) -> bool:
    """True when pts go backwards in decoder output order but dts increase steadily."""

    def increasing(values: list[int | None]) -> bool:
        return None not in values and all(a < b for a, b in itertools.pairwise(values))

    return not increasing([f.pts for f in frames]) and increasing([f.dts for f in frames])
