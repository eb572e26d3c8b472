"""VideoMAE V2 scored with its own protocol: 5 clips x 3 crops by default, from the spec.

The views are checked against the protocol's definition (DESIGN.md s.12) on a real clip: which
frames (16 at sampling rate 4, 5 windows spread uniformly) and which crops (224x224 at the
start, centre and end of the long side after the short side is scaled to 224), against frames
decoded independently, every frame of the file in order.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.infer.backends import open_backend
from r21d.infer.engine import ScoreOptions, decode_video, score_videos
from r21d.models import build_model, create_spec


def every_frame(path, short_side: int) -> np.ndarray:
    """All frames in presentation order, scaled (bilinear) so the short side of the displayed
    picture is ``short_side`` (non-square pixels widen it; the long side rounded)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sorted(container.decode(stream), key=lambda f: f.pts)
        h, w = frames[0].height, frames[0].width
        w = round(w * (stream.sample_aspect_ratio or 1))  # the displayed width, in pixels
        scale = short_side / min(h, w)
        size = (round(w * scale), short_side) if w >= h else (short_side, round(h * scale))
        scaler = VideoReformatter()
        return np.stack(
            [
                scaler.reformat(
                    f, width=size[0], height=size[1], format="rgb24", interpolation="BILINEAR"
                ).to_ndarray()
                for f in frames
            ]
        )


def test_the_5x3_views_are_the_protocols_frames_and_crops(shared_videos):
    spec = create_spec("videomae2_vit_b", 400)
    assert (spec.clip_len, spec.frame_step, spec.num_clips, spec.num_crops) == (16, 4, 5, 3)
    path = shared_videos / "arm_wrestling.mp4"  # 340x256 shown 427x256 (pixels 64:51), 280 frames
    result, views = decode_video(0, str(path), spec, ScoreOptions().for_spec(spec))

    frames = every_frame(path, 224)
    n, height, width = frames.shape[:3]
    assert (n, height) == (280, 224) and width > 224
    span = (16 - 1) * 4 + 1
    starts = [i * (n - span) // 4 for i in range(5)]  # first and last window touch the ends
    assert result.starts == starts and starts[-1] + span == n
    assert views.shape == (15, 16, 224, 224, 3) and result.clips == 15
    lefts = (0, (width - 224) // 2, width - 224)  # along the long side
    top = (height - 224) // 2
    for clip, start in enumerate(starts):
        window = frames[start : start + span : 4]
        for crop, left in enumerate(lefts):
            expected = window[:, top : top + 224, left : left + 224]
            np.testing.assert_array_equal(views[3 * clip + crop], expected)


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
    """A VideoMAE V2 ViT-S with its family's 5 x 3 protocol, at 4 frames of 64x64 so that a
    folder of real videos scores in seconds (the protocol does not depend on the clip size)."""
    spec = create_spec("videomae2_vit_s", 400, 4, resize_size=(64,), crop_size=64, labels=None)
    path = tmp_path_factory.mktemp("vit") / "vit_s.safetensors"
    return save_checkpoint(build_model(spec), spec, path)


def test_score_follows_the_spec_protocol_one_record_per_video(small_vit, shared_videos, tmp_path):
    out = tmp_path / "results.jsonl"
    code = main(["score", str(shared_videos), "--model", str(small_vit), "-o", str(out)])
    records = {
        r["path"].rsplit("/", 1)[1]: r for r in map(json.loads, out.read_text().split("\n")[:-1])
    }
    assert code == 1  # corrupted.mp4 is one error record; every other video is scored
    videos = [p.name for p in shared_videos.iterdir() if p.name != "MANIFEST.md"]
    assert sorted(records) == sorted(videos)
    for name, record in records.items():
        if name == "corrupted.mp4":
            assert record["status"] == "error" and record["error"]
        else:
            assert record["status"] == "ok" and record["clips"] == 15, (name, record)
    # flags override the protocol
    other = tmp_path / "one_crop.jsonl"
    argv = ["score", str(shared_videos / "arm_wrestling.mp4"), "--model", str(small_vit)]
    assert main([*argv, "-o", str(other), "--clips", "2", "--crops", "1"]) == 0
    assert json.loads(other.read_text())["clips"] == 2


def test_a_clip_of_another_shape_is_refused_clearly(small_vit, shared_videos):
    backend = open_backend(small_vit)
    with pytest.raises(ValueError, match="4x64x64"):
        backend.run(np.zeros((1, 8, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot score whole frames"):
        list(
            score_videos(
                [shared_videos / "arm_wrestling.mp4"], backend, ScoreOptions(full_frame=True)
            )
        )
