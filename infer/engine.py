"""The batch-scoring engine: decode in worker processes, pack clips into batches, average.

Data flow::

    paths --> decode workers (processes, one pipe each) --> main process
          main: pack clips of several videos into fixed-size batches of one shape
                -> backend.run -> per-clip softmax + features -> per-video mean -> results

- Each decode worker is a separate process (``forkserver`` context where available, else
  ``spawn``; never ``fork`` after torch or a GPU runtime started) that decodes one video at a
  time into its clips. The main process hands a worker its next video as soon as the last one
  comes back, so at most one decoded video per worker waits for the model and memory stays
  bounded whatever the number of videos: decoders wait while the model is busy.
- The main process packs clips from several videos into batches of exactly ``batch_size``
  clips. Only clips of the same shape share a batch (full-frame scoring of short-edge resized
  videos gives several shapes). The last batch of a shape is short, or padded with copies of
  its last clip where the backend takes one fixed batch size.
- The video prediction is the mean of its clips' softmax outputs (Caffe2's test protocol,
  DESIGN.md s.6); the clip features are kept too (``r21d extract``).
- Results come out in completion order. A video that cannot be decoded (or whose decoder
  process dies) yields one error result with a specific message, and the run goes on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

import numpy as np

from r21d.errors import BadOptionError
from r21d.spec import ModelSpec

if TYPE_CHECKING:
    from r21d.infer.backends import Backend

STOP_WAIT_S = 0.5
"""Seconds to wait for a stopping worker before it is terminated."""


@dataclass(frozen=True)
class ScoreOptions:
    """How clips are taken from each video and how the work is spread.

    ``num_clips`` uniformly spaced clips per video (DESIGN.md s.6), each in ``crops`` (1 or 3)
    spatial crops; ``full_frame`` scores the whole resized frame fully-convolutionally instead
    of a ``crop_size`` crop; ``resize_mode`` overrides the spec's (``fixed`` or
    ``short_edge``); ``workers`` decode processes (0 decodes in the main process);
    ``batch_size`` clips per model call (``None``: the backend's default).
    """

    num_clips: int = 10
    crops: int = 1
    full_frame: bool = False
    resize_mode: str | None = None
    workers: int = 2
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.num_clips < 1:
            raise BadOptionError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.crops not in (1, 3):
            raise BadOptionError(f"crops must be 1 or 3, got {self.crops}")
        if self.full_frame and self.crops != 1:
            raise BadOptionError("full-frame scoring takes the whole frame: crops must be 1")
        if self.resize_mode not in (None, "fixed", "short_edge"):
            raise BadOptionError(
                f"resize_mode must be fixed or short_edge, got {self.resize_mode!r}"
            )
        if self.workers < 0:
            raise BadOptionError(f"workers must be >= 0, got {self.workers}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BadOptionError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class VideoResult:
    """The outcome of one video.

    ``probs`` (classes,) is the mean of the clip softmax outputs; ``clip_probs`` (K, classes)
    and ``clip_features`` (K, feature_dim) hold every clip (K = clips x crops). ``status`` is
    ``"ok"`` or ``"error"`` (then ``error`` says why and the arrays are ``None``).
    ``frames_decoded`` counts the frames the decoder produced; ``short`` is set when the video
    is shorter than one clip and frames were repeated. ``decode_s`` is the worker's decoding
    time, ``model_s`` this video's share of the model time of the batches it was in.
    """

    index: int
    path: str
    status: str = "ok"
    error: str | None = None
    probs: np.ndarray | None = None
    clip_probs: np.ndarray | None = None
    clip_features: np.ndarray | None = None
    clips: int = 0
    frames_decoded: int = 0
    duration: float | None = None
    short: bool = False
    decode_s: float = 0.0
    model_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def video_feature(self) -> np.ndarray | None:
        """Mean of the clip features (the paper's fc-only / retrieval descriptor)."""
        return None if self.clip_features is None else self.clip_features.mean(axis=0)

    def top_k(self, spec: ModelSpec, k: int = 5) -> list[tuple[int, str, float]]:
        """``(class index, label, probability)`` of the ``k`` most probable classes."""
        if self.probs is None:
            return []
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(i), spec.label(int(i)), float(self.probs[i])) for i in order]


@dataclass
class _Decoded:
    """What a decode worker sends back for one video."""

    index: int
    path: str
    clips: np.ndarray | None = None
    error: str | None = None
    frames_decoded: int = 0
    duration: float | None = None
    short: bool = False
    decode_s: float = 0.0


def _decode_one(index: int, path: str, spec: ModelSpec, options: ScoreOptions) -> _Decoded:
    from r21d.infer.decode import VideoError, decode_for_spec

    start = time.perf_counter()
    try:
        decoded = decode_for_spec(
            path,
            spec,
            num_clips=options.num_clips,
            crops=options.crops,
            full_frame=options.full_frame,
        )
    except VideoError as e:
        return _Decoded(index, path, error=str(e), decode_s=time.perf_counter() - start)
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        message = f"{type(e).__name__}: {e}"
        return _Decoded(index, path, error=message, decode_s=time.perf_counter() - start)
    return _Decoded(
        index,
        path,
        clips=decoded.clips,
        frames_decoded=int(decoded.frames_decoded),
        duration=decoded.info.duration,
        short=bool(decoded.short),
        decode_s=time.perf_counter() - start,
    )


def _decode_worker(conn, spec: ModelSpec, options: ScoreOptions) -> None:
    """Worker process: decode each ``(index, path)`` received on ``conn`` and send it back.

    Ends on ``None`` or when the main process closes its end of the pipe or dies (the pipe
    then reads EOF or breaks), so a ``kill -9`` of the scorer leaves no worker behind.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        while (task := conn.recv()) is not None:
            index, path = task
            conn.send(_decode_one(index, path, spec, options))
    except (EOFError, OSError):
        return


class _DecodePool:
    """Decode worker processes, each with its own pipe, returning videos as they finish.

    The main process hands each worker one video at a time, the next as soon as the last comes
    back, so at most one decoded video per worker waits for the model (memory stays bounded).
    A private pipe per worker, rather than a shared queue, means a worker that dies (a crash
    inside the decoding library) cannot leave a shared lock held or a shared stream half
    written: its video becomes an error result and a fresh worker takes over.
    """

    def __init__(self, tasks: list[tuple[int, str]], spec: ModelSpec, options: ScoreOptions):
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._spec, self._options = spec, options
        self._todo = deque(tasks)
        self._workers: dict = {}  # main end of a worker's pipe -> [process, task or None]
        for _ in range(min(options.workers, len(tasks))):
            self._start_worker()

    def _start_worker(self) -> None:
        conn, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_decode_worker, args=(child, self._spec, self._options), daemon=True
        )
        process.start()
        child.close()  # the worker holds its end; EOF here now means the worker is gone
        self._workers[conn] = [process, None]
        self._assign(conn)

    def _assign(self, conn) -> None:
        task = self._todo.popleft() if self._todo else None
        self._workers[conn][1] = task
        if task is not None:
            with contextlib.suppress(OSError):  # died already: the next wait notices
                conn.send(task)

    def __iter__(self) -> Iterator[_Decoded]:
        while any(task is not None for _, task in self._workers.values()):
            sentinels = {process.sentinel: conn for conn, (process, _) in self._workers.items()}
            ready = wait([*self._workers, *sentinels])
            for conn in dict.fromkeys(sentinels.get(r, r) for r in ready):
                item = self._receive(conn)
                if item is not None:
                    yield item

    def _receive(self, conn) -> _Decoded | None:
        """The worker's finished video, or an error result if the worker died with it."""
        process, task = self._workers[conn]
        item = None
        if conn.poll():
            with contextlib.suppress(EOFError, OSError):  # died before or while sending
                item = conn.recv()
        if process.is_alive():
            if item is not None:
                self._assign(conn)
            return item  # None: woken by the other half of a (pipe, sentinel) pair
        process.join(timeout=STOP_WAIT_S)
        conn.close()
        del self._workers[conn]
        if self._todo:
            self._start_worker()
        if item is not None or task is None:
            return item  # its last video came back whole before it ended
        message = f"the decoder process died (exit code {process.exitcode}) on this file"
        return _Decoded(task[0], task[1], error=message)

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


def _decode_inline(paths: list[tuple[int, str]], spec, options) -> Iterator[_Decoded]:
    for index, path in paths:
        yield _decode_one(index, path, spec, options)


@dataclass
class _Pending:
    """A decoded video whose clips are (partly) waiting for the model."""

    result: VideoResult
    waiting: int
    clip_probs: list = field(default_factory=list)
    clip_features: list = field(default_factory=list)


class _BatchPacker:
    """Packs clips of several videos into batches of one shape and finishes videos."""

    def __init__(self, backend: Backend, batch_size: int):
        self.backend = backend
        self.batch_size = batch_size
        self.max_buffered = 4 * batch_size
        self._buckets: dict[tuple[int, ...], deque] = {}
        self._counts: dict[tuple[int, ...], int] = {}

    def add(self, pending: _Pending, clips: np.ndarray) -> Iterator[VideoResult]:
        """Queue a video's clips; run every full batch; yield the videos that finished."""
        shape = clips.shape[1:]
        self._buckets.setdefault(shape, deque()).extend(
            (pending, i, clips) for i in range(len(clips))
        )
        self._counts[shape] = self._counts.get(shape, 0) + len(clips)
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
        frames = np.stack([clips[i] for _, i, clips in items])
        fixed = self.backend.fixed_batch
        if fixed and n < fixed:
            frames = np.concatenate([frames, np.repeat(frames[-1:], fixed - n, axis=0)])
        start = time.perf_counter()
        probs, features = self.backend.run(frames)
        share = (time.perf_counter() - start) / n
        for row, (pending, _, _) in enumerate(items):
            pending.clip_probs.append(probs[row])
            pending.clip_features.append(features[row])
            pending.result.model_s += share
            pending.waiting -= 1
            if not pending.waiting:
                yield _finish(pending)


def _finish(pending: _Pending) -> VideoResult:
    result = pending.result
    result.clip_probs = np.stack(pending.clip_probs)
    result.clip_features = np.stack(pending.clip_features)
    result.probs = result.clip_probs.mean(axis=0)
    return result


def score_videos(
    paths: Iterable[str], backend: Backend, options: ScoreOptions | None = None
) -> Iterator[VideoResult]:
    """Score every video in ``paths`` with ``backend``; yield one result per video as it finishes.

    ``index`` in each result is the position of its path in ``paths``. Decoding follows the
    backend's spec (with ``options.resize_mode`` if given). Closing the generator
    (or an exception, Ctrl-C included) stops the decode workers.
    """
    options = options or ScoreOptions()
    tasks = list(enumerate(str(p) for p in paths))
    if not tasks:
        return
    spec = backend.spec.with_resize_mode(options.resize_mode)
    batch_size = options.batch_size or backend.default_batch
    if backend.fixed_batch and batch_size != backend.fixed_batch:
        raise BadOptionError(
            f"this {backend.name} model takes batches of exactly {backend.fixed_batch} clips; "
            f"batch size {batch_size} asked for"
        )
    if backend.max_batch:
        batch_size = min(batch_size, backend.max_batch)
    packer = _BatchPacker(backend, batch_size)
    pool = _DecodePool(tasks, spec, options) if options.workers else None
    source = pool if pool is not None else _decode_inline(tasks, spec, options)
    try:
        for item in source:
            result = VideoResult(
                index=item.index,
                path=item.path,
                frames_decoded=item.frames_decoded,
                duration=item.duration,
                short=item.short,
                decode_s=item.decode_s,
            )
            if item.error is not None:
                result.status, result.error = "error", item.error
                yield result
                continue
            result.clips = len(item.clips)
            yield from packer.add(_Pending(result, waiting=len(item.clips)), item.clips)
        yield from packer.flush()
    finally:
        if pool is not None:
            pool.close()


def default_workers() -> int:
    """Decode processes by default: two, or one on a single-core machine."""
    return min(2, os.cpu_count() or 1)
