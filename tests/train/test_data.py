"""Manifests, label maps, training clips and the dataset's targets and error handling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import read_index, write_video

from r21d.cli import main
from r21d.models import create_spec
from r21d.train.clips import normalize, random_crop, sample_training_clip
from r21d.train.data import (
    VideoRecord,
    load_label_map,
    load_video_set,
    save_label_map,
    write_manifest,
)
from r21d.train.dataset import TrainClips


def test_jsonl_manifest_with_single_and_multiple_labels(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"path": "a.mp4", "label": "fish"}\n\n{"path": "/abs/b.mp4", "labels": ["boat", "fish"]}\n'
    )
    data = load_video_set(tmp_path / "m.jsonl")
    assert data.label_names == ("boat", "fish")  # sorted
    assert data.records == [
        VideoRecord(tmp_path / "a.mp4", (1,)),  # relative to the manifest's folder
        VideoRecord(Path("/abs/b.mp4"), (0, 1)),
    ]


def test_csv_manifest_and_a_given_label_map(tmp_path):
    (tmp_path / "m.csv").write_text("path,labels\nx.mp4,b|a\ny.mp4,c\n")
    data = load_video_set(tmp_path / "m.csv", label_names=["c", "b", "a"])
    assert [r.labels for r in data.records] == [(1, 2), (0,)]
    with pytest.raises(ValueError, match="not in the label map"):
        load_video_set(tmp_path / "m.csv", label_names=["a", "b"])


def test_class_per_folder_tree(tmp_path):
    for cls, names in {"jump": ["1.mp4", "2.avi"], "run": ["3.mkv", "notes.txt"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            (tmp_path / cls / n).write_bytes(b"")
    data = load_video_set(tmp_path)
    assert data.label_names == ("jump", "run")
    assert [(r.path.name, r.labels) for r in data.records] == [
        ("1.mp4", (0,)),
        ("2.avi", (0,)),
        ("3.mkv", (1,)),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"label": "x"}\n', "needs a 'path'"),
        ('{"path": "a.mp4"}\n', "'label' or 'labels'"),
        ('{"path": "a.mp4", "labels": []}\n', "'label' or 'labels'"),
        ("not json\n", "not valid JSON"),
        ("", "no videos"),
    ],
)
def test_bad_manifests_are_clear_errors(tmp_path, text, message):
    (tmp_path / "m.jsonl").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_video_set(tmp_path / "m.jsonl")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_and_label_map_round_trip(tmp_path, suffix):
    records = [VideoRecord(tmp_path / "a.mp4", (0,)), VideoRecord(tmp_path / "b.mp4", (1, 0))]
    names = ("x y", "z")
    write_manifest(records, names, tmp_path / f"out{suffix}")
    assert load_video_set(tmp_path / f"out{suffix}", names).records == records
    save_label_map(names, tmp_path / "labels.txt")
    assert load_label_map(tmp_path / "labels.txt") == names


def test_data_cli_subset_and_manifest(tmp_path, capsys):
    records = [VideoRecord(tmp_path / f"{i}.mp4", (0 if i < 40 else 1,)) for i in range(45)]
    write_manifest(records, ("head", "tail"), tmp_path / "all.jsonl")
    assert main(["data", "subset", str(tmp_path / "all.jsonl"), "--cap", "10", "-o",
                 str(tmp_path / "tp.csv")]) == 0  # fmt: skip
    kept = load_video_set(tmp_path / "tp.csv").records
    assert sum(r.labels == (0,) for r in kept) == 10 and sum(r.labels == (1,) for r in kept) == 5
    assert main(["data", "subset", str(tmp_path / "all.jsonl"), "--random", "7", "-o",
                 str(tmp_path / "r.jsonl")]) == 0  # fmt: skip
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 7
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "cat" / "v.mp4").write_bytes(b"")
    assert main(["data", "manifest", str(tmp_path / "tree"), "-o", str(tmp_path / "t.jsonl")]) == 0
    line = json.loads((tmp_path / "t.jsonl").read_text())
    assert line["label"] == "cat" and line["path"].endswith("v.mp4")


def index_spec(frame_step: int = 1):
    """A spec whose 112x112 crop is the whole resized frame, so frame indices stay readable."""
    return create_spec(
        "r2plus1d_18", 2, 8, width=0.125, frame_step=frame_step, resize_size=(112, 112)
    )


def unnormalize(clip: torch.Tensor, spec) -> np.ndarray:
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    return (clip.movedim(0, -1) * std + mean).round().clamp(0, 255).byte().numpy()


def test_training_clips_are_jittered_windows_at_the_sampling_rate(tmp_path):
    path = write_video(tmp_path / "index.mp4", 40, size=(128, 96))
    spec = index_spec(frame_step=2)
    starts = set()
    for seed in range(12):
        clip = sample_training_clip(path, spec, np.random.default_rng(seed))
        assert clip.shape == (3, 8, 112, 112) and clip.dtype == torch.float32
        frames = [read_index(f) for f in unnormalize(clip, spec)]
        assert frames == [frames[0] + 2 * k for k in range(8)]  # every second frame
        assert 0 <= frames[0] <= 40 - 15
        starts.add(frames[0])
    assert len(starts) >= 6  # temporal jittering: many different start frames


def test_random_crop_and_flip():
    frames = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
    crops = [random_crop(frames, 4, np.random.default_rng(s)) for s in range(20)]
    assert all(c.shape == (2, 4, 4, 3) for c in crops)
    corners = {(int(c[0, 0, 0, 0]) // 3) for c in crops}
    assert len(corners) > 3  # different positions
    for c in crops:  # every crop is a window of the frames, the same one in every frame
        y, x = divmod(int(c[0, 0, 0, 0]) // 3, 8)
        np.testing.assert_array_equal(c, frames[:, y : y + 4, x : x + 4])
    flipped = [random_crop(frames, 6, np.random.default_rng(s), flip=True) for s in range(20)]
    mirrored = [f for f in flipped if f[0, 0, 0, 0] > f[0, 0, -1, 0]]
    assert 0 < len(mirrored) < 20  # about half are mirrored
    with pytest.raises(ValueError, match="smaller than"):
        random_crop(frames, 7, np.random.default_rng(0))


def test_normalize_uses_the_spec_mean_and_std():
    spec = index_spec()
    frames = np.zeros((8, 4, 4, 3), dtype=np.uint8)
    frames[..., 0] = 255
    x = normalize(frames, spec)
    assert x.shape == (3, 8, 4, 4)
    assert float(x[0, 0, 0, 0]) == pytest.approx((255 - spec.mean[0]) / spec.std[0])
    assert float(x[2, 0, 0, 0]) == pytest.approx(-spec.mean[2] / spec.std[2])


def test_multi_label_targets(tmp_path):
    path = write_video(tmp_path / "v.mp4", 12, size=(128, 96))
    spec = create_spec("r2plus1d_18", 4, 8, width=0.125, resize_size=(112, 112))
    record = VideoRecord(path, (1, 3))
    sampled = TrainClips([record], spec, multi_label="sample")
    drawn = {int(sampled[(0, seed)][1]) for seed in range(16)}
    assert drawn == {1, 3}  # one of its labels at random, both over several draws
    sigmoid = TrainClips([record], spec, multi_label="sigmoid")
    assert sigmoid[(0, 0)][1].tolist() == [0.0, 1.0, 0.0, 1.0]
    clip_a, clip_b = sampled[(0, 5)][0], sampled[(0, 5)][0]
    torch.testing.assert_close(clip_a, clip_b)  # a draw is a pure function of its seed


def test_undecodable_videos_are_logged_and_replaced(tmp_path, caplog):
    good = write_video(tmp_path / "good.mp4", 12, size=(128, 96))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    spec = create_spec("r2plus1d_18", 2, 8, width=0.125, resize_size=(112, 112))
    data = TrainClips([VideoRecord(bad, (0,)), VideoRecord(good, (1,))], spec)
    with caplog.at_level(logging.WARNING):
        clip, target = data[(0, 3)]
    assert clip.shape == (3, 8, 112, 112) and int(target) == 1  # the good video stood in
    assert "bad.mp4" in caplog.text
    assert data.bad == {0}
    only_bad = TrainClips([VideoRecord(bad, (0,))], spec)
    with pytest.raises(RuntimeError, match="undecodable"):
        only_bad[(0, 0)]


def test_short_edge_training_clips(tmp_path):
    path = write_video(tmp_path / "wide.mp4", 12, size=(192, 96))
    spec = create_spec(
        "r2plus1d_18", 2, 8, width=0.125, resize_mode="short_edge", resize_size=(128,)
    )
    clip = sample_training_clip(path, spec, np.random.default_rng(0))
    assert clip.shape == (3, 8, 112, 112)  # from a 128x256 frame, aspect kept
