"""Timing: warm up, repeat, report medians and spread.

Every benchmark times through :func:`time_call`. On a CUDA device each repeat is bracketed by
CUDA events (GPU time, with the host synchronised on the end event) so asynchronous launches
are not mistaken for finished work; on the CPU it uses ``time.perf_counter``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from r21d.errors import BadOptionError


@dataclass(frozen=True)
class Timing:
    """Wall (or CUDA-event) times of the repeats of one measurement, in milliseconds."""

    samples_ms: tuple[float, ...]
    warmup: int
    clock: str  # "perf_counter" or "cuda_event"

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (linear interpolation) of the samples, in ms."""
        return float(np.percentile(self.samples_ms, q))

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.samples_ms))

    def summary(self) -> dict:
        """Median, p50/p90/p99, min/max, IQR and relative spread, for the JSON results."""
        s = self.samples_ms
        iqr = self.percentile(75) - self.percentile(25)
        return {
            "repeats": len(s),
            "warmup": self.warmup,
            "clock": self.clock,
            "median_ms": self.median_ms,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p99_ms": self.percentile(99),
            "min_ms": min(s),
            "max_ms": max(s),
            "iqr_ms": iqr,
            # IQR relative to the median: a quick "how noisy was this" figure for the tables.
            "spread": iqr / self.median_ms if self.median_ms > 0 else 0.0,
        }


def synchronize(device: str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    repeats: int = 10,
    device: str = "cpu",
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time up to ``repeats`` calls.

    ``max_seconds`` caps the timed phase for slow configurations: timing stops once that much
    time has passed and at least ``min_repeats`` calls are done.
    """
    if repeats < 1 or warmup < 0:
        raise BadOptionError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    cuda = device.startswith("cuda")
    samples: list[float] = []
    began = time.perf_counter()
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - began
        if max_seconds is not None and spent > max_seconds and len(samples) >= min_repeats:
            break
    return Timing(tuple(samples), warmup, "cuda_event" if cuda else "perf_counter")


def time_once(fn: Callable[[], object], device: str = "cpu") -> tuple[object, float]:
    """Run ``fn`` once; return its result and the wall time in seconds (device synchronised)."""
    synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - t0
