"""``r21d stream``: score a live source window by window as its frames arrive.

Sources are whatever PyAV opens: a file, a URL (``rtsp://``, ``http(s)://``, ``udp://``,
``srt://``, ...) or a capture device (``/dev/video0``, read with ``v4l2``; other devices with
``input_format`` ``avfoundation``, ``dshow``, ...; DESIGN.md s.14).

Windows are the model's own: ``clip_len`` frames every ``frame_step`` frames, one window
starting every stride frames (``stride_s`` seconds, default half a window), resized as the spec
says and centre-cropped (:class:`WindowAssembler`). Two threads:

- the reader (:class:`_Reader`) decodes every frame as it arrives, scales only the frames some
  window uses, and hands each completed window over (:class:`_Handoff`);
- the caller's thread runs the model on one window at a time (batch 1, lowest latency), then
  emits one record per window: times, frames, top-k, the moving average over the last
  ``smooth`` windows, the label above ``threshold``, and the latency from the window's last
  frame arriving to its result.

A live source keeps up by skipping windows: when a window completes while the model is still
busy, the one waiting (not yet started) is replaced by the newer one and counted as skipped; the
frame step is never changed. A file is read only as fast as the model scores it (every window
scored) unless ``realtime`` paces it at its frame rate like a camera. The run ends when the
source ends, or when no frame arrives for ``idle_timeout`` seconds; with ``reconnect`` a
network source that drops or ends is opened again until ``idle_timeout`` passes without a
frame.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from r21d.errors import BadOptionError, BadVideoError, InputNotFoundError
from r21d.infer.clips import clip_span, crop_boxes, resized_shape, stride_frames
from r21d.infer.decode import FrameScaler
from r21d.infer.windows import (
    DEFAULT_THRESHOLD,
    MovingAverage,
    ScoredWindow,
    check_threshold,
    window_label,
    window_record,
)
from r21d.spec import ModelSpec

if TYPE_CHECKING:
    from r21d.infer.backends import Backend

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtp", "http", "https", "udp", "tcp", "srt", "hls")
"""URL schemes of network sources (the ones ``reconnect`` applies to)."""
DEVICE_PREFIX = "/dev/"
RECONNECT_PAUSE_S = 0.5
"""Seconds between attempts to open a dropped network source again."""
JOIN_S = 5.0
"""Seconds to wait for the reader thread when the run stops."""


class StreamError(BadVideoError):
    """A live source that cannot be opened or read; the message names it and says why."""


@dataclass(frozen=True)
class StreamOptions:
    """How a source is read and its windows are scored and reported.

    ``input_format`` is PyAV's ``format`` (``v4l2``, ``avfoundation``, ``mpegts``, ...;
    ``v4l2`` by default for ``/dev/video*``) and ``input_options`` its demuxer/protocol options.
    ``realtime`` (None: live sources only) skips windows to keep up instead of waiting for the
    model; a file with ``realtime=True`` is paced at its frame rate. ``max_windows`` stops
    after that many scored windows.
    """

    stride_s: float | None = None
    smooth: int = 1
    threshold: float = DEFAULT_THRESHOLD
    top_k: int = 5
    idle_timeout: float = 10.0
    reconnect: bool = False
    input_format: str | None = None
    input_options: dict[str, str] = field(default_factory=dict)
    realtime: bool | None = None
    max_windows: int | None = None

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if self.smooth < 1:
            raise BadOptionError(f"--smooth must be >= 1 window, got {self.smooth}")
        if self.top_k < 1:
            raise BadOptionError(f"--top-k must be >= 1, got {self.top_k}")
        if not self.idle_timeout > 0:
            raise BadOptionError(f"--idle-timeout must be > 0 seconds, got {self.idle_timeout}")
        if self.stride_s is not None and not self.stride_s > 0:
            raise BadOptionError(f"--stride-s must be > 0 seconds, got {self.stride_s}")
        if self.max_windows is not None and self.max_windows < 1:
            raise BadOptionError(f"--max-windows must be >= 1, got {self.max_windows}")


def source_kind(source: str) -> str:
    """``network`` (a URL), ``device`` (``/dev/...``) or ``file``."""
    if "://" in source:
        return "network"
    return "device" if source.startswith(DEVICE_PREFIX) else "file"


@dataclass
class Window:
    """A completed window: its frames (clip_len, crop, crop, 3) uint8 and when the last of them
    arrived (``time.monotonic()``). ``restart`` marks the first window after a reconnection."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    frames: np.ndarray
    arrived: float
    restart: bool = False


class WindowAssembler:
    """Frames in presentation order -> completed windows of the model's sampling.

    Window ``w`` of a run starts at frame ``base + w * stride`` and uses every ``frame_step``-th
    frame of its span; only frames some window uses are prepared (``prepare(frame)`` scales and
    crops). :meth:`restart` begins a new run at the next frame (after a reconnection).
    """

    def __init__(self, clip_len: int, frame_step: int, stride: int) -> None:
        self.clip_len, self.frame_step, self.stride = clip_len, frame_step, stride
        self.span = clip_span(clip_len, frame_step)
        self.windows = 0  # windows completed, over every run
        self._base = 0
        self._restart = False
        self._held: dict[int, tuple[float, np.ndarray]] = {}

    def restart(self, next_index: int) -> None:
        """Forget held frames; the next window starts at frame ``next_index``."""
        self._held.clear()
        self._base = next_index
        self._restart = True

    def wanted(self, index: int) -> bool:
        """True when frame ``index`` is one of the sampled frames of some window."""
        rel = index - self._base
        if rel < 0:
            return False
        first = max(0, -(-(rel - self.span + 1) // self.stride))
        return any(
            (rel - w * self.stride) % self.frame_step == 0
            for w in range(first, rel // self.stride + 1)
        )

    def add(
        self, index: int, seconds: float, frame: av.VideoFrame, prepare: Callable
    ) -> Window | None:
        """Take frame ``index`` (presentation time ``seconds``); return the window it completes."""
        if self.wanted(index):
            self._held[index] = (seconds, prepare(frame))
        rel = index - self._base
        if rel < self.span - 1 or (rel - self.span + 1) % self.stride:
            return None
        start = index - self.span + 1
        used = [self._held[start + k * self.frame_step] for k in range(self.clip_len)]
        next_start = start + self.stride
        self._held = {i: v for i, v in self._held.items() if i >= next_start}
        window = Window(
            self.windows,
            start,
            index,
            used[0][0],
            used[-1][0],
            np.stack([image for _, image in used]),
            time.monotonic(),
            self._restart,
        )
        self.windows += 1
        self._restart = False
        return window


class _Handoff:
    """The reader's completed windows -> the scoring thread, one at a time.

    Live (``skip=True``): a new window replaces one still waiting, which counts as skipped.
    Otherwise the reader waits until the waiting window has been taken.
    """

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.skipped = 0
        self.reason: str | None = None  # why the reader stopped
        self.error: BaseException | None = None
        self.closed = False  # the scorer stopped: the reader should stop too
        self._pending: Window | None = None
        self._cond = threading.Condition()

    def put(self, window: Window) -> None:
        with self._cond:
            if self.skip:
                self.skipped += self._pending is not None
            else:
                self._cond.wait_for(lambda: self._pending is None or self.closed)
            self._pending = window
            self._cond.notify_all()

    def take(self) -> Window | None:
        """The next window, or None once the reader has stopped and nothing waits."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None or self.reason is not None)
            window, self._pending = self._pending, None
            self._cond.notify_all()
            return window

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        with self._cond:
            self.reason, self.error = reason, error
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def open_source(
    source: str, input_format: str | None, options: dict[str, str], timeout: float
) -> av.container.InputContainer:
    """Open ``source`` with PyAV, waiting at most ``timeout`` s for data; clear errors for a
    missing file or device and for a source that cannot be opened."""
    kind = source_kind(source)
    if kind == "device" and not Path(source).exists():
        raise InputNotFoundError(f"capture device {source} not found")
    if kind == "file" and not Path(source).is_file():
        raise InputNotFoundError(f"{source}: no such file")
    if kind == "device" and input_format is None and source.startswith("/dev/video"):
        input_format = "v4l2"
    try:
        container = av.open(
            source,
            format=input_format,
            options=dict(options),
            timeout=(timeout, timeout),
            metadata_errors="ignore",
        )
    except av.ExitError:
        raise StreamError(f"{source}: no data within {timeout:g} s (--idle-timeout)") from None
    except (av.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise StreamError(f"cannot open {source}: {reason}") from None
    if not container.streams.video:
        container.close()
        raise StreamError(f"{source}: no video stream")
    return container


class _Reader(threading.Thread):
    """Decodes the source, assembles windows and hands them over until the source ends."""

    def __init__(
        self, source: str, spec: ModelSpec, options: StreamOptions, handoff: _Handoff
    ) -> None:
        super().__init__(name="r21d-stream-reader", daemon=True)
        self.source, self.spec, self.options, self.handoff = source, spec, options, handoff
        self.kind = source_kind(source)
        self.frames = 0
        self.reconnects = 0
        self.fps: float | None = None
        self.stride: int | None = None
        self._assembler: WindowAssembler | None = None
        self._offset = 0.0  # added to timestamps so they keep increasing over reconnections
        self._last_s: float | None = None

    def run(self) -> None:
        try:
            reason = self._read_all()
        except BaseException as e:  # handed to the scoring thread, which raises it
            self.handoff.finish("error", e)
        else:
            self.handoff.finish(reason)

    def _read_all(self) -> str:
        opts = self.options
        container = open_source(
            self.source, opts.input_format, opts.input_options, opts.idle_timeout
        )
        while True:
            try:
                reason = self._read(container)
            finally:
                container.close()
            if reason in ("dropped", "ended") and self._may_reconnect():
                container = self._reopen()
                if container is None:
                    return "idle"
                continue
            if reason == "dropped":
                raise StreamError(
                    f"{self.source}: the connection dropped (--reconnect opens it again)"
                )
            return reason

    def _may_reconnect(self) -> bool:
        return self.options.reconnect and self.kind == "network" and not self.handoff.closed

    def _reopen(self):
        """The source opened again, or None when ``idle_timeout`` passed without success."""
        deadline = time.monotonic() + self.options.idle_timeout
        while time.monotonic() < deadline and not self.handoff.closed:
            time.sleep(RECONNECT_PAUSE_S)
            left = max(0.1, deadline - time.monotonic())
            try:
                container = open_source(
                    self.source, self.options.input_format, self.options.input_options, left
                )
            except StreamError:
                continue
            self.reconnects += 1
            if self._assembler is not None:
                self._assembler.restart(self.frames)
            return container
        return None

    def _read(self, container) -> str:
        """Read until the source ends (``ended``), stays silent (``idle``), fails
        (``dropped``) or the scorer stops (``stopped``)."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first_time: float | None = None
        wall_start = time.monotonic()
        pace = self.options.realtime and self.kind == "file"
        prepare = None
        try:
            for frame in container.decode(stream):
                if self.handoff.closed:
                    return "stopped"
                if prepare is None:
                    prepare = self._setup(stream, frame)
                seconds = frame.time
                if seconds is None:  # no timestamp: one frame after the previous one
                    last = self._last_s
                    seconds = 0.0 if last is None else last - self._offset + 1 / self.fps
                if first_time is None:
                    first_time = seconds
                    # from 0 at the first frame; continued after a reconnection
                    last = self._last_s
                    self._offset = -seconds if last is None else last + 1 / self.fps - seconds
                if pace:
                    delay = wall_start + (seconds - first_time) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                seconds += self._offset
                self._last_s = seconds
                window = self._assembler.add(self.frames, seconds, frame, prepare)
                self.frames += 1
                if window is not None:
                    self.handoff.put(window)
        except av.ExitError:
            return "idle"
        except (av.FFmpegError, OSError) as e:
            if self.kind != "network":
                reason = getattr(e, "strerror", None) or str(e)
                raise StreamError(f"{self.source}: reading failed ({reason})") from None
            return "dropped"
        return "ended"

    def _setup(self, stream, frame: av.VideoFrame) -> Callable[[av.VideoFrame], np.ndarray]:
        """Frame rate, stride and the scale-and-crop of this source, from its first frame."""
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if self.fps is None:
            if not rate or rate <= 0:
                raise StreamError(f"{self.source}: the video stream has no frame rate")
            self.fps = float(rate)
            spec = self.spec
            self.stride = stride_frames(
                self.options.stride_s, self.fps, spec.clip_len, spec.frame_step
            )
            self._assembler = WindowAssembler(spec.clip_len, spec.frame_step, self.stride)
        rotation = round(frame.rotation or 0)
        width, height = frame.width, frame.height
        aspect = stream.sample_aspect_ratio
        if aspect and aspect > 0 and aspect != 1:
            width = round(width * aspect)
        if round(rotation / 90) % 2:
            width, height = height, width
        size = resized_shape(height, width, self.spec.resize_mode, self.spec.resize_size)
        ((top, left, h, w),) = crop_boxes(*size, self.spec.crop_size, 1)
        scaler = FrameScaler(rotation, *size)

        def prepare(decoded: av.VideoFrame) -> np.ndarray:
            image = scaler((0, decoded))
            scaler.forget_before(None)
            return np.ascontiguousarray(image[top : top + h, left : left + w])

        return prepare


@dataclass
class StreamSummary:
    """How a run went: why it ended, frames read, windows scored and skipped, latencies."""

    source: str
    reason: str
    frames: int
    scored: int
    skipped: int
    reconnects: int
    fps: float | None
    stride: int | None
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def describe(self, idle_timeout: float) -> str:
        """The closing message."""
        why = {
            "ended": "the source ended",
            "idle": f"no frame for {idle_timeout:g} s (--idle-timeout)",
            "stopped": "stopped after --max-windows",
        }.get(self.reason, self.reason)
        latency = ""
        if self.latencies:
            latency = (
                f"; latency median {np.median(self.latencies):.3f} s, "
                f"max {max(self.latencies):.3f} s"
            )
        again = f", {self.reconnects} reconnection(s)" if self.reconnects else ""
        return (
            f"{self.source}: {why}: {self.frames} frames, {self.scored} windows scored, "
            f"{self.skipped} skipped to keep up{again}{latency}"
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_stream(
    source: str | Path,
    backend: Backend,
    options: StreamOptions | None = None,
    emit: Callable[[dict], None] = lambda record: None,
    show: Callable[[str], None] | None = None,
) -> StreamSummary:
    """Score ``source`` window by window; ``emit`` gets each window's record as it is scored
    and ``show`` (if given) a one-line readable form of it. Returns when the source ends, stays
    silent for ``idle_timeout`` s or ``max_windows`` were scored; a source that cannot be
    opened or read is a :class:`StreamError` (a missing file or device an
    :class:`~r21d.errors.InputNotFoundError`)."""
    options = options or StreamOptions()
    source = str(source)
    spec = backend.spec
    live = options.realtime if options.realtime is not None else source_kind(source) != "file"
    handoff = _Handoff(skip=live)
    reader = _Reader(source, spec, options, handoff)
    averager = MovingAverage(options.smooth)
    latencies: list[float] = []
    started = time.monotonic()
    reader.start()
    try:
        while (window := handoff.take()) is not None:
            frames = window.frames[None]
            if backend.fixed_batch and backend.fixed_batch > 1:
                frames = np.repeat(frames, backend.fixed_batch, axis=0)
            probs, _ = backend.run(frames)
            latency = time.monotonic() - window.arrived
            if window.restart:
                averager.clear()
            smoothed = averager.add(probs[0])
            scored = ScoredWindow(
                window.index,
                window.start_frame,
                window.end_frame,
                window.start_s,
                window.end_s,
                probs[0],
            )
            record = window_record(
                scored,
                smoothed,
                spec,
                k=options.top_k,
                threshold=options.threshold,
                smooth=options.smooth,
            )
            record["latency_s"] = round(latency, 4)
            record["skipped"] = handoff.skipped
            latencies.append(latency)
            emit(record)
            if show is not None:
                show(live_line(record, smoothed, spec, options.threshold))
            if options.max_windows and len(latencies) >= options.max_windows:
                handoff.finish("stopped")
                break
    finally:
        handoff.close()
        reader.join(JOIN_S)
    if handoff.error is not None:
        raise handoff.error
    return StreamSummary(
        source,
        handoff.reason or "stopped",
        reader.frames,
        len(latencies),
        handoff.skipped,
        reader.reconnects,
        reader.fps,
        reader.stride,
        latencies,
        time.monotonic() - started,
    )


def live_line(record: dict, smoothed: np.ndarray, spec: ModelSpec, threshold: float) -> str:
    """A terminal line for one window: time, label (or the best guess), latency, skips."""
    label = window_label(smoothed, spec, threshold)
    best = int(np.argmax(smoothed))
    what = label if label is not None else f"({spec.label(best)}?)"
    return (
        f"{record['end_s']:9.2f} s  {what:<32.32} {float(smoothed[best]):.3f}  "
        f"latency {record['latency_s']:.2f} s  skipped {record['skipped']}"
    )
