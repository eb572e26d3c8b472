"""Decoding clips from real and synthetic videos: right frames, bounded work, clear errors.

Synthetic videos show their own frame index as a bit pattern (``synthetic.read_index``), so
every test can check that seeking, timestamp handling and window placement returned exactly
the frames the protocol asks for.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from synthetic import read_index, vfr_times, write_video

from r21d.infer.clips import clip_span, crop_boxes
from r21d.infer.decode import (
    VideoError,
    decode_clips,
    decode_for_spec,
    decode_window,
    probe,
)
from r21d.infer.frame_reader import LOOKAHEAD


def indices(clips: np.ndarray, turns: int = 0) -> list[list[int]]:
    """Frame index shown in every frame of every clip (undoing ``turns`` quarter turns)."""
    return [[read_index(np.rot90(frame, -turns)) for frame in clip] for clip in clips]


def expected(starts: list[int], clip_len: int, frame_step: int = 1) -> list[list[int]]:
    return [[s + k * frame_step for k in range(clip_len)] for s in starts]


def reference_frames(path, height: int, width: int) -> list[np.ndarray]:
    """Every frame by a plain linear decode, scaled the way decode_clips scales."""
    with av.open(str(path)) as container:
        return [
            f.to_ndarray(format="rgb24", width=width, height=height, interpolation="BILINEAR")
            for f in container.decode(video=0)
        ]


@pytest.mark.parametrize(
    "codec, suffix, bframes",
    [
        ("libx264", ".mp4", 0),
        ("libx264", ".mkv", 2),
        ("libx264", ".mov", 2),
        ("mpeg4", ".avi", 2),
        ("mpeg4", ".mp4", 0),
    ],
)
def test_clips_hold_exactly_the_uniformly_spaced_frames(tmp_path, codec, suffix, bframes):
    path = write_video(tmp_path / f"v{suffix}", 90, codec=codec, gop=10, bframes=bframes)
    out = decode_clips(path, clip_len=8, frame_step=2, num_clips=4, crop_size=None)
    assert out.starts == [0, 25, 50, 75]  # span 15, last start 75
    assert indices(out.clips) == expected(out.starts, 8, 2)
    assert out.clips.shape == (4, 8, 128, 171, 3)
    assert out.clips.dtype == np.uint8 and out.clips.flags.c_contiguous
    assert out.info.num_frames == 90 and not out.short
    source = "duration" if suffix == ".mkv" else "header"  # MKV headers carry no frame count
    assert out.info.frame_count_source == source


@pytest.mark.parametrize(
    "codec, suffix",
    [("libx264", ".mp4"), ("libx264", ".mkv"), ("libx264", ".ts"), ("mpeg4", ".avi")],
)
def test_seeking_on_a_long_video_decodes_only_near_the_windows(tmp_path, codec, suffix):
    # MPEG-TS seeks land on any packet, AVI seeks by decode time: both must still find the
    # key frame before each window without decoding the whole video
    gop, clip_len, num_clips = 50, 8, 10
    path = write_video(  # 60 s at 25 fps
        tmp_path / f"long{suffix}", 1500, codec=codec, size=(32, 24), gop=gop, bframes=2
    )
    out = decode_clips(path, clip_len=clip_len, num_clips=num_clips, crop_size=None)
    assert indices(out.clips) == expected(out.starts, clip_len)
    assert out.starts[-1] == 1500 - clip_len
    # each window costs at most its span plus the distance from the key frame before it
    assert out.frames_decoded <= num_clips * (clip_span(clip_len) + gop) + LOOKAHEAD
    assert out.frames_decoded < 1500 / 2


def test_overlapping_windows_are_decoded_once(tmp_path):
    path = write_video(tmp_path / "v.mp4", 40, gop=40)
    out = decode_clips(path, clip_len=16, num_clips=10, crop_size=None)
    assert indices(out.clips) == expected(out.starts, 16)
    assert out.frames_decoded <= 40 + LOOKAHEAD


def test_frames_match_a_linear_decode_of_a_real_clip(shared_videos):
    path = shared_videos / "arm_wrestling.mp4"  # key frames at 0, 187, 230, 268
    out = decode_clips(path, clip_len=8, num_clips=3, crop_size=None)
    reference = reference_frames(path, 128, 171)
    assert out.starts == [0, 136, 272]
    for clip, start in zip(out.clips, out.starts, strict=True):
        np.testing.assert_array_equal(clip, np.stack(reference[start : start + 8]))


def test_avi_frames_follow_decoder_order_not_its_mislabelled_pts(shared_videos):
    # the AVI's packed B-frames carry the pts of neighbouring packets; the decoder's output
    # order is the presentation order (consecutive frames differ least in that order)
    path = shared_videos / "filling_eyebrows.avi"
    out = decode_clips(path, clip_len=8, num_clips=3, crop_size=None)
    reference = reference_frames(path, 128, 171)
    assert out.info.num_frames == len(reference) == 164
    for clip, start in zip(out.clips, out.starts, strict=True):
        np.testing.assert_array_equal(clip, np.stack(reference[start : start + 8]))


def test_unordered_pts_come_out_in_presentation_order(shared_videos):
    path = shared_videos / "unordered_4frames.mov"
    with av.open(str(path)) as container:
        frames = sorted(container.decode(video=0), key=lambda f: f.pts)
        reference = [f.to_ndarray(format="rgb24", width=171, height=128) for f in frames]
    out = decode_clips(path, clip_len=4, num_clips=1, crop_size=None)
    np.testing.assert_array_equal(out.clips[0], np.stack(reference))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_makes_frames_upright(tmp_path, rotation):
    path = write_video(tmp_path / "rot.mp4", 20, size=(64, 48), rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    out = decode_clips(
        path, clip_len=4, num_clips=2, resize_mode="short_edge", resize_size=(96,), crop_size=None
    )
    portrait = rotation % 180 != 0
    assert (info.width, info.height) == ((48, 64) if portrait else (64, 48))
    assert out.clips.shape[2:4] == ((128, 96) if portrait else (96, 128))
    assert indices(out.clips, turns=rotation // 90) == expected(out.starts, 4)


def test_non_square_pixels_keep_the_displayed_aspect(tmp_path):
    path = write_video(tmp_path / "wide.mp4", 10, size=(64, 48), pixel_aspect=Fraction(2))
    info = probe(path)
    assert (info.width, info.height) == (128, 48)
    out = decode_clips(
        path, clip_len=4, num_clips=1, resize_mode="short_edge", resize_size=(48,), crop_size=None
    )
    assert out.clips.shape == (1, 4, 48, 128, 3)
    assert indices(out.clips) == expected(out.starts, 4)


def test_real_rotated_clip_comes_out_portrait_and_short(shared_videos):
    out = decode_clips(
        shared_videos / "rotated_90_3frames.mov",
        clip_len=8,
        num_clips=2,
        resize_mode="short_edge",
        resize_size=(128,),
        crop_size=None,
    )
    assert out.info.rotation == -90 and (out.info.width, out.info.height) == (320, 568)
    assert out.clips.shape == (2, 8, 227, 128, 3)
    assert out.short and out.starts == [0, 0]
    np.testing.assert_array_equal(out.clips[:, 3:], out.clips[:, 2:3].repeat(5, axis=1))


def test_variable_frame_rate_places_windows_by_time(tmp_path):
    fps, n = 25, 60
    path = write_video(tmp_path / "vfr.mkv", n, fps=fps, vfr=True)
    out = decode_clips(path, clip_len=4, num_clips=3, crop_size=None)
    times = vfr_times(n, fps)
    for clip, start in zip(indices(out.clips), out.starts, strict=True):
        first = next(i for i, t in enumerate(times) if t >= (start - 0.5) / fps)
        assert clip == list(range(first, first + 4))


def test_late_start_time_of_mpeg_ts(tmp_path):
    path = write_video(tmp_path / "v.ts", 40, start=1.4)
    info = probe(path)
    assert info.start_time == pytest.approx(1.4, abs=1e-3)
    out = decode_clips(path, clip_len=8, num_clips=3, crop_size=None)
    assert indices(out.clips) == expected(out.starts, 8)


def test_stream_without_count_or_duration_counts_its_packets(tmp_path):
    path = write_video(tmp_path / "live.mkv", 60, gop=20, streamed=True)
    info = probe(path)
    assert (info.num_frames, info.frame_count_source) == (60, "decoded")
    assert info.duration == pytest.approx(2.4)
    out = decode_clips(path, clip_len=8, num_clips=3, crop_size=None)
    assert out.starts == [0, 26, 52]
    assert indices(out.clips) == expected(out.starts, 8)


def test_short_video_repeats_its_last_frame(tmp_path):
    path = write_video(tmp_path / "short.mp4", 5)
    out = decode_clips(path, clip_len=8, num_clips=3, crop_size=None)
    assert out.short and out.starts == [0, 0, 0]
    assert indices(out.clips) == [[0, 1, 2, 3, 4, 4, 4, 4]] * 3
    still = decode_clips(write_video(tmp_path / "still.mkv", 1), clip_len=8, num_clips=2)
    assert still.short and still.info.num_frames == 1 and still.clips.shape == (2, 8, 112, 112, 3)


def cut_after_packet(path, keep: int, out):
    """Copy of ``path`` cut just before video packet ``keep``; its header still lists them all."""
    with av.open(str(path)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.size]
    out.write_bytes(path.read_bytes()[: positions[keep]])
    return out


def test_header_claiming_more_frames_than_exist_still_gives_spread_clips(tmp_path):
    path = write_video(tmp_path / "full.mp4", 100, gop=10, faststart=True)
    cut = cut_after_packet(path, 70, tmp_path / "cut.mp4")
    assert probe(cut).num_frames == 100
    out = decode_clips(cut, clip_len=8, num_clips=5, crop_size=None)
    assert out.info.num_frames == 70 and out.info.frame_count_source == "decoded"
    assert out.starts == [0, 15, 31, 46, 62]  # spread over the 70 frames that exist
    assert indices(out.clips) == expected(out.starts, 8)


def test_mostly_missing_frames_are_an_error(tmp_path):
    path = write_video(tmp_path / "full.mp4", 100, gop=10, faststart=True)
    cut = cut_after_packet(path, 30, tmp_path / "cut.mp4")
    with pytest.raises(VideoError, match="only 30 frames could be decoded .* promises 100"):
        decode_clips(cut, clip_len=8)


def test_three_crops_are_left_centre_right_of_the_resized_frame(tmp_path):
    path = write_video(tmp_path / "v.mp4", 30)
    full = decode_clips(path, clip_len=4, num_clips=2, crop_size=None).clips
    three = decode_clips(path, clip_len=4, num_clips=2, crops=3).clips
    assert three.shape == (6, 4, 112, 112, 3)
    for clip in range(2):
        for c, (top, left, h, w) in enumerate(crop_boxes(128, 171, 112, crops=3)):
            np.testing.assert_array_equal(
                three[clip * 3 + c], full[clip][:, top : top + h, left : left + w]
            )


def test_decode_for_spec_reads_the_spec(tmp_path, tiny_spec):
    path = write_video(tmp_path / "v.mp4", 30)
    assert decode_for_spec(path, tiny_spec, num_clips=2).clips.shape == (2, 8, 112, 112, 3)
    full = decode_for_spec(path, tiny_spec, num_clips=2, full_frame=True)
    assert full.clips.shape == (2, 8, 128, 171, 3)
    se = tiny_spec.replace(resize_mode="short_edge", resize_size=(128,), frame_step=2)
    out = decode_for_spec(path, se, num_clips=1, full_frame=True)
    assert out.clips.shape == (1, 8, 128, 171, 3)  # 64x48 -> short side 128 -> 171 wide
    assert indices(out.clips) == expected(out.starts, 8, 2)


def test_decode_window_returns_uncropped_frames(tmp_path):
    path = write_video(tmp_path / "v.mkv", 60, gop=15)
    window = decode_window(
        path, 20, clip_len=8, frame_step=2, resize_mode="fixed", resize_size=(128, 171)
    )
    assert window.shape == (8, 128, 171, 3)
    assert [read_index(f) for f in window] == list(range(20, 36, 2))
    late = decode_window(path, 55, clip_len=8, resize_mode="short_edge", resize_size=(64,))
    assert late.shape == (8, 64, 85, 3)
    assert [read_index(f) for f in late] == list(range(52, 60))  # moved back to end at 59


def test_real_clips_decode_with_their_frame_counts(shared_videos):
    for name, frames, source in [
        ("arm_wrestling.mp4", 280, "header"),
        ("flipping_pancake.mkv", 310, "duration"),  # from the MKV track's DURATION tag
        ("filling_eyebrows.avi", 164, "header"),
    ]:
        out = decode_clips(shared_videos / name, clip_len=16, num_clips=10)
        assert out.clips.shape == (10, 16, 112, 112, 3), name
        assert (out.info.num_frames, out.info.frame_count_source) == (frames, source), name
        assert out.starts[-1] == frames - 16 and not out.short, name
        assert out.frames_decoded <= frames + LOOKAHEAD, name


def test_corrupted_real_clip_is_a_video_error(shared_videos):
    with pytest.raises(VideoError, match="corrupt video data"):
        decode_clips(shared_videos / "corrupted.mp4", clip_len=8)


def test_unreadable_files_are_video_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    whole = write_video(tmp_path / "whole.mp4", 30)  # index at the end, cut off below
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    audio = tmp_path / "audio.mka"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for path, message in [
        (empty, "empty file"),
        (text, "not a readable video file"),
        (truncated, "not a readable video file"),
        (audio, "no video stream"),
        (tmp_path / "missing.mp4", "no such file"),
        (tmp_path, "not a regular file"),
    ]:
        with pytest.raises(VideoError, match=message):
            decode_clips(path, clip_len=8)
        with pytest.raises(VideoError, match=message):
            probe(path)
