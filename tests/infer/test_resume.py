"""Resuming ``r21d score``/``extract``: the run identity, ``--retry-errors``, the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from synthetic import write_video

from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.infer.engine import ScoreOptions
from r21d.infer.ray_engine import RayEngine, RayOptions
from r21d.infer.run_identity import model_sha256, run_identity
from r21d.infer.runtime import RuntimeOptions
from r21d.models import build_model


def _video(path: Path, frames: int = 16, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, size=(160, 120), pattern="moving_square", seed=seed)
    return str(path)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("r21d score: error: "), err
    return err


def test_another_model_of_the_same_name_or_other_options_are_refused(
    checkpoint, tiny_spec, tmp_path, capsys
):
    video = _video(tmp_path / "v.mp4")
    out = tmp_path / "r.jsonl"
    base = ["score", video, "-o", str(out), "--workers", "0"]
    assert main([*base, "-m", str(checkpoint), "--clips", "2"]) == 0
    first = out.read_bytes()
    identity = json.loads((tmp_path / "r.jsonl.run.json").read_text())
    assert identity["clips"] == 2 and identity["model_sha256"] == model_sha256(checkpoint)
    capsys.readouterr()

    torch.manual_seed(1)  # other weights, the same file name in another folder
    other = save_checkpoint(build_model(tiny_spec), tiny_spec, tmp_path / "b" / checkpoint.name)
    assert main([*base, "-m", str(other), "--clips", "2"]) == 2
    err = _one_line_error(capsys)
    old, new = model_sha256(checkpoint)[:12], model_sha256(other)[:12]
    assert f"model: tiny.safetensors (sha256 {old}) -> tiny.safetensors (sha256 {new})" in err
    assert "another -o" in err and "--overwrite" in err

    for flags, change in [
        (["--clips", "3"], "--clips: 2 -> 3"),
        (["--clips", "2", "--crops", "3"], "--crops: 1 -> 3"),
        (["--clips", "2", "--resize", "short_edge"], '--resize: "fixed" -> "short_edge"'),
        (["--clips", "2", "--full-frame"], "--full-frame: false -> true"),
        (["--clips", "2", "--precision", "bf16"], '--precision: "fp32" -> "bf16"'),
        (["--clips", "2", "--top-k", "3"], "--top-k: 5 -> 3"),
    ]:
        assert main([*base, "-m", str(checkpoint), *flags]) == 2, flags
        err = _one_line_error(capsys)
        assert change in err and "model:" not in err, (flags, err)
    assert out.read_bytes() == first  # nothing added by a refused run

    assert main([*base, "-m", str(checkpoint), "--clips", "3", "--overwrite"]) == 0
    assert [r["clips"] for r in _records(out)] == [3]


def test_records_without_an_identity_are_refused(checkpoint, tmp_path, capsys):
    video = _video(tmp_path / "v.mp4")
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"path": video, "status": "ok", "model": "tiny.safetensors"}) + "\n")
    args = ["score", video, "-m", str(checkpoint), "-o", str(out), "--workers", "0"]
    assert main([*args, "--clips", "1"]) == 2
    err = _one_line_error(capsys)
    assert f"{out} holds 1 record but no r.jsonl.run.json" in err and "--overwrite" in err
    (tmp_path / "r.jsonl.run.json").write_text("{not json")
    assert main([*args, "--clips", "1"]) == 2
    assert "an unreadable r.jsonl.run.json" in _one_line_error(capsys)


def test_extract_keeps_its_identity_in_the_folder(checkpoint, tmp_path, capsys):
    video = _video(tmp_path / "v.mp4")
    out = tmp_path / "features"
    args = ["extract", video, "-m", str(checkpoint), "-o", str(out), "--workers", "0"]
    assert main([*args, "--clips", "1"]) == 0
    assert json.loads((out / "_run.json").read_text())["command"] == "extract"
    capsys.readouterr()
    assert main([*args, "--clips", "1", "--crops", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--crops: 1 -> 3" in err


def test_the_hash_covers_the_side_files_of_onnx_graphs_and_engines(tmp_path):
    graph, engine = tmp_path / "m.onnx", tmp_path / "m.engine"
    graph.write_bytes(b"graph")
    engine.write_bytes(b"engine")
    without = model_sha256(graph)
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    with_data = model_sha256(graph)
    (tmp_path / "m.onnx.data").write_bytes(b"other weights")
    assert len({without, with_data, model_sha256(graph)}) == 3
    (tmp_path / "m.engine.json").write_text("{}")
    first = model_sha256(engine)
    (tmp_path / "m.engine.json").write_text('{"precision": "fp16"}')
    assert model_sha256(engine) != first


def test_a_ray_run_has_the_local_runs_identity(checkpoint, tiny_spec):
    runtime = RuntimeOptions(device="cpu")
    options = ScoreOptions(num_clips=2)
    local = run_identity("score", checkpoint, runtime.open(checkpoint), options, top_k=5)
    on_ray = RayEngine(checkpoint, runtime, RayOptions())  # reads the file; no cluster needed
    assert run_identity("score", checkpoint, on_ray, options, top_k=5) == local
    bf16 = RayEngine(checkpoint, runtime.replace(precision="bf16"), RayOptions())
    assert run_identity("score", checkpoint, bf16, options, top_k=5)["precision"] == "bf16"


def _read(out: Path, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return _records(out)
    if fmt == "csv":
        with open(out, newline="") as f:
            return list(csv.DictReader(f))
    pq = pytest.importorskip("pyarrow.parquet")
    return pq.read_table(out).to_pylist()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_retry_errors_scores_the_failed_videos_again_once_each(checkpoint, tmp_path, fmt, capsys):
    good = _video(tmp_path / "in" / "good.mp4")
    broken = tmp_path / "in" / "broken.mp4"
    broken.write_bytes(b"\0" * 64)
    out = tmp_path / f"r.{fmt}"
    args = ["score", str(tmp_path / "in"), "-m", str(checkpoint), "-o", str(out)]
    args += ["--clips", "1", "--workers", "0"]
    assert main(args) == 1
    before = {r["path"]: r for r in _read(out, fmt)}
    assert before[str(broken)]["status"] == "error"
    capsys.readouterr()

    _video(broken, seed=3)  # the file is fixed
    assert main(args) == 0  # a plain resume leaves the error record alone
    err = capsys.readouterr().err
    assert "0 videos to score, 2 already" in err and "(1 of them errors: --retry-errors" in err
    assert "1 videos skipped have an error record from an earlier run" in err

    assert main([*args, "--retry-errors"]) == 0
    after = _read(out, fmt)
    assert sorted(r["path"] for r in after) == sorted([good, str(broken)])  # one record each
    by_path = {r["path"]: r for r in after}
    assert by_path[str(broken)]["status"] == "ok"
    assert by_path[good] == before[good]  # not scored again
    assert "1 videos to score (1 of them earlier errors, scored again), 1 already" in (
        capsys.readouterr().err
    )


def test_retry_errors_keeps_the_errors_of_videos_not_in_this_run(checkpoint, tmp_path):
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    one.write_bytes(b"")
    two.write_bytes(b"")
    out = tmp_path / "r.jsonl"
    base = ["-m", str(checkpoint), "-o", str(out), "--clips", "1", "--workers", "0"]
    assert main(["score", str(one), str(two), *base]) == 1
    _video(one)
    assert main(["score", str(one), *base, "--retry-errors"]) == 0
    statuses = {r["path"]: r["status"] for r in _records(out)}
    assert statuses == {str(one): "ok", str(two): "error"}


def test_the_summary_names_the_first_failures_and_where_they_all_are(checkpoint, tmp_path, capsys):
    for i in range(5):
        (tmp_path / "in" / f"bad{i}.mp4").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"bad{i}.mp4").write_bytes(b"\0" * (i + 1))
    out = tmp_path / "r.jsonl"
    args = ["score", str(tmp_path / "in"), "-m", str(checkpoint), "-o", str(out)]
    assert main([*args, "--clips", "1", "--workers", "0"]) == 1
    err = capsys.readouterr().err
    named = [line for line in err.splitlines() if line.startswith("  failed: ")]
    assert [line.split(":")[1].strip() for line in named] == [
        str(tmp_path / "in" / f"bad{i}.mp4") for i in range(3)
    ]
    assert all(len(line.split(": ", 2)[2]) > 5 for line in named)  # each says why
    assert f'... and 2 more; every failure is a record with "status": "error" in {out}' in err
    assert "--retry-errors scores them again" in err


def test_scans_record_link_loops_and_dangling_links_as_failures(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    good = _video(folder / "good.mp4")
    (folder / "a").symlink_to("b")
    (folder / "b").symlink_to("a")
    (folder / "x.mp4").symlink_to("/nonexistent.mp4")
    (folder / "notes.txt").symlink_to("/nonexistent.txt")  # not a video: left out
    (folder / "up").symlink_to("..")  # leads back to an enclosing folder
    linked = _video(tmp_path / "elsewhere" / "c.mp4", seed=1)
    (folder / "more").symlink_to(Path(linked).parent)  # a linked folder is scanned
    out = tmp_path / "r.jsonl"
    args = ["score", str(folder), "-m", str(checkpoint), "-o", str(out), "--clips", "1"]
    assert main([*args, "--workers", "0"]) == 1
    records = {r["path"]: r for r in _records(out)}
    errors = {Path(p).relative_to(folder).as_posix(): r["error"] for p, r in records.items()
              if r["status"] == "error"}  # fmt: skip
    assert errors == {
        "a": "symbolic link loop (it leads to b, which leads back)",
        "b": "symbolic link loop (it leads to a, which leads back)",
        "x.mp4": "dangling symbolic link to /nonexistent.mp4",
        "up/in": f"symbolic link loop: this is {folder} again",
    }
    assert records[good]["status"] == "ok"
    assert records[str(folder / "more" / "c.mp4")]["status"] == "ok"
    assert len(records) == 6
    assert "failed 4" in capsys.readouterr().err

    assert main([*args, "--workers", "0", "--retry-errors"]) == 1  # still broken: recorded again
    assert sorted(r["path"] for r in _records(out)) == sorted(records)


def test_extract_retry_errors_writes_the_features_once(checkpoint, tmp_path):
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"")
    out = tmp_path / "features"
    args = ["extract", str(broken.parent), "-m", str(checkpoint), "-o", str(out)]
    args += ["--clips", "1", "--workers", "0"]
    assert main(args) == 1
    assert [r["file"] for r in _records(out / "index.jsonl")] == [None]
    _video(broken)
    assert main([*args, "--retry-errors"]) == 0
    (record,) = _records(out / "index.jsonl")
    assert record["status"] == "ok" and (out / record["file"]).is_file()
