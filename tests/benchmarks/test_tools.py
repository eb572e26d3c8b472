"""The benchmark tooling's own logic: statistics, parsing, tables, manifests, protocol
arithmetic of the baseline. No timing is judged here."""

from __future__ import annotations

import numpy as np
import pytest

from r21d.benchmarks import baseline_pipeline
from r21d.benchmarks.accuracy_bench import read_manifest, write_manifest
from r21d.benchmarks.model_bench import ModelBenchSettings, design_figure, plan
from r21d.benchmarks.models import random_checkpoint
from r21d.benchmarks.pipeline_bench import frames_needed
from r21d.benchmarks.report import fmt, markdown_table
from r21d.benchmarks.timing import Timing, time_call
from r21d.benchmarks.variants import REFERENCE, parse_variants, variant_of
from r21d.benchmarks.videos import keyframe_interval, write_synthetic_video
from r21d.infer.clips import clip_starts
from r21d.infer.runtime import RuntimeOptions


def test_timing_summary_percentiles_and_spread():
    t = Timing(tuple(float(x) for x in range(1, 11)), warmup=2, clock="perf_counter")
    s = t.summary()
    assert s["median_ms"] == s["p50_ms"] == 5.5
    assert s["p90_ms"] == pytest.approx(9.1) and s["p99_ms"] == pytest.approx(9.91)
    assert (s["min_ms"], s["max_ms"], s["repeats"], s["warmup"]) == (1.0, 10.0, 10, 2)
    assert s["iqr_ms"] == pytest.approx(7.75 - 3.25)
    assert s["spread"] == pytest.approx(4.5 / 5.5)


def test_time_call_warms_up_then_repeats_and_honours_the_time_cap():
    calls = []
    timing = time_call(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.samples_ms) == 5
    calls.clear()
    capped = time_call(lambda: calls.append(1), warmup=0, repeats=50, max_seconds=0.0)
    assert len(capped.samples_ms) == 3 == len(calls)  # min_repeats, then the cap stops it
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_variants_parse_and_reference_comes_first():
    assert RuntimeOptions.parse("torch:bf16:cl") == variant_of("torch", "bf16", True)
    assert RuntimeOptions.parse("onnxruntime:fp16").label == "onnxruntime:fp16"
    variants = parse_variants("onnxruntime:fp32, torch:fp32, onnxruntime:fp32")
    assert variants == [REFERENCE, variant_of("onnxruntime", "fp32")]
    for bad, message in [
        ("torch", "backend:precision"),
        ("caffe2:fp32", "backend"),
        ("torch:int8", "precision"),
        ("onnxruntime:fp32:cl", "torch backend only"),
        ("torch:fp32:nhwc", "backend:precision"),
    ]:
        with pytest.raises(ValueError, match=message):
            RuntimeOptions.parse(bad)


def test_markdown_table_formats_cells():
    rows = [{"a": 1234.5, "b": 0.000012, "c": "x|y"}, {"a": 0.5, "b": True}]
    table = markdown_table(rows, [("a", "A"), ("b", "B"), ("c", "C")])
    assert table.splitlines() == [
        "| A | B | C |",
        "|---|---|---|",
        "| 1,234 | 1.20e-05 | x\\|y |",
        "| 0.5 | yes | - |",
    ]
    assert fmt((128, 171)) == "128x171" and fmt(None) == "-" and fmt(3.14159) == "3.14"


def test_manifest_names_indices_relative_paths_and_errors(tmp_path, tiny_spec):
    (tmp_path / "clips").mkdir()
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\nclips/a.mp4,c\nb.mp4, 4\n\n")
    assert read_manifest(manifest, tiny_spec) == [
        (tmp_path / "clips" / "a.mp4", 2),
        (tmp_path / "b.mp4", 4),
    ]
    written = write_manifest(tmp_path / "w.csv", [(tmp_path / "v.mp4", "e")])
    assert read_manifest(written, tiny_spec) == [(tmp_path / "v.mp4", 4)]
    for text, message in [
        ("a.mp4,zebra\n", "neither a class name"),
        ("a.mp4,5\n", "below 5"),
        ("a.mp4\n", "expected 'path,label'"),
        ("path,label\n", "lists no videos"),
    ]:
        manifest.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_manifest(manifest, tiny_spec)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.csv", tiny_spec)


def test_frames_needed_is_the_union_of_clip_spans(tiny_spec):
    assert frames_needed(1000, tiny_spec, 10) == 10 * 8  # clips far apart: K x L
    assert frames_needed(20, tiny_spec, 10) == 20  # clips overlap: every frame once
    assert frames_needed(5, tiny_spec, 10) == 5  # shorter than a clip
    assert frames_needed(1000, tiny_spec.replace(frame_step=2), 10) == 10 * 15


@pytest.mark.parametrize("num_frames", [0, 5, 8, 9, 100, 301])
@pytest.mark.parametrize("num_clips", [1, 3, 10])
def test_baseline_places_clips_as_the_engine_does(num_frames, num_clips):
    assert baseline_pipeline.clip_starts(num_frames, 8, num_clips) == clip_starts(
        num_frames, 8, 1, num_clips
    )


def test_baseline_preprocessing_resizes_crops_and_normalises(tiny_spec):
    mean = np.array(tiny_spec.mean)
    frames = np.broadcast_to(np.round(mean).astype(np.uint8), (8, 240, 320, 3)).copy()
    clip = baseline_pipeline.preprocess_clip(frames, tiny_spec)
    assert tuple(clip.shape) == (1, 3, 8, 112, 112)
    expected = (np.round(mean) - mean) / np.array(tiny_spec.std)
    assert np.allclose(clip[0, :, 0, 0, 0].numpy(), expected, atol=1e-5)
    short = tiny_spec.replace(resize_mode="short_edge", resize_size=(128,))
    assert baseline_pipeline.resized_size(short, 240, 320) == (128, 171)
    assert baseline_pipeline.resized_size(short, 320, 240) == (171, 128)


def test_synthetic_video_has_the_asked_keyframe_interval(tmp_path):
    path = write_synthetic_video(tmp_path / "v.mp4", 2, fps=30, keyframe_seconds=0.5)
    assert keyframe_interval(path) == 15
    assert not list(tmp_path.glob("*.partial*"))


def test_design_figures_only_beside_the_matching_cpu_configuration():
    row = {"model": "r2plus1d_18 8f", "variant": "torch:bf16:cl", "batch": 1}
    assert design_figure({**row, "height": 112, "width": 112}, "cpu") == 9.0
    assert design_figure({**row, "height": 128, "width": 171}, "cpu") is None
    assert design_figure({**row, "height": 112, "width": 112}, "cuda:0") is None


def test_real_clip_labels_are_kinetics400_class_names():
    from r21d.benchmarks.videos import REAL_CLIPS, REAL_LABELS
    from r21d.labels import load_labels

    assert set(REAL_LABELS) == set(REAL_CLIPS)
    assert set(REAL_LABELS.values()) <= set(load_labels("kinetics400"))


def test_a_fixed_input_vit_is_timed_at_its_crop_only(tmp_path):
    cnn = random_checkpoint("r2plus1d_18", 8, tmp_path, num_classes=5, width=0.125)
    vit = random_checkpoint("videomae2_vit_s", 16, tmp_path, num_classes=5)
    settings = ModelBenchSettings(batch_sizes=(1, 4), sweep_all_models=True)
    configs = plan([cnn, vit], settings)
    sizes = {
        key: {c[3] for c in configs if c[0] is model} for key, model in (("cnn", cnn), ("vit", vit))
    }
    assert sizes == {"cnn": {(112, 112), (128, 171)}, "vit": {(224, 224)}}
    assert sorted(c[2] for c in configs if c[0] is vit) == [1, 4]
