"""Fully-convolutional evaluation against an independent per-position computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r21d.models import create_spec
from r21d.models.heads import FullyConvolutional, check_input_shape


def per_position_probs(model, clips: torch.Tensor) -> torch.Tensor:
    """Caffe2's recipe written out with loops: fc at every pooled position, softmax each,
    average the probabilities."""
    pooled = model.pool(model.features(clips))
    n, _, t, h, w = pooled.shape
    total = 0
    for i in range(t):
        for j in range(h):
            for k in range(w):
                total = total + F.softmax(model.fc(pooled[:, :, i, j, k]), dim=1)
    return total / (t * h * w)


def structured_clips(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Noise whose contrast and offset change across the frame, so positions see different
    content (plain noise looks the same everywhere and every position would agree)."""
    noise = torch.randn(n, 3, 8, h, w, generator=torch.Generator().manual_seed(seed))
    ramp_w = torch.linspace(0, 4, w)
    ramp_h = torch.linspace(-2, 2, h)[:, None]
    return noise * ramp_w + ramp_h


@torch.inference_mode()
def test_full_frame_is_per_position_softmax_average_not_global_pool(tiny_model):
    model, spec = tiny_model
    clips = structured_clips(2, 128, 171, seed=1)
    probs, features, logits_map = FullyConvolutional(model, spec, "float", logits_map=True)(clips)

    pooled = model.pool(model.features(clips))
    assert pooled.shape[2:] == (1, 2, 5)  # 128x171 -> 2x5 positions (DESIGN.md s.4)
    assert logits_map.shape == (2, 5, 1, 2, 5)
    expected = per_position_probs(model, clips)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(features, pooled.mean(dim=(2, 3, 4)))

    global_pool_then_fc = F.softmax(model.fc(pooled.mean(dim=(2, 3, 4))), dim=1)
    assert (probs - global_pool_then_fc).abs().max() > 5e-3  # vs 1e-6 agreement above


@torch.inference_mode()
def test_crop_size_equals_the_standard_model(tiny_model):
    model, spec = tiny_model
    clips = torch.randn(3, 3, 8, 112, 112, generator=torch.Generator().manual_seed(2))
    probs, features = FullyConvolutional(model, spec, "float")(clips)
    torch.testing.assert_close(probs, F.softmax(model(clips), dim=1), rtol=0, atol=1e-6)
    assert features.shape == (3, model.feature_dim)


@torch.inference_mode()
def test_uint8_input_normalises_rgb_with_the_spec(tiny_model):
    model, spec = tiny_model
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 8, 112, 128, 3), dtype=np.uint8)
    by_hand = (frames.astype(np.float64) - np.array(spec.mean)) / np.array(spec.std)
    clips = torch.from_numpy(by_hand.transpose(0, 4, 1, 2, 3).astype(np.float32))
    got = FullyConvolutional(model, spec, "uint8")(torch.from_numpy(frames))
    want = FullyConvolutional(model, spec, "float")(clips)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_logits_position_average_means_logits_first(tiny_model):
    model, spec = tiny_model
    clips = structured_clips(1, 128, 171, seed=4)
    wrapper = FullyConvolutional(model, spec, "float")
    model.position_average = "logits"  # the I3D rule, set on this instance only
    try:
        probs, _ = wrapper(clips)
    finally:
        del model.position_average
    logits = model.classifier_map(model.pool(model.features(clips)))
    torch.testing.assert_close(probs, F.softmax(logits.mean(dim=(2, 3, 4)), dim=1))
    assert (probs - per_position_probs(model, clips)).abs().max() > 1e-3


def test_too_short_clip_is_refused_before_the_graph_runs(tiny_model):
    model, spec = tiny_model
    calls = []
    hook = model.stem.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        wrapper = FullyConvolutional(model, spec, "uint8")
        with pytest.raises(ValueError, match="7 frames is shorter than the 8 frames"):
            wrapper(torch.zeros(1, 7, 112, 112, 3, dtype=torch.uint8))
        with pytest.raises(ValueError, match="100x112 are smaller than the 112x112"):
            wrapper(torch.zeros(1, 8, 100, 112, 3, dtype=torch.uint8))
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize(
    ("shape", "input_format", "message"),
    [
        ((1, 16, 112, 112, 3), "uint8", "16 frames is shorter than the 32 frames"),
        ((1, 3, 31, 112, 112), "float", "31 frames is shorter than the 32 frames"),
        ((1, 3, 32, 112, 96), None, "112x96 are smaller than the 112x112"),
        ((1, 32, 112, 112, 4), "uint8", "3 RGB channels"),
        ((32, 112, 112, 3), None, "5 dims"),
        ((1, 32, 112, 112, 3), "rgb", "input_format must be one of"),
    ],
)
def test_check_input_shape_errors(shape, input_format, message):
    spec = create_spec("r2plus1d_34", 10, 32)
    with pytest.raises(ValueError, match=message):
        check_input_shape(spec, shape, input_format)


def test_check_input_shape_accepts_what_the_head_can_pool():
    spec = create_spec("r2plus1d_34", 10, 32)
    check_input_shape(spec, (4, 32, 112, 112, 3))  # layout read from the channel axis
    check_input_shape(spec, (4, 3, 64, 128, 171))
    i3d = create_spec("i3d_22", 400, 64)
    check_input_shape(i3d, (1, 64, 224, 224, 3))
    with pytest.raises(ValueError, match="smaller than the 224x224"):
        check_input_shape(i3d, (1, 64, 200, 224, 3))
