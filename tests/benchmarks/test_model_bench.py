"""The model benchmark's peer rows: OpenVINO beside r21d's variants, in one process and in
separate ones, and the ratio of r21d's fastest path to the fastest peer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from r21d.benchmarks.model_bench import ModelBenchSettings, run_model_bench, versus_peers
from r21d.benchmarks.models import random_checkpoint
from r21d.benchmarks.peers import Peer, open_peer, parse_peers
from r21d.benchmarks.variants import REFERENCE, open_variant
from r21d.errors import BadOptionError

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return random_checkpoint("r2plus1d_18", 8, cache, num_classes=5, width=0.125)


def _row(model, variant, backend, precision, kind, clips_per_s, isolation="shared"):
    return {
        "isolation": isolation,
        "grid": "main",
        "model": model,
        "batch": 1,
        "frames": 8,
        "height": 112,
        "width": 112,
        "variant": variant,
        "backend": backend,
        "precision": precision,
        "kind": kind,
        "clips_per_s": clips_per_s,
    }


def test_versus_peers_takes_the_fastest_of_each_side_at_the_same_precision():
    rows = [
        _row("m", "torch:fp32", "torch", "fp32", "r21d", 4.0),
        _row("m", "onnxruntime:fp32", "onnxruntime", "fp32", "r21d", 5.0),
        _row("m", "torch:bf16:cl", "torch", "bf16", "r21d", 15.0),
        _row("m", "openvino:bf16", "openvino", "bf16", "r21d", 19.0),
        _row("m", "peer:openvino:f32", "openvino (peer)", "fp32", "peer", 6.0),
        _row("m", "peer:openvino:bf16", "openvino (peer)", "bf16", "peer", 20.0),
        _row("m", "peer:openvino:bf16", "openvino (peer)", "bf16", "peer", 10.0, "separate"),
    ]
    fp32, bf16 = versus_peers(rows)  # "separate" has no r21d row: no comparison there
    assert (fp32["precision"], fp32["r21d"], fp32["peer"]) == (
        "fp32",
        "onnxruntime:fp32",
        "peer:openvino:f32",
    )
    assert math.isclose(fp32["ratio"], 5 / 6)
    assert (bf16["r21d"], bf16["r21d_own"]) == ("openvino:bf16", "torch:bf16:cl")
    assert math.isclose(bf16["ratio"], 19 / 20) and math.isclose(bf16["own_ratio"], 15 / 20)


def test_peers_parse_and_bad_ones_are_refused():
    assert parse_peers("openvino:bf16, openvino:fp32,openvino:bf16") == [
        Peer("openvino", "bf16"),
        Peer("openvino", "fp32"),
    ]
    assert parse_peers("none") == []
    assert Peer("openvino", "fp32").label == "peer:openvino:f32"
    with pytest.raises(BadOptionError, match="not openvino:fp32 or openvino:bf16"):
        parse_peers("openvino:fp16")


def test_the_f32_peer_really_computes_in_fp32(tiny):
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 112, 112, 3), dtype=np.uint8)
    reference = open_variant(tiny, REFERENCE, "cpu").run(frames)
    peer = open_peer(tiny, Peer("openvino", "fp32"), threads=1).run(frames)
    np.testing.assert_allclose(peer[0], reference[0], atol=1e-5)
    np.testing.assert_allclose(peer[1], reference[1], atol=1e-4, rtol=1e-4)


def test_peer_rows_run_beside_r21d_in_one_process_and_in_separate_ones(tiny):
    settings = ModelBenchSettings(
        variants=[REFERENCE],
        peers=[Peer("openvino", "fp32")],
        isolation=("shared", "separate"),
        batch_sizes=(1,),
        frame_sizes=((112, 112),),
        warmup=0,
        repeats=1,
        ceiling_n=256,
    )
    report = run_model_bench([tiny], settings)
    got = {(r["isolation"], r["variant"], r["kind"]) for r in report.rows}
    assert got == {
        (isolation, variant, kind)
        for isolation in ("shared", "separate")
        for variant, kind in (("torch:fp32", "r21d"), ("peer:openvino:f32", "peer"))
    }
    comparisons = report.summary["vs_peers"]
    assert [(c["isolation"], c["precision"]) for c in comparisons] == [
        ("shared", "fp32"),
        ("separate", "fp32"),
    ]
    for c in comparisons:
        mine = [r for r in report.rows if r["isolation"] == c["isolation"]]
        fastest = max((r for r in mine if r["kind"] == "r21d"), key=lambda r: r["clips_per_s"])
        (peer,) = [r for r in mine if r["kind"] == "peer"]
        assert c["r21d"] == fastest["variant"]
        assert math.isclose(c["ratio"], fastest["clips_per_s"] / peer["clips_per_s"])
    markdown = "\n".join(report.sections)
    assert "'INFERENCE_PRECISION_HINT': 'f32'" in markdown  # the hint is stated
    assert "r21d / peer" in markdown
