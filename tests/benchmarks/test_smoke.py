"""Smoke test: every benchmark runs once at tiny size (`r21d bench all --quick`), so none can
rot, and its outputs hold sane, self-consistent numbers. Nothing here judges speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from r21d.benchmarks.run_all import BENCHMARKS
from r21d.cli import main

IN_PROCESS = tuple(name for name in BENCHMARKS if name != "ray")
"""The Ray benchmark starts and stops a Ray cluster: it runs with the Ray tests, apart."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Built models, exports and synthetic videos, shared by this module's runs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def results(tmp_path_factory, cache) -> Path:
    """One quick run of the whole suite through the command line."""
    out = tmp_path_factory.mktemp("results")
    only = ",".join(IN_PROCESS)
    argv = ["bench", "all", "--quick", "--only", only, "--out", str(out), "--cache-dir", str(cache)]
    code = main(argv)
    assert code == 0, (out / "index.md").read_text() if (out / "index.md").exists() else code
    return out


def load(results: Path, name: str) -> dict:
    data = json.loads((results / f"{name}.json").read_text())
    assert data["benchmark"] == name
    machine = data["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1 and machine["ram_gib"] > 0
    for package in ("python", "torch", "onnxruntime", "av", "numpy"):
        assert machine["versions"][package], package
    return data


def test_every_benchmark_writes_json_markdown_and_an_index(results):
    index = (results / "index.md").read_text()
    assert "FAILED" not in index and "skipped" not in index
    for name in IN_PROCESS:
        assert f"[{name}.md]({name}.md)" in index
        markdown = (results / f"{name}.md").read_text()
        assert markdown.startswith("# ") and "\n|---" in markdown
        for image in [line for line in markdown.splitlines() if line.startswith("![")]:
            png = results / image.split("(")[1].rstrip(")")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_bench_numbers_follow_from_the_timings(results):
    data = load(results, "model")
    rows = data["results"]
    assert {r["backend"] for r in rows} >= {"torch", "onnxruntime"}, data["summary"]["skipped"]
    assert {(r["height"], r["width"]) for r in rows} == {(112, 112), (128, 171)}
    ceiling = data["summary"]["ceilings"]["fp32"]["gflops"]
    assert ceiling > 0
    for r in rows:
        t = r["timing"]
        assert 0 < t["min_ms"] <= t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"] <= t["max_ms"]
        assert math.isclose(r["clips_per_s"], r["batch"] / (t["median_ms"] / 1e3))
        assert math.isclose(r["gflops"], r["gflop_per_clip"] * r["clips_per_s"])
        same_shape = [x for x in rows if (x["height"], x["batch"]) == (r["height"], r["batch"])]
        reference = next(x["clips_per_s"] for x in same_shape if x["variant"] == "torch:fp32")
        assert math.isclose(r["vs_torch_fp32"], r["clips_per_s"] / reference)
    # The full frame costs more FLOPs than the crop (2x5 positions against 1).
    flops = {r["height"]: r["gflop_per_clip"] for r in rows}
    assert flops[128] > flops[112] > 0


def test_pipeline_bench_decodes_only_what_the_clips_need(results):
    data = load(results, "pipeline")
    rows = data["results"]
    (throughput,) = [r for r in rows if r["part"] == "throughput"]
    assert throughput["engine_videos_per_s"] > 0 and throughput["model_clips_per_s"] > 0
    assert math.isclose(
        throughput["ratio"], throughput["engine_clips_per_s"] / throughput["model_clips_per_s"]
    )
    assert throughput["clips"] == throughput["videos"] * data["settings"]["num_clips"]
    for r in [r for r in rows if r["part"] == "decode"]:
        assert r["frames_needed"] <= r["frames_decoded"] <= r["bound"]
    short, long = [r for r in rows if r["part"] == "long_video"]
    fps = 30
    assert long["keyframe_interval"] == short["keyframe_interval"] == 2 * fps
    # 2 clips of 8 frames in a 20-second video: at most 2 x (8 + 60) frames, not all 600.
    assert long["frames_decoded"] <= 2 * (8 + 60) < long["seconds"] * fps
    assert math.isclose(long["vs_short"], long["wall_s"] / short["wall_s"])
    shared, piped = [r for r in rows if r["part"] == "transfer"]
    assert (shared["transfer"], piped["transfer"]) == ("shared_memory", "pipe")
    # Only a header crosses the pipe with shared memory; pickled clips at least their size.
    assert shared["pipe_mib_per_video"] < 0.01 * shared["clip_mib_per_video"]
    assert piped["pipe_mib_per_video"] >= piped["clip_mib_per_video"] > 0
    assert shared["copied_mib_per_video"] < piped["copied_mib_per_video"]
    assert shared["peak_pss_mib"] > 0 and piped["peak_pss_mib"] > 0


def test_baseline_bench_compares_the_same_videos(results):
    data = load(results, "baseline")
    speed = [r for r in data["results"] if "videos_per_s" in r]
    baseline, engine = speed[0], speed[1]
    assert baseline["videos_per_s"] > 0 and engine["videos_per_s"] > 0
    assert baseline["timing"]["repeats"] == engine["timing"]["repeats"] >= 1
    assert math.isclose(engine["vs_baseline"], baseline["wall_s"] / engine["wall_s"])
    agreement = [r for r in data["results"] if r.get("part") == "agreement"]
    assert len(agreement) == data["settings"]["videos"]
    # Same model, same protocol: the two pipelines differ only in resizing arithmetic.
    assert all(r["max_abs_diff"] < 0.05 for r in agreement)


def test_parity_bench_onnxruntime_fp32_matches_torch(results):
    data = load(results, "parity")
    per_variant = {r["variant"]: r for r in data["summary"]["per_variant"]}
    ort = per_variant["onnxruntime:fp32"]
    assert ort["max_abs_diff"] < 1e-4 and ort["top1_agree"] == ort["videos"] >= 1
    for r in data["results"]:
        assert math.isclose(r["max_rel_diff"], r["max_abs_diff"] / r["ref_top1_p"], rel_tol=1e-5)


def test_accuracy_bench_covers_every_protocol_choice(results):
    data = load(results, "accuracy")
    rows = data["results"]
    settings = {(r["clips"], r["resize"], r["head"]) for r in rows}
    assert len(settings) == len(rows) == 8
    for r in rows:
        assert r["videos"] == 2 and r["failed"] == 0
        assert 0 <= r["top1"] <= r["top5"] <= 1


def test_single_benchmark_commands_take_their_options(results, cache, tmp_path):
    out = tmp_path / "model"
    argv = ["bench", "model", "--quick", "--out", str(out), "--cache-dir", str(cache)]
    narrow = ["--variants", "torch:fp32", "--batch-sizes", "2", "--frame-sizes", "112x128"]
    assert main([*argv, *narrow, "--warmup", "0", "--repeats", "1"]) == 0
    (row,) = json.loads((out / "model.json").read_text())["results"]
    assert (row["variant"], row["batch"]) == ("torch:fp32", 2)
    assert (row["height"], row["width"]) == (112, 128)
    assert row["timing"]["repeats"] == 1


def test_bad_input_is_a_one_line_error(tmp_path, cache, capsys):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("a.mp4,no such class\n")
    model = next((cache / "models").glob("*.safetensors"))
    argv = ["bench", "accuracy", "--manifest", str(manifest), "--model", str(model)]
    assert main([*argv, "--out", str(tmp_path), "--cache-dir", str(cache)]) == 2
    assert "neither a class name" in capsys.readouterr().err
    assert main(["bench", "model", "--variants", "torch:int8", "--out", str(tmp_path)]) == 2
    assert "precision must be one of" in capsys.readouterr().err


@pytest.mark.ray
def test_ray_bench_runs_and_writes_its_report(tmp_path, cache):
    pytest.importorskip("ray", reason="Ray is not installed (pip install r21d[ray])")
    """In a process of its own: it starts and stops a cluster, which a Ray driver in this
    process (the Ray tests' session cluster) could not survive."""
    out = tmp_path / "results"
    argv = ["bench", "ray", "--quick", "--out", str(out), "--cache-dir", str(cache)]
    run = subprocess.run(
        [sys.executable, "-m", "r21d.cli", *argv], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    data = load(out, "ray")
    engines = {r["engine"] for r in data["results"]}
    assert len(engines) >= 2 and all(r["videos_per_s"] > 0 for r in data["results"])
    assert all(r["top1_agree"] for r in data["results"] if "top1_agree" in r)
