"""``r21d demo``: score options after ``--`` reach ``r21d score``, with or without a folder."""

from __future__ import annotations

import json
import shutil

from synthetic import write_video

from r21d.cli import main
from r21d.demo import SAMPLE_CLIPS


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_options_after_a_double_dash_with_the_bundled_clips(checkpoint, tmp_path):
    # the sample clips already in the cache (as a first run leaves them): nothing is fetched
    samples = tmp_path / "cache" / "samples"
    samples.mkdir(parents=True)
    write_video(samples / SAMPLE_CLIPS[0], 24)
    for name in SAMPLE_CLIPS[1:]:
        shutil.copy(samples / SAMPLE_CLIPS[0], samples / name)
    out = tmp_path / "demo.jsonl"
    argv = ["demo", "--model", checkpoint, "--cache-dir", tmp_path / "cache", "-o", out]
    assert main([str(a) for a in argv] + ["--", "--clips", "2"]) == 0
    records = _records(out)
    assert sorted(r["path"].rsplit("/", 1)[1] for r in records) == sorted(SAMPLE_CLIPS)
    assert {r["clips"] for r in records} == {2}  # --clips reached score, not the folder


def test_score_options_after_a_folder(checkpoint, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", 24)
    out = tmp_path / "demo.jsonl"
    argv = ["demo", "--model", checkpoint, "-o", out, folder, "--", "--clips", "3"]
    assert main([str(a) for a in argv]) == 0
    assert [r["clips"] for r in _records(out)] == [3]
