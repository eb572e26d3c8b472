"""``r21d score`` and ``r21d extract``: inputs, output formats, and resuming after kills."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_video

from r21d.cli import main
from r21d.infer.cli import shown
from r21d.models import build_model

REPO = Path(__file__).resolve().parents[2]


def _video(path: Path, frames: int = 32, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, size=(160, 120), pattern="moving_square", seed=seed)
    return str(path)


def _records(path: Path) -> list[dict]:
    """JSON Lines: LF ends a record (``splitlines`` would also split at U+2028 in a name)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def test_score_a_folder_to_jsonl(checkpoint, tmp_path, capsys):
    folder = tmp_path / "videos"
    videos = [
        _video(folder / "a.mp4"),
        _video(folder / "sub" / "b.MKV", seed=1),  # recursive, any case of the extension
        _video(folder / "short.mp4", frames=5, seed=2),  # shorter than one 8-frame clip
    ]
    (folder / "readme.txt").write_text("not a video")
    (folder / "._a.mp4").write_bytes(b"\0\5\26\7")  # macOS AppleDouble file: hidden, skipped
    out = tmp_path / "results.jsonl"
    args = ["score", str(folder), "--model", str(checkpoint), "-o", str(out)]
    rc = main([*args, "--top-k", "3", "--clips", "2", "--workers", "1"])

    assert rc == 0
    records = {r["path"]: r for r in _records(out)}
    assert sorted(records) == sorted(videos)
    for path, record in records.items():
        assert record["status"] == "ok" and record["error"] is None
        probs = [t["prob"] for t in record["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) < 1
        assert {t["label"] for t in record["top_k"]} <= set("abcde")
        assert record["clips"] == 2 and record["frames_decoded"] >= 5
        assert record["short"] == path.endswith("short.mp4")
        assert record["model"] == "tiny.safetensors"
        assert record["decode_s"] > 0 and record["model_s"] > 0
    assert records[videos[0]]["duration"] == pytest.approx(32 / 25, abs=0.05)
    printed = capsys.readouterr().out
    assert all(f"{path}: " in printed for path in videos)  # few videos: top labels printed

    rc = main([*args, "--top-k", "3", "--clips", "2", "--workers", "1"])  # nothing left to do
    assert rc == 0 and len(_records(out)) == 3
    assert "skipped 3" in capsys.readouterr().err


def test_list_files_csv_output_and_errors(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = _video(tmp_path / "v" / "one.mp4"), _video(tmp_path / "v" / "two.avi", seed=3)
    Path("list.txt").write_text(f"# my videos\nv/one.mp4\n\n{tmp_path / 'v' / 'gone.mp4'}\n")
    Path("more.txt").write_text(f"{second}\n{first}\n")  # first again: scored once
    out = tmp_path / "scores.csv"
    rc = main(
        ["score", "@list.txt", "--list", "more.txt", "--model", str(checkpoint),
         "-o", str(out), "--top-k", "2", "--clips", "1", "--workers", "1"]
    )  # fmt: skip

    assert rc == 1  # one video failed
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["path"]: row for row in reader}
        assert reader.fieldnames[:6] == ["path", "status", "label_1", "prob_1", "label_2", "prob_2"]
    assert sorted(rows) == sorted([first, second, str(tmp_path / "v" / "gone.mp4")])
    assert rows[first]["status"] == "ok" and float(rows[first]["prob_1"]) >= float(
        rows[first]["prob_2"]
    )
    assert rows[first]["label_1"] in "abcde" and rows[first]["clips"] == "1"
    gone = rows[str(tmp_path / "v" / "gone.mp4")]
    assert gone["status"] == "error" and "gone.mp4" in gone["error"] and gone["label_1"] == ""


def test_resuming_with_another_model_is_refused_and_overwrite_starts_over(
    checkpoint, tmp_path, capsys
):
    video = _video(tmp_path / "v.mp4")
    out = tmp_path / "r.jsonl"
    base = ["score", video, "-o", str(out), "--clips", "1", "--workers", "0"]
    assert main([*base, "--model", str(checkpoint)]) == 0
    other = checkpoint.with_name("other.safetensors")
    other.write_bytes(checkpoint.read_bytes())
    capsys.readouterr()
    assert main([*base, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model: tiny.safetensors (sha256 " in err
    assert "-> other.safetensors (sha256 " in err and "--overwrite" in err
    assert main([*base, "--model", str(other), "--overwrite"]) == 0
    assert [r["model"] for r in _records(out)] == ["other.safetensors"]
    assert main(["score", str(tmp_path / "nowhere"), "--model", str(checkpoint)]) == 2


def test_extract_writes_clip_and_video_features(checkpoint, tmp_path, tiny_spec):
    videos = [_video(tmp_path / "in" / f"{name}.mp4", seed=i) for i, name in enumerate("xy")]
    (tmp_path / "in" / "bad.mp4").write_bytes(b"")
    out = tmp_path / "features"
    args = ["extract", str(tmp_path / "in"), "--model", str(checkpoint), "-o", str(out)]
    assert main([*args, "--clips", "1", "--crops", "3", "--workers", "1"]) == 1  # 3 crops a clip

    index = {r["path"]: r for r in _records(out / "index.jsonl")}
    assert len(index) == 3
    dim = build_model(tiny_spec).feature_dim
    for video in videos:
        record = index[video]
        assert record["status"] == "ok" and (record["clips"], record["dim"]) == (3, dim)
        with np.load(out / record["file"], allow_pickle=False) as data:
            clip_features = data["clip_features"]
            assert clip_features.shape == (3, dim) and clip_features.dtype == np.float32
            np.testing.assert_allclose(data["video_feature"], clip_features.mean(0), rtol=1e-6)
    assert index[str(tmp_path / "in" / "bad.mp4")]["file"] is None
    assert main([*args, "--clips", "1", "--crops", "3", "--workers", "1"]) == 0  # nothing to redo
    assert len(_records(out / "index.jsonl")) == 3


def _start_and_stop(folder: Path, checkpoint: Path, out: Path, sig: int) -> int:
    """Run ``python -m r21d score`` and send ``sig`` once two records are on disk."""
    command = [
        sys.executable, "-m", "r21d", "score", str(folder), "--model", str(checkpoint),
        "-o", str(out), "--workers", "1", "--batch-size", "1", "--clips", "1",
    ]  # fmt: skip
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, out.with_suffix(".log").read_text()
        os.kill(process.pid, sig)
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_an_interrupted_run_resumes_without_losing_or_repeating_videos(checkpoint, tmp_path, sig):
    folder = tmp_path / "videos"
    videos = [_video(folder / f"clip{i}.mp4", frames=24, seed=i) for i in range(8)]
    out = tmp_path / "results.jsonl"

    rc = _start_and_stop(folder, checkpoint, out, sig)
    if sig == signal.SIGINT:
        assert rc == 130
        assert "interrupted; run again to resume" in out.with_suffix(".log").read_text()
    else:
        assert rc == -signal.SIGKILL
    with open(out, "rb") as f:  # a kill may leave half a line; resuming must cut it
        done = [json.loads(line) for line in f.read().split(b"\n")[:-1]]
    assert 2 <= len(done) < len(videos)

    rc = main(["score", str(folder), "--model", str(checkpoint), "-o", str(out),
               "--workers", "1", "--clips", "1"])  # fmt: skip
    assert rc == 0
    paths = [r["path"] for r in _records(out)]
    assert sorted(paths) == sorted(videos)  # every video exactly once
    assert paths[: len(done)] == [r["path"] for r in done]  # earlier records kept as they were


ODD_NAME = b'caf\xe9, "quoted"\nline\rend\xe2\x80\xa8.mp4'
"""A file name with a byte that is not UTF-8, a comma, quotes, LF, CR and U+2028."""


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_any_file_name_round_trips_through_the_records(checkpoint, tmp_path, suffix, capsys):
    folder = tmp_path / "in"
    odd = _video(Path(os.fsdecode(os.fsencode(folder) + b"/" + ODD_NAME)))
    plain = _video(folder / "plain.mp4", seed=1)
    out = tmp_path / f"r{suffix}"
    args = ["score", str(folder), "--model", str(checkpoint), "-o", str(out), "--clips", "1"]
    assert main([*args, "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "caf\\udce9" in printed and "\\n" in printed  # shown escaped, one line each

    if suffix == ".jsonl":
        data = out.read_bytes()
        data.decode("utf-8")  # valid UTF-8 whatever the names hold
        records = [json.loads(line) for line in data.split(b"\n")[:-1]]
    else:
        with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
            records = list(csv.DictReader(f))
    assert sorted(r["path"] for r in records) == sorted([odd, plain])
    assert {os.fsencode(r["path"]) for r in records} >= {os.fsencode(folder) + b"/" + ODD_NAME}
    assert all(r["status"] == "ok" for r in records)

    assert main([*args, "--workers", "0"]) == 0  # resumed: both skipped, nothing rescored
    assert "skipped 2" in capsys.readouterr().err
    assert out.read_bytes().count(b"tiny.safetensors") == 2


def test_a_broken_video_of_any_name_is_printed_escaped_and_recorded(checkpoint, tmp_path, capsys):
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/" + ODD_NAME)
    Path(odd).write_bytes(b"")
    out = tmp_path / "r.jsonl"
    assert main(["score", odd, "--model", str(checkpoint), "-o", str(out), "--workers", "0"]) == 1
    captured = capsys.readouterr()
    escaped = shown(odd)
    assert f"{escaped}: error: " in captured.out and "\n" not in captured.out[:-1]
    assert f"  failed: {escaped}: " in captured.err
    (record,) = _records(out)
    assert record["path"] == odd and record["status"] == "error" and record["error"]


def test_extract_names_feature_files_of_any_video_name(checkpoint, tmp_path):
    folder = tmp_path / "in"
    odd = _video(Path(os.fsdecode(os.fsencode(folder) + b"/" + ODD_NAME)))
    long = _video(folder / ("x" * 250 + ".mp4"), seed=1)  # a feature name must stay < 256 bytes
    out = tmp_path / "features"
    args = ["extract", str(folder), "--model", str(checkpoint), "-o", str(out)]
    assert main([*args, "--clips", "1", "--workers", "0"]) == 0
    index = {r["path"]: r for r in _records(out / "index.jsonl")}
    assert sorted(index) == sorted([odd, long])
    for record in index.values():
        assert record["file"].isprintable() and (out / record["file"]).is_file()


def test_a_parquet_output_refuses_names_that_are_not_utf8(checkpoint, tmp_path, capsys):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (r21d[ray])")
    odd = _video(Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + ODD_NAME)))
    out = tmp_path / "r.parquet"
    assert main(["score", odd, "--model", str(checkpoint), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"-o {out}: Parquet holds only UTF-8" in err
    assert "caf\\udce9" in err and not list(out.glob("part-*"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--clips", "0"], "--clips (num_clips) must be >= 1, got 0"),
        (["--full-frame", "--crops", "3"], "--full-frame scores the whole frame as one view: "),
        (["--top-k", "0"], "--top-k must be >= 1, got 0"),
    ],
)
def test_bad_options_name_the_flag_before_the_model_is_opened(tmp_path, flags, message, capsys):
    video = _video(tmp_path / "v.mp4")
    missing = str(tmp_path / "no-model.safetensors")  # opened last: never reached
    rc = main(["score", video, "--model", missing, "-o", str(tmp_path / "r.jsonl"), *flags])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"r21d score: error: {message}"), err
    assert err.count("\n") == 1 and "no-model" not in err


def test_top_k_beyond_the_class_count_is_refused_in_one_short_line(checkpoint, tmp_path, capsys):
    video = _video(tmp_path / "v.mp4")
    out = tmp_path / "r.csv"
    assert (
        main(["score", video, "--model", str(checkpoint), "-o", str(out), "--top-k", "100000"]) == 2
    )
    err = capsys.readouterr().err
    assert err == (
        "r21d score: error: --top-k 100000: tiny.safetensors has 5 classes; give --top-k 5 or "
        "less\n"
    )
    assert not out.exists() or out.stat().st_size == 0


@pytest.mark.parametrize(
    "command, output, message",
    [
        ("score", "{tmp}", "-o {tmp} is a folder; give a file name"),
        ("score", "/dev/null", "-o /dev/null is a device, not a regular file"),
        ("score", "/dev/full", "-o /dev/full is a device, not a regular file"),
        ("score", "/proc/nope/x.jsonl", "-o /proc/nope/x.jsonl: cannot create the folder"),
        ("score", "{tmp}/v.mp4/r.parquet", "-o {tmp}/v.mp4/r.parquet: cannot create the folder"),
        ("extract", "{tmp}/v.mp4", "-o {tmp}/v.mp4 exists and is not a folder"),
        ("extract", "/proc/nope", "-o /proc/nope: cannot create the folder"),
        ("timeline", "{tmp}", "-o {tmp} is a folder; give a file name"),
        ("timeline", "/dev/full", "-o /dev/full is a device"),
        ("stream", "/dev/null", "-o /dev/null is a device"),
    ],
)
def test_bad_output_paths_are_refused_before_any_work(tmp_path, command, output, message, capsys):
    video = _video(tmp_path / "v.mp4")
    missing = str(tmp_path / "no-model.safetensors")  # opened after the check: never reached
    output = output.format(tmp=tmp_path)
    assert main([command, video, "--model", missing, "-o", output]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"r21d {command}: error: {message.format(tmp=tmp_path)}"), err
    assert err.count("\n") == 1 and "no-model" not in err


def test_timeline_checks_its_segments_and_plot_paths_too(tmp_path, capsys):
    video = _video(tmp_path / "v.mp4")
    (tmp_path / "folder.png").mkdir()
    base = ["timeline", video, "--model", str(tmp_path / "none.safetensors")]
    base += ["-o", str(tmp_path / "t.jsonl")]
    assert main([*base, "--segments", "/dev/full"]) == 2
    assert "error: --segments /dev/full is a device" in capsys.readouterr().err
    assert main([*base, "--plot", str(tmp_path / "folder.png")]) == 2
    assert f"error: --plot {tmp_path / 'folder.png'} is a folder" in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "folder.jsonl")]) == 2  # the default plot's path
    assert f"-o (its .png plot) {tmp_path / 'folder.png'} is a folder" in capsys.readouterr().err


def test_dev_null_in_a_real_process_is_one_line_without_a_traceback(checkpoint, tmp_path):
    video = _video(tmp_path / "v.mp4")
    command = [sys.executable, "-m", "r21d", "score", video, "-m", str(checkpoint),
               "-o", "/dev/null", "--clips", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "r21d score: error: -o /dev/null is a device, not a regular file\n"
