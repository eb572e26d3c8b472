"""``r21d timeline``: what happens when in a video file, from sliding windows.

Windows of the spec's clip length at the spec's frame step start every ``stride_s`` seconds
(default: half a window) over the whole file, resized as the spec says and centre-cropped.
They are scored through the scoring core (:func:`~r21d.infer.engine.score_videos` with
``ScoreOptions.stride_s``): seek-based decoding of only the frames the windows use, the core's
decode workers and batching. A long video is scored in parts of :data:`WINDOWS_PER_PART`
windows, so memory stays bounded however long it is.

Output (:func:`write_timeline`): JSON Lines, one ``"type": "window"`` object per window
(:func:`~r21d.infer.windows.window_record`), then one ``"type": "segment"`` object per segment
(or the segments in a file of their own), and a PNG plot (:func:`plot_timeline`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from r21d.infer.clips import clip_span, stride_frames, window_starts
from r21d.infer.engine import ScoreOptions, score_videos
from r21d.infer.records import json_line
from r21d.infer.runtime import RuntimeOptions
from r21d.infer.video_info import VideoError
from r21d.infer.windows import (
    DEFAULT_THRESHOLD,
    MovingAverage,
    ScoredWindow,
    Segment,
    check_threshold,
    find_segments,
    window_record,
)
from r21d.outputs import atomic_file
from r21d.spec import ModelSpec

if TYPE_CHECKING:
    from r21d.infer.backends import Backend

WINDOWS_PER_PART = 32
"""Windows decoded and scored together: an I3D window (64 x 224 x 224 RGB) is 9.6 MB, so a
part holds about 300 MB of frames."""
PLOT_CLASSES = 5
"""Classes drawn in the plot: every segment's class, then the highest peaks."""


@dataclass
class Timeline:
    """Every window of one video, their smoothed probabilities and the segments found.

    ``stride`` is the number of frames between window starts, ``span`` the frames one window
    covers, ``smoothed`` (windows, classes) the moving average over ``smooth`` windows.
    """

    path: str
    spec: ModelSpec
    fps: float
    stride: int
    span: int
    smooth: int
    threshold: float
    windows: list[ScoredWindow]
    smoothed: np.ndarray
    segments: list[Segment]

    def records(self, k: int = 5, with_probs: bool = False) -> list[dict]:
        """One JSON object per window (see :func:`~r21d.infer.windows.window_record`)."""
        return [
            window_record(
                w,
                s,
                self.spec,
                k=k,
                threshold=self.threshold,
                smooth=self.smooth,
                with_probs=with_probs,
            )
            for w, s in zip(self.windows, self.smoothed, strict=True)
        ]


def score_timeline(
    path: str | Path,
    backend: Backend,
    runtime: RuntimeOptions | None = None,
    *,
    stride_s: float | None = None,
    smooth: int = 1,
    threshold: float = DEFAULT_THRESHOLD,
    resize_mode: str | None = None,
    part_size: int = WINDOWS_PER_PART,
) -> Timeline:
    """Score sliding windows over the whole of ``path``; a video that cannot be decoded is a
    :class:`~r21d.infer.video_info.VideoError`."""
    from r21d.infer.decode import probe

    check_threshold(threshold)
    averager = MovingAverage(smooth)
    spec = backend.spec.with_resize_mode(resize_mode)
    info = probe(path)
    stride = stride_frames(stride_s, info.fps, spec.clip_len, spec.frame_step)
    span = clip_span(spec.clip_len, spec.frame_step)
    planned = len(window_starts(info.num_frames, spec.clip_len, spec.frame_step, stride))
    windows: list[ScoredWindow] = []
    for first in range(0, planned, part_size):
        options = ScoreOptions(
            crops=1,
            resize_mode=resize_mode,
            stride_s=stride / info.fps,  # decoding rounds this back to exactly `stride` frames
            part=slice(first, first + part_size),
        )
        (result,) = score_videos([path], backend, options, runtime)
        if not result.ok:
            raise VideoError(result.error)
        if not result.clips:  # the header promised more frames than the file holds
            break
        for start, probs in zip(result.starts, result.clip_probs, strict=True):
            # a video shorter than one window repeats its last frame
            end = round(result.duration * result.fps) - 1 if result.short else start + span - 1
            windows.append(
                ScoredWindow(len(windows), start, end, start / result.fps, end / result.fps, probs)
            )
    if not windows:
        raise VideoError(f"{path}: no window could be decoded")
    smoothed = np.stack([averager.add(w.probs) for w in windows])
    segments = find_segments(windows, smoothed, spec, threshold)
    return Timeline(
        str(path), spec, info.fps, stride, span, smooth, threshold, windows, smoothed, segments
    )


def write_timeline(
    timeline: Timeline,
    output: str | Path,
    *,
    segments_path: str | Path | None = None,
    k: int = 5,
    with_probs: bool = False,
) -> None:
    """Write the window records (and the segment records, unless they go to
    ``segments_path``) as JSON Lines, each file replaced whole once written."""
    records = timeline.records(k, with_probs)
    segments = [s.record() for s in timeline.segments]
    if segments_path is None:
        _write_jsonl(output, records + segments)
    else:
        _write_jsonl(output, records)
        _write_jsonl(segments_path, segments)


def _write_jsonl(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json_line(record))  # valid UTF-8 whatever the video's name holds
        f.flush()
        os.fsync(f.fileno())


def plot_classes(timeline: Timeline, count: int = PLOT_CLASSES) -> list[int]:
    """Classes worth drawing: each segment's class, then the highest smoothed peaks."""
    chosen = list(dict.fromkeys(s.class_index for s in timeline.segments))
    for cls in np.argsort(-timeline.smoothed.max(axis=0), kind="stable"):
        if len(chosen) >= count:
            break
        if int(cls) not in chosen:
            chosen.append(int(cls))
    return chosen


def plot_timeline(timeline: Timeline, path: str | Path, count: int = PLOT_CLASSES) -> Path:
    """A PNG of the top classes' smoothed probabilities over time (at each window's centre),
    the threshold, and the segments shaded in their class's colour."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    classes = plot_classes(timeline, count)
    centres = [(w.start_s + w.end_s) / 2 for w in timeline.windows]
    fig, ax = plt.subplots(figsize=(10, 4))
    colours = {}
    for cls in classes:
        (line,) = ax.plot(
            centres, timeline.smoothed[:, cls], marker=".", label=timeline.spec.label(cls)
        )
        colours[cls] = line.get_color()
    for segment in timeline.segments:
        ax.axvspan(segment.start_s, segment.end_s, color=colours[segment.class_index], alpha=0.15)
        ax.text(
            segment.start_s,
            1.02,
            segment.label,
            fontsize=7,
            color=colours[segment.class_index],
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    ax.axhline(timeline.threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    smoothing = f", moving average of {timeline.smooth}" if timeline.smooth > 1 else ""
    ax.set_ylabel("probability" + (" (smoothed)" if timeline.smooth > 1 else ""))
    ax.set_title(
        f"{Path(timeline.path).name}: {timeline.spec.name}, windows of {timeline.span} frames "
        f"every {timeline.stride} ({timeline.stride / timeline.fps:.2f} s){smoothing}",
        fontsize=9,
        pad=14,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
