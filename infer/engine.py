"""The scoring core: videos in, one result per video out, for every job that scores.

``r21d score`` and ``extract``, training validation, the linear probe and the benchmarks all
call :func:`score_videos`; it takes any iterable of videos and any backend. Data flow::

    videos --> decode workers (processes, one pipe each) --> main process
           main: pack clips of several videos into fixed-size batches of one shape
                 -> backend.run -> per-clip softmax + features -> per-video mean -> results

- Each decode worker is a separate process (``forkserver`` context where available, else
  ``spawn``; never ``fork`` after torch or a GPU runtime started) that decodes one video at a
  time. The main process hands a worker its next video as soon as the last one comes back, so
  at most one decoded video per worker waits for the model and memory stays bounded however
  many videos there are: decoders wait while the model is busy. Videos are taken from the
  iterable only as workers free up, so it may be endless (a folder scan, a queue).
- Decoded clips do not travel through the pipe: the worker decodes straight into a
  shared-memory block and sends its name; the main process reads the clips in place and frees
  the block once the model has seen them (where shared memory is short, as in a small
  ``/dev/shm``, the clips fall back to the pipe). Each result counts the bytes that crossed the
  pipe and the bytes copied to assemble batches.
- The main process packs clips from several videos into batches of exactly ``batch_size``
  clips (a slice of one video's clips is used in place, without a copy). Only clips of one
  shape share a batch (full-frame scoring of short-edge resized videos gives several shapes).
  The last batch of a shape is short, or padded with copies of its last clip where the backend
  takes one fixed batch size.
- The video prediction is the mean of its views' softmax outputs (views = clips x crops,
  Caffe2's test protocol, DESIGN.md s.6); the view features are kept too (``r21d extract``).
- Results come out in completion order. A video that cannot be decoded (or whose decoder
  process dies) yields one error result with a specific message, and the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from r21d.errors import BadOptionError
from r21d.infer.runtime import RuntimeOptions, default_workers
from r21d.spec import CROP_COUNTS, RESIZE_MODES, ModelSpec

if TYPE_CHECKING:
    from r21d.infer.backends import Backend
    from r21d.infer.decode import Allocator

__all__ = [
    "ClipBatcher",
    "clip_batch_size",
    "ScoreOptions",
    "VideoResult",
    "decode_video",
    "default_workers",
    "score_videos",
]

STOP_WAIT_S = 0.5
"""Seconds to wait for a stopping worker before it is terminated."""
SHARED_MEMORY_DIR = "/dev/shm"
TRANSFERS = ("shared_memory", "pipe")


@dataclass(frozen=True)
class ScoreOptions:
    """Which views of each video are scored: the test protocol, by default the spec's own.

    ``num_clips`` uniformly spaced clips per video (DESIGN.md s.6), each in ``crops`` (1 or 3)
    spatial crops (``None``: the spec's ``num_clips`` / ``num_crops``); ``full_frame`` scores
    the whole resized frame fully-convolutionally instead of a ``crop_size`` crop;
    ``resize_mode`` overrides the spec's (``fixed`` or ``short_edge``).

    ``stride_s`` scores sliding windows instead of uniform clips: one window every ``stride_s``
    seconds over the whole video (``r21d timeline``), each view kept in ``clip_probs``;
    ``part`` (a slice of those windows) scores only some, so a long video fits in memory.
    """

    num_clips: int | None = None
    crops: int | None = None
    full_frame: bool = False
    resize_mode: str | None = None
    stride_s: float | None = None
    part: slice | None = None

    def __post_init__(self) -> None:
        if self.num_clips is not None and self.num_clips < 1:
            raise BadOptionError(f"--clips (num_clips) must be >= 1, got {self.num_clips}")
        if self.crops is not None and self.crops not in CROP_COUNTS:
            raise BadOptionError(f"--crops must be 1 or 3, got {self.crops}")
        if self.full_frame and self.crops not in (None, 1):
            raise BadOptionError(
                f"--full-frame scores the whole frame as one view: --crops must be 1, got "
                f"{self.crops}"
            )
        if self.resize_mode not in (None, *RESIZE_MODES):
            raise BadOptionError(
                f"--resize (resize_mode) must be fixed or short_edge, got {self.resize_mode!r}"
            )
        if self.stride_s is not None and not self.stride_s > 0:
            raise BadOptionError(f"--stride-s must be > 0 seconds, got {self.stride_s}")
        if self.stride_s is not None and self.num_clips is not None:
            raise BadOptionError("sliding windows (a stride) replace the uniform clips: no clips")
        if self.part is not None and self.stride_s is None:
            raise BadOptionError("a part of the windows needs sliding windows (a stride)")

    def for_spec(self, spec: ModelSpec) -> ScoreOptions:
        """These options with the spec's protocol filled in where they leave it open."""
        if self.full_frame and spec.fixed_input:
            raise BadOptionError(
                f"{spec.name} takes only {spec.clip_len}x{spec.crop_size}x{spec.crop_size} clips: "
                "it cannot score whole frames (no --full-frame)"
            )
        crops = 1 if self.full_frame else self.crops or spec.num_crops
        num_clips = None if self.stride_s is not None else self.num_clips or spec.num_clips
        return dataclasses.replace(self, num_clips=num_clips, crops=crops)


@dataclass
class VideoResult:
    """The outcome of one video.

    ``probs`` (classes,) is the mean of the view softmax outputs; ``clip_probs`` (K, classes)
    and ``clip_features`` (K, feature_dim) hold every view (K = clips x crops), clip-major;
    ``starts`` are the clips' first frames at ``fps``. ``status`` is ``"ok"`` or ``"error"``
    (then ``error`` says why and the arrays are ``None``). ``frames_decoded`` counts the frames
    the decoder produced; ``short`` is set when the video is shorter than one clip and frames
    were repeated. ``decode_s`` is the worker's decoding time, ``model_s`` this video's share
    of the model time of the batches it was in. ``transfer_bytes`` crossed the pipe from the
    decode worker (pickled); ``copy_bytes`` were copied in this process to assemble batches.
    """

    index: int
    path: str
    status: str = "ok"
    error: str | None = None
    probs: np.ndarray | None = None
    clip_probs: np.ndarray | None = None
    clip_features: np.ndarray | None = None
    clips: int = 0
    starts: list[int] = field(default_factory=list)
    fps: float | None = None
    frames_decoded: int = 0
    duration: float | None = None
    short: bool = False
    decode_s: float = 0.0
    model_s: float = 0.0
    transfer_bytes: int = 0
    copy_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def video_feature(self) -> np.ndarray | None:
        """Mean of the view features (the paper's fc-only / retrieval descriptor)."""
        return None if self.clip_features is None else self.clip_features.mean(axis=0)

    def top_k(self, spec: ModelSpec, k: int = 5) -> list[tuple[int, str, float]]:
        """``(class index, label, probability)`` of the ``k`` most probable classes."""
        if self.probs is None:
            return []
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(i), spec.label(int(i)), float(self.probs[i])) for i in order]


def decode_video(
    index: int,
    path: str,
    spec: ModelSpec,
    options: ScoreOptions,
    allocate: Allocator = np.empty,
) -> tuple[VideoResult, np.ndarray | None]:
    """The decode stage: a video's result so far and its clips ``(K, T, H, W, 3)`` uint8.

    ``spec`` is the spec decoding follows and ``options`` are resolved (:meth:`ScoreOptions.
    for_spec`). A video that cannot be decoded gives an error result and no clips; anything
    else raised is a bug and propagates.
    """
    from r21d.infer.decode import VideoError, decode_for_spec

    start = time.perf_counter()
    result = VideoResult(index=index, path=path)
    try:
        decoded = decode_for_spec(
            path,
            spec,
            num_clips=options.num_clips,
            crops=options.crops,
            full_frame=options.full_frame,
            allocate=allocate,
            stride_s=options.stride_s,
            part=options.part,
        )
    except VideoError as e:
        result.status, result.error = "error", str(e)
    except (OSError, MemoryError) as e:
        result.status, result.error = "error", f"{type(e).__name__}: {e}"
    else:
        result.clips = len(decoded.clips)
        result.starts = [int(s) for s in decoded.starts]
        result.fps = float(decoded.info.fps)
        result.frames_decoded = int(decoded.frames_decoded)
        result.duration = decoded.info.duration
        result.short = bool(decoded.short)
    result.decode_s = time.perf_counter() - start
    return result, decoded.clips if result.ok else None


class _SharedBlock:
    """Shared memory that one decode worker writes a video's clips into and the main process
    reads in place, then frees; used only while ``/dev/shm`` has room for it (writing past
    the free space there would kill the worker with SIGBUS)."""

    def __init__(self) -> None:
        self.memory: SharedMemory | None = None

    def allocate(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if not nbytes or not _shared_memory_has_room(nbytes):
            return np.empty(shape, dtype)
        self.memory = SharedMemory(create=True, size=nbytes)
        return np.ndarray(shape, dtype, buffer=self.memory.buf)


def _shared_memory_has_room(nbytes: int) -> bool:
    try:
        stats = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize > 2 * nbytes


def _decode_worker(conn, spec: ModelSpec, options: ScoreOptions, transfer: str) -> None:
    """Worker process: decode each ``(index, path)`` received on ``conn`` and send it back.

    With shared memory the clips go into a block whose name is sent (the main process frees
    it); otherwise the clips are pickled through the pipe. Ends on ``None`` or when the main
    process closes its end of the pipe or dies (the pipe then reads EOF or breaks), so a
    ``kill -9`` of the scorer leaves no worker behind.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        while (task := conn.recv()) is not None:
            block = _SharedBlock()
            allocate = block.allocate if transfer == "shared_memory" else np.empty
            result, clips = decode_video(*task, spec, options, allocate)
            if block.memory is not None and clips is not None:
                payload = ("shared_memory", block.memory.name, clips.shape)
                del clips
                conn.send_bytes(pickle.dumps((result, payload)))
                block.memory.close()  # the main process owns (and unlinks) it now
            else:
                if block.memory is not None:  # allocated, then the video failed
                    block.memory.close()
                    block.memory.unlink()
                conn.send_bytes(pickle.dumps((result, ("array", clips))))
    except (EOFError, OSError):
        return


@dataclass
class _Arrival:
    """A decoded video as it reaches the main process: its result, clips and their release."""

    result: VideoResult
    clips: np.ndarray | None = None
    release: Callable[[], None] = lambda: None


def _arrival(raw: bytes) -> _Arrival:
    result, (kind, *payload) = pickle.loads(raw)
    result.transfer_bytes = len(raw)
    if kind == "array":
        return _Arrival(result, payload[0])
    name, shape = payload
    memory = SharedMemory(name=name)
    arrival = _Arrival(result, np.ndarray(shape, np.uint8, buffer=memory.buf))

    def release() -> None:
        arrival.clips = None  # drop this view of the block, so it can be unmapped
        memory.close()
        memory.unlink()

    arrival.release = release
    return arrival


class _DecodePool:
    """Decode worker processes, each with its own pipe, returning videos as they finish.

    The main process hands each worker one video at a time, the next as soon as the last comes
    back, so at most one decoded video per worker waits for the model (memory stays bounded).
    A private pipe per worker, rather than a shared queue, means a worker that dies (a crash
    inside the decoding library) cannot leave a shared lock held or a shared stream half
    written: its video becomes an error result and a fresh worker takes over.
    """

    def __init__(
        self,
        tasks: Iterator[tuple[int, str]],
        spec: ModelSpec,
        options: ScoreOptions,
        workers: int,
        transfer: str,
    ):
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._args = (spec, options, transfer)
        self._tasks = tasks
        self._exhausted = False
        self._workers: dict = {}  # main end of a worker's pipe -> [process, task or None]
        for _ in range(workers):
            task = self._next_task()
            if task is None:
                break
            self._start_worker(task)

    def _next_task(self) -> tuple[int, str] | None:
        if self._exhausted:
            return None
        task = next(self._tasks, None)
        self._exhausted = task is None
        return task

    def _start_worker(self, task: tuple[int, str]) -> None:
        conn, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_decode_worker, args=(child, *self._args), daemon=True)
        process.start()
        child.close()  # the worker holds its end; EOF here now means the worker is gone
        self._workers[conn] = [process, None]
        self._assign(conn, task)

    def _assign(self, conn, task: tuple[int, str] | None) -> None:
        self._workers[conn][1] = task
        if task is not None:
            with contextlib.suppress(OSError):  # died already: the next wait notices
                conn.send(task)

    def __iter__(self) -> Iterator[_Arrival]:
        while any(task is not None for _, task in self._workers.values()):
            sentinels = {process.sentinel: conn for conn, (process, _) in self._workers.items()}
            ready = wait([*self._workers, *sentinels])
            for conn in dict.fromkeys(sentinels.get(r, r) for r in ready):
                item = self._receive(conn)
                if item is not None:
                    yield item

    def _receive(self, conn) -> _Arrival | None:
        """The worker's finished video, or an error result if the worker died with it."""
        process, task = self._workers[conn]
        item = None
        if conn.poll():
            with contextlib.suppress(EOFError, OSError):  # died before or while sending
                item = _arrival(conn.recv_bytes())
        if process.is_alive():
            if item is not None:
                self._assign(conn, self._next_task())
            return item  # None: woken by the other half of a (pipe, sentinel) pair
        process.join(timeout=STOP_WAIT_S)
        conn.close()
        del self._workers[conn]
        next_task = self._next_task()
        if next_task is not None:
            self._start_worker(next_task)
        if item is not None or task is None:
            return item  # its last video came back whole before it ended
        message = f"the decoder process died (exit code {process.exitcode}) on this file"
        return _Arrival(VideoResult(task[0], task[1], status="error", error=message))

    def close(self) -> None:
        """Stop the workers (normal end, error or interrupt)."""
        for conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()  # a worker blocked sending a result gets a broken pipe and ends
        deadline = time.monotonic() + STOP_WAIT_S
        for process, _ in self._workers.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=STOP_WAIT_S)
        self._workers.clear()


def _decode_inline(tasks: Iterator[tuple[int, str]], spec, options) -> Iterator[_Arrival]:
    for index, path in tasks:
        yield _Arrival(*decode_video(index, path, spec, options))


@dataclass
class _Pending:
    """A decoded video whose clips are (partly) waiting for the model."""

    arrival: _Arrival
    waiting: int
    clip_probs: list = field(default_factory=list)
    clip_features: list = field(default_factory=list)


class ClipBatcher:
    """Packs the clips of several videos into batches of one shape, runs them on a backend and
    finishes each video (mean of its views' softmax outputs) once all its clips have run.

    ``add`` and ``flush`` yield the videos that finished; ``release`` of a video's arrival is
    called once its clips are no longer needed.
    """

    def __init__(self, backend: Backend, batch_size: int):
        self.backend = backend
        self.batch_size = batch_size
        self.max_buffered = 4 * batch_size
        self._buckets: dict[tuple[int, ...], deque] = {}
        self._counts: dict[tuple[int, ...], int] = {}

    def add(
        self, result: VideoResult, clips: np.ndarray, release: Callable[[], None] = lambda: None
    ) -> Iterator[VideoResult]:
        """Queue a video's clips; run every full batch; yield the videos that finished."""
        pending = _Pending(_Arrival(result, clips, release), waiting=len(clips))
        shape = clips.shape[1:]
        self._buckets.setdefault(shape, deque()).extend((pending, i) for i in range(len(clips)))
        self._counts[shape] = self._counts.get(shape, 0) + len(clips)
        del clips  # held by the pending video only, so its release can unmap a shared block
        while self._counts.get(shape, 0) >= self.batch_size:
            yield from self._run(shape, self.batch_size)
        # Many shapes (full frames of many aspect ratios) must not pile up clips: flush the
        # fullest bucket as a short batch while too many clips wait.
        while sum(self._counts.values()) > self.max_buffered:
            fullest = max(self._counts, key=self._counts.get)
            yield from self._run(fullest, self._counts[fullest])

    def flush(self) -> Iterator[VideoResult]:
        """Run every clip still waiting (short or padded last batches)."""
        for shape in list(self._buckets):
            while self._counts.get(shape, 0):
                yield from self._run(shape, min(self.batch_size, self._counts[shape]))

    def _run(self, shape, n: int) -> Iterator[VideoResult]:
        bucket = self._buckets[shape]
        items = [bucket.popleft() for _ in range(n)]
        self._counts[shape] -= n
        if not self._counts[shape]:  # forget emptied shapes (full frames come in many)
            del self._counts[shape], self._buckets[shape]
        frames = _batch_frames(items)
        fixed = self.backend.fixed_batch
        if fixed and n < fixed:
            frames = np.concatenate([frames, np.repeat(frames[-1:], fixed - n, axis=0)])
        start = time.perf_counter()
        probs, features = self.backend.run(frames)
        share = (time.perf_counter() - start) / n
        del frames  # may view a shared block, which is freed below
        finished = []
        for row, (pending, _) in enumerate(items):
            pending.clip_probs.append(probs[row])
            pending.clip_features.append(features[row])
            pending.arrival.result.model_s += share
            pending.waiting -= 1
            if not pending.waiting:
                finished.append(pending)
        del items
        for pending in finished:
            yield _finish(pending)


def _batch_frames(items: list[tuple[_Pending, int]]) -> np.ndarray:
    """The clips of a batch: a slice of one video's clips in place, else a copy."""
    first, index = items[0]
    clips = first.arrival.clips
    if all(p is first and i == index + k for k, (p, i) in enumerate(items)):
        return clips[index : index + len(items)]
    frames = np.stack([p.arrival.clips[i] for p, i in items])
    for pending, i in items:
        pending.arrival.result.copy_bytes += pending.arrival.clips[i].nbytes
    return frames


def _finish(pending: _Pending) -> VideoResult:
    pending.arrival.clips = None
    pending.arrival.release()
    result = pending.arrival.result
    result.clip_probs = np.stack(pending.clip_probs)
    result.clip_features = np.stack(pending.clip_features)
    result.probs = result.clip_probs.mean(axis=0)
    return result


def clip_batch_size(backend: Backend, runtime: RuntimeOptions) -> int:
    """Clips per model call: the runtime's or the backend's default, within what the backend
    takes (its fixed batch, its largest batch)."""
    batch_size = runtime.batch_size or backend.default_batch
    if backend.fixed_batch and batch_size != backend.fixed_batch:
        raise BadOptionError(
            f"this {backend.name} model takes batches of exactly {backend.fixed_batch} clips; "
            f"batch size {batch_size} asked for"
        )
    return min(batch_size, backend.max_batch) if backend.max_batch else batch_size


def score_videos(
    videos: Iterable[str | Path],
    backend: Backend,
    options: ScoreOptions | None = None,
    runtime: RuntimeOptions | None = None,
    *,
    transfer: str = "shared_memory",
) -> Iterator[VideoResult]:
    """Score every video with ``backend``; yield one result per video as it finishes.

    ``options`` is the protocol (default: the backend's spec's); ``runtime`` gives the decode
    ``workers`` (0 decodes in this process) and the ``batch_size`` (default: the backend's).
    ``index`` in each result is the video's position in ``videos``, which is read lazily.
    ``transfer`` is how clips leave the decode workers (``shared_memory``, or ``pipe``:
    pickled, for comparison). Closing the generator (or an exception, Ctrl-C included) stops
    the decode workers.
    """
    runtime = runtime or RuntimeOptions()
    if transfer not in TRANSFERS:
        raise BadOptionError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    options = options or ScoreOptions()
    spec = backend.spec.with_resize_mode(options.resize_mode)
    options = options.for_spec(spec)
    batcher = ClipBatcher(backend, clip_batch_size(backend, runtime))
    tasks = ((i, str(v)) for i, v in enumerate(videos))
    pool = None
    if runtime.workers:
        pool = _DecodePool(tasks, spec, options, runtime.workers, transfer)
    source = pool if pool is not None else _decode_inline(tasks, spec, options)
    try:
        for item in source:
            if item.clips is None or not len(item.clips):  # failed, or no window in its part
                item.release()
                yield item.result
                continue
            yield from batcher.add(item.result, item.clips, item.release)
        yield from batcher.flush()
    finally:
        if pool is not None:
            pool.close()
