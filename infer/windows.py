"""Scored sliding windows, shared by ``r21d timeline`` (a file) and ``r21d stream`` (live).

A window is ``clip_len`` frames taken every ``frame_step`` frames (the model's own sampling,
never another), one window starting every stride frames (:func:`.clips.window_starts`). What
is made of the windows' softmax outputs:

- a causal moving average over the last ``smooth`` windows (the anchors' live demos average
  the last few windows too, DESIGN.md s.14); ``smooth=1`` is the window's own output;
- a window's ``label``: the smoothed top class when its smoothed probability reaches the
  threshold, else none;
- segments: runs of consecutive windows with the same label, from the first window's first
  frame to the last window's last frame.

Times are presentation times in seconds from the first frame of the video or stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from r21d.errors import BadOptionError
from r21d.spec import ModelSpec

DEFAULT_THRESHOLD = 0.5
"""Smoothed probability a window's top class needs for the window to carry its label."""


@dataclass
class ScoredWindow:
    """One window and its softmax output.

    ``start_frame`` and ``end_frame`` are the first and last frames the window uses (frame
    indices from the first frame, inclusive); ``start_s`` and ``end_s`` their presentation
    times; ``probs`` (classes,) the model's output for the window.
    """

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    probs: np.ndarray


@dataclass
class Segment:
    """Consecutive windows whose smoothed top class ``label`` stayed above the threshold."""

    class_index: int
    label: str
    start_s: float
    end_s: float
    first_window: int
    last_window: int
    peak: float
    mean: float

    @property
    def windows(self) -> int:
        return self.last_window - self.first_window + 1

    def record(self) -> dict:
        """The segment as a JSON object."""
        return {
            "type": "segment",
            "label": self.label,
            "index": self.class_index,
            "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
            "first_window": self.first_window,
            "last_window": self.last_window,
            "windows": self.windows,
            "peak": round(self.peak, 6),
            "mean": round(self.mean, 6),
        }

    def describe(self) -> str:
        """One readable line: time range, label, peak and mean smoothed probability."""
        return (
            f"{self.start_s:8.2f} - {self.end_s:8.2f} s  {self.label}  (peak {self.peak:.3f}, "
            f"mean {self.mean:.3f}, {self.windows} window{'s' if self.windows > 1 else ''})"
        )


class MovingAverage:
    """Mean of the last ``n`` probability vectors added (fewer at the start)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise BadOptionError(f"--smooth must be >= 1 window, got {n}")
        self.n = n
        self._last: deque[np.ndarray] = deque(maxlen=n)

    def add(self, probs: np.ndarray) -> np.ndarray:
        """Add one window's probabilities; return the average of the last ``n``."""
        self._last.append(np.asarray(probs, np.float32))
        return np.mean(self._last, axis=0)

    def clear(self) -> None:
        """Forget the past (a stream that restarts after a gap)."""
        self._last.clear()


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is a probability in (0, 1], else a :class:`BadOptionError`."""
    if not 0 < threshold <= 1:
        raise BadOptionError(f"--threshold must be in (0, 1], got {threshold}")
    return threshold


def top_k(probs: np.ndarray, spec: ModelSpec, k: int) -> list[dict]:
    """The ``k`` most probable classes as ``{"index", "label", "prob"}``, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [
        {"index": int(i), "label": spec.label(int(i)), "prob": round(float(probs[i]), 6)}
        for i in order
    ]


def window_label(smoothed: np.ndarray, spec: ModelSpec, threshold: float) -> str | None:
    """The smoothed top class's label if its probability reaches ``threshold``, else None."""
    best = int(np.argmax(smoothed))
    return spec.label(best) if smoothed[best] >= threshold else None


def window_record(
    window: ScoredWindow,
    smoothed: np.ndarray,
    spec: ModelSpec,
    *,
    k: int,
    threshold: float,
    smooth: int,
    with_probs: bool = False,
) -> dict:
    """The JSON object of one window: times, frames, top-k (and smoothed top-k), label."""
    record = {
        "type": "window",
        "window": window.index,
        "start_s": round(window.start_s, 4),
        "end_s": round(window.end_s, 4),
        "start_frame": window.start_frame,
        "end_frame": window.end_frame,
        "top_k": top_k(window.probs, spec, k),
    }
    if smooth > 1:
        record["smoothed_top_k"] = top_k(smoothed, spec, k)
    record["label"] = window_label(smoothed, spec, threshold)
    if with_probs:
        record["smoothed_probs"] = [round(float(p), 6) for p in smoothed]
    return record


def find_segments(
    windows: list[ScoredWindow], smoothed: np.ndarray, spec: ModelSpec, threshold: float
) -> list[Segment]:
    """Runs of consecutive windows whose smoothed top class is the same and reaches
    ``threshold``; ``smoothed`` is (windows, classes)."""
    segments: list[Segment] = []
    run: list[int] = []  # positions in ``windows`` of the current run

    def close() -> None:
        if run:
            cls = int(np.argmax(smoothed[run[0]]))
            values = smoothed[run, cls]
            first, last = windows[run[0]], windows[run[-1]]
            segments.append(
                Segment(
                    cls,
                    spec.label(cls),
                    first.start_s,
                    last.end_s,
                    first.index,
                    last.index,
                    float(values.max()),
                    float(values.mean()),
                )
            )
            run.clear()

    for position, probs in enumerate(smoothed):
        cls = int(np.argmax(probs))
        above = probs[cls] >= threshold
        if run and (not above or cls != int(np.argmax(smoothed[run[0]]))):
            close()
        if above:
            run.append(position)
    close()
    return segments
