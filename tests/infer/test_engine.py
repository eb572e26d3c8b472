"""The batch-scoring engine: clip packing, per-video averaging, broken files, result records."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
from synthetic import write_video

from r21d.checkpoint import save_checkpoint
from r21d.infer.backends import open_backend
from r21d.infer.decode import decode_for_spec
from r21d.infer.engine import ScoreOptions, score_videos
from r21d.infer.records import RecordFile, csv_columns, feature_file_name, save_features
from r21d.infer.runtime import RuntimeOptions
from r21d.models import build_model


@pytest.fixture
def backend(tiny_spec, tmp_path):
    path = save_checkpoint(build_model(tiny_spec), tiny_spec, tmp_path / "tiny.safetensors")
    return open_backend(path)


class ShapeRecorder:
    """A real backend that also records the shape of every batch it was given."""

    def __init__(self, inner, fixed_batch=None):
        self.inner, self.spec, self.name = inner, inner.spec, inner.name
        self.fixed_batch, self.max_batch, self.default_batch = fixed_batch, None, 4
        self.shapes: list[tuple[int, ...]] = []

    def run(self, frames):
        self.shapes.append(frames.shape)
        return self.inner.run(frames)


def _videos(folder, sizes, frames=32):
    folder.mkdir(exist_ok=True)
    return [
        str(write_video(folder / f"v{i}.mp4", frames, size=size, pattern="moving_square", seed=i))
        for i, size in enumerate(sizes)
    ]


def test_video_prediction_is_the_mean_of_its_clip_softmax_outputs(backend, tmp_path):
    """Packing clips of three videos into batches of 3 must not mix up whose clip is whose."""
    paths = _videos(tmp_path / "v", [(160, 120)] * 3)
    recorder = ShapeRecorder(backend)
    options, runtime = ScoreOptions(num_clips=2), RuntimeOptions(workers=0, batch_size=3)
    results = {r.path: r for r in score_videos(paths, recorder, options, runtime)}

    assert sorted(results) == sorted(paths)
    assert [s[0] for s in recorder.shapes] == [3, 3]  # 6 clips, batches span videos
    for path in paths:
        clips = decode_for_spec(path, backend.spec, num_clips=2).clips
        probs, features = backend.run(clips)  # this video alone, one batch
        result = results[path]
        assert result.ok and result.clips == 2 and result.frames_decoded > 0
        np.testing.assert_allclose(result.clip_probs, probs, atol=1e-5)
        np.testing.assert_allclose(result.probs, probs.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(result.clip_features, features, atol=1e-5)
        np.testing.assert_allclose(result.video_feature, features.mean(axis=0), atol=1e-5)
        assert result.probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert result.model_s > 0 and result.decode_s > 0


def test_full_frame_batches_hold_one_shape_only(backend, tmp_path):
    """Short-edge full frames of landscape and portrait videos differ in shape: never batched
    together, and each video still gets the same scores as when run alone."""
    paths = _videos(tmp_path / "v", [(160, 120), (120, 160), (160, 120)])
    recorder = ShapeRecorder(backend)
    options, runtime = (
        ScoreOptions(num_clips=2, full_frame=True, resize_mode="short_edge"),
        RuntimeOptions(workers=0, batch_size=4),
    )
    results = {r.path: r for r in score_videos(paths, recorder, options, runtime)}

    frame_shapes = {s[1:] for s in recorder.shapes}
    assert frame_shapes == {(8, 128, 171, 3), (8, 171, 128, 3)}
    assert sum(s[0] for s in recorder.shapes) == 6
    portrait = results[paths[1]]
    spec = backend.spec.with_resize_mode("short_edge")
    clips = decode_for_spec(paths[1], spec, num_clips=2, full_frame=True).clips
    np.testing.assert_allclose(portrait.probs, backend.run(clips)[0].mean(axis=0), atol=1e-5)


def test_fixed_batch_backends_get_padded_last_batches(backend, tmp_path):
    paths = _videos(tmp_path / "v", [(160, 120)] * 2)
    plain = {
        r.path: r.probs
        for r in score_videos(paths, backend, ScoreOptions(2), RuntimeOptions(workers=0))
    }
    recorder = ShapeRecorder(backend, fixed_batch=3)
    options, runtime = ScoreOptions(num_clips=2), RuntimeOptions(workers=0, batch_size=3)
    padded = {r.path: r for r in score_videos(paths, recorder, options, runtime)}

    assert [s[0] for s in recorder.shapes] == [3, 3]  # 4 clips: 3 + (1 padded to 3)
    for path in paths:
        assert padded[path].clips == 2
        np.testing.assert_allclose(padded[path].probs, plain[path], atol=1e-5)
    with pytest.raises(ValueError, match="exactly 3 clips"):
        list(
            score_videos(paths, recorder, ScoreOptions(2), RuntimeOptions(workers=0, batch_size=4))
        )


def test_broken_videos_yield_one_error_each_and_the_rest_score(backend, tmp_path, shared_videos):
    """Decode workers in separate processes; every broken file gives one specific error."""
    folder = tmp_path / "mixed"
    good = _videos(folder, [(160, 120)] * 2, frames=40)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n")
    data = (folder / "v0.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    broken = [str(folder / n) for n in ("empty.mp4", "notes.mp4", "truncated.mp4")]
    broken.append(str(shared_videos / "corrupted.mp4"))

    options, runtime = ScoreOptions(num_clips=2), RuntimeOptions(workers=2, batch_size=2)
    results = list(score_videos(good + broken, backend, options, runtime))

    assert sorted(r.path for r in results) == sorted(good + broken)  # exactly one each
    by_path = {r.path: r for r in results}
    for path in good:
        assert by_path[path].ok, by_path[path].error
        assert by_path[path].clips == 2
    for path in broken:
        result = by_path[path]
        assert result.status == "error" and result.probs is None
        assert path in result.error  # the message names the file and says why
        assert len(result.error) > len(path) + 5
    assert "empty" in by_path[broken[0]].error


def test_decode_spec_overrides_the_resize_mode(tiny_spec):
    assert tiny_spec.with_resize_mode(None) is tiny_spec
    short = tiny_spec.with_resize_mode("short_edge")
    assert (short.resize_mode, short.resize_size) == ("short_edge", (128,))
    fixed = short.with_resize_mode("fixed")
    assert (fixed.resize_mode, fixed.resize_size) == ("fixed", (128, 171))


def test_options_reject_impossible_settings():
    with pytest.raises(ValueError, match="crops"):
        ScoreOptions(crops=2)
    with pytest.raises(ValueError, match="whole frame"):
        ScoreOptions(crops=3, full_frame=True)
    with pytest.raises(ValueError, match="num_clips"):
        ScoreOptions(num_clips=0)


def test_record_file_resumes_and_cuts_a_half_written_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    with RecordFile(path) as out:
        out.write({"path": "/a.mp4", "status": "ok"})
        out.write({"path": "/b.mp4", "status": "error", "error": "broken"})
    with open(path, "ab") as f:
        f.write(b'{"path": "/c.mp4", "sta')  # what a kill -9 mid-write leaves

    odd = "/caf\udce9.mp4"  # a Latin-1 file name on a UTF-8 system (os.fsdecode)
    with RecordFile(path) as out:
        assert out.done == {"/a.mp4", "/b.mp4"}
        out.write({"path": "/c.mp4", "status": "ok"})
        out.write({"path": odd, "status": "ok"})
    with RecordFile(path) as out:
        assert [r["path"] for r in out.records] == ["/a.mp4", "/b.mp4", "/c.mp4", odd]

    with RecordFile(path, overwrite=True) as out:
        assert out.done == set()
    assert path.read_text() == ""


def test_record_file_refuses_foreign_or_mismatched_files(tmp_path):
    other = tmp_path / "notes.jsonl"
    other.write_text("hello\n")
    with pytest.raises(ValueError, match="line 1: not a record"):
        RecordFile(other)
    table = tmp_path / "results.csv"
    with RecordFile(table, "csv", columns=csv_columns(3)) as out:
        out.write({"path": "/a.mp4", "status": "ok", "top_k": [], "error": None})
    with pytest.raises(ValueError, match="--top-k"):
        RecordFile(table, "csv", columns=csv_columns(5))
    with RecordFile(table, "csv", columns=csv_columns(3)) as out:
        assert out.done == {"/a.mp4"}
        with pytest.raises(RuntimeError, match="another run"):
            RecordFile(table, "csv", columns=csv_columns(3))


def test_feature_files_hold_clip_features_and_their_mean(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    name = save_features(tmp_path, "/videos/cat.mp4", features)
    assert name == feature_file_name("/videos/cat.mp4") and name.startswith("cat_")
    assert feature_file_name("/other/cat.mp4") != name  # same stem, other folder
    with np.load(tmp_path / name, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["clip_features"], features)
        np.testing.assert_allclose(data["video_feature"], features.mean(axis=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left


def test_a_decoder_process_that_dies_costs_one_video_not_the_run(backend, tmp_path):
    """A crash inside the decoding library kills its process: that video becomes an error
    result, a new worker takes over, and every other video is still scored."""
    paths = _videos(tmp_path / "v", [(160, 120)] * 4, frames=24)
    results = score_videos(
        paths, backend, ScoreOptions(num_clips=1), RuntimeOptions(workers=1, batch_size=1)
    )
    first = next(results)
    (worker,) = mp.active_children()
    os.kill(worker.pid, signal.SIGKILL)  # busy with (or handing over) another video
    rest = list(results)

    assert sorted(r.path for r in [first, *rest]) == sorted(paths)
    died = [r for r in rest if not r.ok]
    assert len(died) == 1 and "decoder process died" in died[0].error
    assert all(r.ok for r in [first, *rest] if r is not died[0])
    assert not mp.active_children()  # the replacement worker was stopped at the end


def test_clips_cross_from_the_workers_in_shared_memory_not_the_pipe(backend, tmp_path):
    """Shared memory and the pipe give the same scores; only a small header crosses the pipe,
    a batch that is a slice of one video's clips is not copied, and no block is left behind."""
    paths = _videos(tmp_path / "v", [(160, 120)] * 3, frames=24)
    clip_bytes = decode_for_spec(paths[0], backend.spec, num_clips=2).clips.nbytes
    before = set(os.listdir("/dev/shm"))
    runs = {}
    for transfer in ("shared_memory", "pipe"):
        runtime = RuntimeOptions(workers=2, batch_size=2)
        results = score_videos(paths, backend, ScoreOptions(2), runtime, transfer=transfer)
        runs[transfer] = {r.path: r for r in results}

    for path in paths:
        shared, piped = runs["shared_memory"][path], runs["pipe"][path]
        np.testing.assert_array_equal(shared.probs, piped.probs)
        assert 0 < shared.transfer_bytes < 4096 < clip_bytes <= piped.transfer_bytes
        assert shared.copy_bytes == piped.copy_bytes == 0  # batch 2 = one video's 2 clips
    assert set(os.listdir("/dev/shm")) == before
    mixed = {
        r.path: r
        for r in score_videos(
            paths, backend, ScoreOptions(2), RuntimeOptions(workers=0, batch_size=3)
        )
    }
    assert sum(r.copy_bytes for r in mixed.values()) == 3 * clip_bytes  # batches span videos
