"""``r21d timeline``: sliding windows over a whole file, their segments and plot.

The proof is on real video: two real Kinetics clips back to back in one file, scored by the
real Kinetics-400 I3D, must give a timeline that names the first clip's action in the first
part, the second's in the second part, and one segment for each.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from synthetic import read_index, write_video

from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.errors import BadOptionError
from r21d.infer.clips import stride_frames, window_starts
from r21d.infer.decode import decode_clips
from r21d.infer.engine import ScoreOptions
from r21d.infer.runtime import RuntimeOptions
from r21d.infer.timeline import score_timeline
from r21d.infer.windows import MovingAverage, ScoredWindow, find_segments
from r21d.models import build_model

PART_FRAMES = 96
"""Frames of each real clip in the two-part video (the centre of each clip)."""
FPS = 30
PARTS = (("arm_wrestling.mp4", "arm wrestling"), ("flipping_pancake.mkv", "flipping pancake"))


def _central_frames(path: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The middle ``count`` frames of a video, short side scaled to the height, centre-cut."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    first = (len(frames) - count) // 2
    width, height = size
    out = []
    for frame in frames[first : first + count]:
        scaled = round(frame.width * height / frame.height)
        image = frame.to_ndarray(format="rgb24", width=max(scaled, width), height=height)
        left = (image.shape[1] - width) // 2
        out.append(np.ascontiguousarray(image[:, left : left + width]))
    return out


@pytest.fixture(scope="module")
def two_part_video(shared_videos, tmp_path_factory) -> Path:
    """arm wrestling, then flipping pancake: 96 frames of each, one 30 fps 320x240 H.264 file."""
    frames = []
    for name, _ in PARTS:
        frames += _central_frames(shared_videos / name, PART_FRAMES, (320, 240))
    path = tmp_path_factory.mktemp("timeline") / "two_actions.mp4"
    return write_video(path, np.stack(frames), fps=FPS, gop=30)


@pytest.mark.slow
def test_real_i3d_timeline_names_each_part_and_finds_one_segment_per_part(
    i3d_checkpoint, two_part_video, tmp_path, capsys
):
    out = tmp_path / "timeline.jsonl"
    stride = 32  # frames: windows at 0, 32, 64 (first part), 96, 128 (second part)
    args = ["timeline", str(two_part_video), "--model", str(i3d_checkpoint), "-o", str(out)]
    args += ["--stride-s", str(stride / FPS), "--device", "cpu", "--workers", "1"]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    windows = [r for r in records if r["type"] == "window"]
    segments = [r for r in records if r["type"] == "segment"]

    # the I3D's window: 64 frames at frame step 1, one every `stride` frames, to the end
    assert [w["start_frame"] for w in windows] == [0, 32, 64, 96, 128]
    for i, w in enumerate(windows):
        assert w["window"] == i
        assert w["end_frame"] == w["start_frame"] + 63
        assert w["start_s"] == pytest.approx(w["start_frame"] / FPS, abs=1e-4)
        assert w["end_s"] == pytest.approx(w["end_frame"] / FPS, abs=1e-4)

    first, second = (label for _, label in PARTS)
    for w in windows:
        top = w["top_k"][0]["label"]
        if w["end_frame"] < PART_FRAMES:
            assert top == first, w
        if w["start_frame"] >= PART_FRAMES:
            assert top == second, w
    assert [s["label"] for s in segments] == [first, second]
    assert segments[0]["start_s"] == 0.0
    assert segments[1]["end_s"] == windows[-1]["end_s"]
    assert segments[0]["first_window"] == 0 and segments[1]["last_window"] == len(windows) - 1
    printed = capsys.readouterr().out
    assert first in printed and second in printed
    plot = out.with_suffix(".png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sliding_windows_take_the_models_frame_step_at_the_stride(tmp_path):
    path = write_video(tmp_path / "index.mp4", 100, fps=25, gop=10)
    stride = stride_frames(0.4, 25, 8, 2)
    assert stride == 10
    out = decode_clips(path, clip_len=8, frame_step=2, crop_size=None, stride_s=0.4)
    assert out.starts == window_starts(100, 8, 2, stride) == list(range(0, 86, 10))
    for clip, start in zip(out.clips, out.starts, strict=True):
        assert [read_index(frame) for frame in clip] == list(range(start, start + 15, 2))
    part = decode_clips(
        path, clip_len=8, frame_step=2, crop_size=None, stride_s=0.4, part=slice(3, 6)
    )
    assert part.starts == out.starts[3:6]
    np.testing.assert_array_equal(part.clips, out.clips[3:6])


def test_window_placement_rules():
    assert stride_frames(None, 30, 64) == 32  # default: half a window
    assert stride_frames(None, 30, 8, 2) == 7  # span 15
    assert stride_frames(0.01, 25, 8) == 1  # never less than one frame
    assert window_starts(20, 8, 1, 4) == [0, 4, 8, 12]  # 12 + 8 = 20: the last one that fits
    assert window_starts(5, 8, 1, 4) == [0]  # shorter than one window: one window
    with pytest.raises(BadOptionError):
        stride_frames(0, 25, 8)
    with pytest.raises(BadOptionError):
        ScoreOptions(num_clips=10, stride_s=1.0)
    with pytest.raises(BadOptionError):
        ScoreOptions(part=slice(0, 2))


def test_a_long_video_scored_in_parts_equals_one_pass(checkpoint, tmp_path):
    path = write_video(tmp_path / "v.mp4", 60, size=(160, 120), pattern="moving_square")
    runtime = RuntimeOptions(device="cpu", workers=0, threads=1)
    backend = runtime.open(checkpoint)
    whole = score_timeline(path, backend, runtime, stride_s=0.2, smooth=3, part_size=100)
    parts = score_timeline(path, backend, runtime, stride_s=0.2, smooth=3, part_size=4)
    assert whole.stride == 5 and len(whole.windows) == len(window_starts(60, 8, 1, 5)) == 11
    assert [w.start_frame for w in parts.windows] == [w.start_frame for w in whole.windows]
    np.testing.assert_allclose(parts.smoothed, whole.smoothed, atol=1e-6)
    # the causal moving average over the last 3 windows
    probs = np.stack([w.probs for w in whole.windows])
    np.testing.assert_allclose(whole.smoothed[5], probs[3:6].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(whole.smoothed[1], probs[:2].mean(axis=0), atol=1e-6)


def test_a_video_shorter_than_a_window_gets_one_window_ending_at_its_last_frame(
    checkpoint, tmp_path
):
    path = write_video(tmp_path / "short.mp4", 5, size=(160, 120))
    runtime = RuntimeOptions(device="cpu", workers=0, threads=1)
    timeline = score_timeline(path, runtime.open(checkpoint), runtime)
    assert [(w.start_frame, w.end_frame) for w in timeline.windows] == [(0, 4)]


def _windows(n: int) -> list[ScoredWindow]:
    return [ScoredWindow(i, 4 * i, 4 * i + 7, 0.5 * i, 0.5 * i + 0.875, None) for i in range(n)]


def test_segments_are_runs_of_one_smoothed_top_class_above_the_threshold(tiny_spec):
    smoothed = np.array(
        [
            [0.9, 0.1, 0, 0, 0],  # a
            [0.7, 0.3, 0, 0, 0],  # a
            [0.4, 0.35, 0.25, 0, 0],  # below the threshold: ends the run
            [0.6, 0.4, 0, 0, 0],  # a again: a new segment
            [0.2, 0.8, 0, 0, 0],  # b takes over: another segment
            [0.1, 0.9, 0, 0, 0],
        ]
    )
    segments = find_segments(_windows(6), smoothed, tiny_spec, threshold=0.5)
    assert [(s.label, s.first_window, s.last_window) for s in segments] == [
        ("a", 0, 1),
        ("a", 3, 3),
        ("b", 4, 5),
    ]
    assert segments[0].start_s == 0.0 and segments[0].end_s == 0.5 + 0.875
    assert segments[0].peak == pytest.approx(0.9) and segments[0].mean == pytest.approx(0.8)
    assert find_segments(_windows(6), smoothed, tiny_spec, threshold=0.95) == []


def test_moving_average_is_over_the_last_n():
    average = MovingAverage(2)
    np.testing.assert_allclose(average.add(np.array([1.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(average.add(np.array([0.0, 1.0])), [0.5, 0.5])
    np.testing.assert_allclose(average.add(np.array([0.0, 1.0])), [0.0, 1.0])
    with pytest.raises(BadOptionError):
        MovingAverage(0)


def test_cli_writes_segments_to_their_own_file_and_reports_a_missing_video(
    checkpoint, tmp_path, capsys
):
    path = write_video(tmp_path / "v.mp4", 40, size=(160, 120), pattern="moving_square")
    out, segments = tmp_path / "w.jsonl", tmp_path / "s.jsonl"
    args = ["timeline", str(path), "--model", str(checkpoint), "-o", str(out), "--device", "cpu"]
    args += ["--segments", str(segments), "--threshold", "0.2", "--probs", "--no-plot"]
    assert main([*args, "--workers", "0", "--threads", "1", "--smooth", "2"]) == 0
    windows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {w["type"] for w in windows} == {"window"} and len(windows) == 9  # 0, 4, ... 32
    assert all(len(w["smoothed_probs"]) == 5 and "smoothed_top_k" in w for w in windows)
    found = [json.loads(line) for line in segments.read_text().splitlines()]
    assert all(s["type"] == "segment" for s in found)
    assert not out.with_suffix(".png").exists()
    capsys.readouterr()
    missing = ["timeline", str(tmp_path / "nope.mp4"), "--model", str(checkpoint)]
    assert main(missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"r21d timeline: error: {tmp_path / 'nope.mp4'}: no such video file"]


def test_top_k_above_the_class_count_is_refused_naming_the_flag(checkpoint, tmp_path, capsys):
    path = write_video(tmp_path / "v.mp4", 24)
    for command in ("timeline", "stream"):
        out = tmp_path / f"{command}.jsonl"
        argv = [command, str(path), "--model", str(checkpoint), "-o", str(out), "--top-k", "6"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"r21d {command}: error: --top-k 6: tiny.safetensors has 5 classes; "
            "give --top-k 5 or less"
        ]
        assert not out.exists()


def test_the_default_top_k_shrinks_to_a_model_with_fewer_classes(spread, tmp_path):
    from r21d.models import create_spec

    spec = create_spec("r2plus1d_18", 2, 8, width=0.125, labels=("left", "right"))
    model = save_checkpoint(spread(build_model(spec)), spec, tmp_path / "two.safetensors")
    path = write_video(tmp_path / "v.mp4", 24)
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(path), "--model", str(model), "-o", str(out), "--clips", "1"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [t["label"] for t in record["top_k"]] in (["left", "right"], ["right", "left"])
    for command in ("timeline", "stream"):
        out = tmp_path / f"{command}.jsonl"
        argv = [command, str(path), "--model", str(model), "-o", str(out)]
        assert main(argv + (["--no-plot"] if command == "timeline" else [])) == 0
        window = json.loads(out.read_text().splitlines()[0])
        assert len(window["top_k"]) == 2, command
