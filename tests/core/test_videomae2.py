"""VideoMAE V2 ViTs: sizes against DESIGN.md s.12 and the published counts, the spec's rules,
shape refusal, and parity with an independent implementation (Hugging Face transformers'
``VideoMAEForVideoClassification``, a test-only dependency; see ``tests/hf_videomae.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hf_videomae import huggingface_copy, huggingface_probs, random_vit

from r21d.errors import BadOptionError
from r21d.flops import count_flops, count_parameters
from r21d.models import build_model, create_model, create_spec, model_names, parse_name
from r21d.models.heads import FullyConvolutional, check_input_shape, min_spatial_size
from r21d.spec import ModelSpec, SpecError

# DESIGN.md s.12: (width, depth, heads, mlp hidden, patch)
SIZES = {
    "videomae2_vit_s": (384, 12, 6, 1536, 16),
    "videomae2_vit_b": (768, 12, 12, 3072, 16),
    "videomae2_vit_l": (1024, 24, 16, 4096, 16),
    "videomae2_vit_h": (1280, 32, 16, 5120, 16),
    "videomae2_vit_g": (1408, 40, 16, 6144, 14),
}


def expected_parameters(width, depth, hidden, patch, classes, layer_scale=False):
    """Parameter count written out from the layer list in DESIGN.md s.12."""
    embed = 3 * 2 * patch * patch * width + width
    block = (
        2 * 2 * width  # norm1, norm2
        + 3 * width * width  # qkv, no bias
        + 2 * width  # q_bias, v_bias
        + width * width
        + width  # proj
        + width * hidden
        + hidden
        + hidden * width
        + width  # fc1, fc2
        + (2 * width if layer_scale else 0)  # gamma_1, gamma_2
    )
    return embed + depth * block + 2 * width + width * classes + classes


@pytest.mark.parametrize("name", list(SIZES))
def test_sizes_match_design(name):
    width, depth, heads, hidden, patch = SIZES[name]
    with torch.device("meta"):
        model = create_model(name, 400)
    assert len(model.blocks) == depth
    assert model.patch_embed.proj.weight.shape == (width, 3, 2, patch, patch)
    assert model.patch_embed.proj.bias is not None
    attn = model.blocks[0].attn
    assert attn.heads == heads and attn.qkv.weight.shape == (3 * width, width)
    assert attn.qkv.bias is None and attn.q_bias.shape == attn.v_bias.shape == (width,)
    assert attn.scale == (width // heads) ** -0.5
    assert model.blocks[0].mlp.fc1.out_features == hidden
    assert isinstance(model.blocks[0].mlp.act, torch.nn.GELU)
    assert model.blocks[0].mlp.act.approximate == "none"  # exact (erf) GELU
    assert model.blocks[0].norm1.eps == model.fc_norm.eps == 1e-6
    assert model.blocks[0].gamma_1 is None
    assert count_parameters(model) == expected_parameters(width, depth, hidden, patch, 400)


def test_published_parameter_counts_and_tokens():
    counts = {}
    for name in SIZES:
        with torch.device("meta"):
            model = create_model(name, 400)
        counts[name] = count_parameters(model) / 1e6
        tokens = 8 * (224 // SIZES[name][4]) ** 2  # 16 frames / tubelet 2
        assert model.pos_embed.shape == (tokens, SIZES[name][0])
    assert 21.5 < counts["videomae2_vit_s"] < 22.5  # mmaction2: 22 M
    assert 86.0 < counts["videomae2_vit_b"] < 87.5  # about 87 M
    assert 300 < counts["videomae2_vit_l"] < 310
    assert 625 < counts["videomae2_vit_h"] < 640
    assert 1000 < counts["videomae2_vit_g"] < 1020  # "a billion parameters"
    with torch.device("meta"):
        vit_b = create_model("videomae2_vit_b", 400)
    assert vit_b.pos_embed.shape[0] == 1568


def test_position_table_is_fixed_sinusoid_and_not_saved():
    model = create_model("videomae2_vit_s", 5, 4, crop_size=64, resize_size=(64,))
    table = model.pos_embed
    assert table.shape == (2 * 4 * 4, 384)
    assert "pos_embed" not in model.state_dict()
    assert all(p is not table for p in model.parameters())
    for pos, j in [(0, 0), (0, 1), (5, 10), (17, 11), (31, 383), (9, 200)]:
        angle = pos / 10000 ** (2 * (j // 2) / 384)
        want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        assert table[pos, j].item() == pytest.approx(want, abs=1e-6)


def test_layer_scale_and_drop_path():
    spec = create_spec("videomae2_vit_s", 5, 4, crop_size=64, resize_size=(64,), layer_scale=True)
    model = build_model(spec)
    assert model.blocks[3].gamma_1.shape == model.blocks[3].gamma_2.shape == (384,)
    assert count_parameters(model) == expected_parameters(384, 12, 1536, 16, 5, layer_scale=True)
    from r21d.models.videomae2 import SIZES as OUR_SIZES
    from r21d.models.videomae2 import VideoMAE2

    model = VideoMAE2(OUR_SIZES["videomae2_vit_s"], 12, 16, 5, 4, 64, drop_path_rate=0.3)
    rates = [b.drop_path_rate for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == pytest.approx([0.3 * i / 11 for i in range(12)])
    x = torch.randn(4, 3, 4, 64, 64)
    with torch.no_grad():
        eval_out = model.eval()(x)
        assert torch.equal(eval_out, model(x))  # no randomness in eval mode
        torch.manual_seed(0)
        assert not torch.allclose(model.train()(x), eval_out)


def test_names_round_trip_and_cnn_names_unchanged():
    names = model_names()
    for name in SIZES:
        assert name in names
        arch, depth = parse_name(name)
        assert create_spec(name, 3).name == name and depth == SIZES[name][1]
    assert parse_name("r2plus1d_34") == ("r2plus1d", 34)
    assert parse_name("i3d_22") == ("i3d", 22)
    assert create_spec("r2plus1d_34", 400, 8).name == "r2plus1d_34"
    with pytest.raises(SpecError, match="unknown model"):
        parse_name("videomae2_vit_b_12")


def test_spec_defaults_are_the_kinetics_protocol():
    spec = create_spec("videomae2_vit_b", 400)
    assert (spec.clip_len, spec.frame_step) == (16, 4)
    assert (spec.resize_mode, spec.resize_size, spec.crop_size) == ("short_edge", (224,), 224)
    assert (spec.num_clips, spec.num_crops, spec.views) == (5, 3, 15)
    assert spec.fixed_input
    assert spec.mean == pytest.approx((123.675, 116.28, 103.53))
    assert spec.std == pytest.approx((58.395, 57.12, 57.375))
    assert ModelSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clip_len": 15}, "odd"),
        ({"crop_size": 200, "resize_size": (224,)}, "multiple of"),
        ({"fixed_input": False}, "fixed_input"),
        ({"width": 0.5}, "width 1.0"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ],
)
def test_spec_refuses_what_a_vit_cannot_take(changes, message):
    spec = create_spec("videomae2_vit_b", 400)
    with pytest.raises(SpecError, match=message):
        spec.replace(**changes)


def test_layer_scale_is_a_vit_option():
    with pytest.raises(SpecError, match="layer_scale"):
        create_spec("r2plus1d_18", 5, 8, layer_scale=True)


def test_wrong_clip_shapes_are_refused():
    spec = create_spec("videomae2_vit_s", 5, 4, crop_size=64, resize_size=(64,))
    assert min_spatial_size(spec) == 64
    check_input_shape(spec, (2, 4, 64, 64, 3), "uint8")
    check_input_shape(spec, (2, 3, 4, 64, 64), "float")
    for shape in [(1, 8, 64, 64, 3), (1, 4, 80, 64, 3), (1, 4, 64, 96, 3), (1, 2, 64, 64, 3)]:
        with pytest.raises(BadOptionError, match=r"exactly 4x64x64"):
            check_input_shape(spec, shape, "uint8")
    model = build_model(spec)
    wrapper = FullyConvolutional(model, spec)
    with pytest.raises(BadOptionError, match="exactly 4x64x64"):
        wrapper(torch.zeros(1, 4, 64, 80, 3, dtype=torch.uint8))
    with pytest.raises(BadOptionError, match="position table"):
        model(torch.zeros(1, 3, 6, 64, 64))


def test_flops_per_view_count_every_matmul():
    """2 FLOPs per multiply-add: tubelet conv, the block Linears, the two attention matmuls
    and the head (LayerNorm, softmax and GELU are not counted)."""
    width, tokens, depth, hidden, classes = 768, 1568, 12, 3072, 400
    macs = tokens * width * 3 * 2 * 16 * 16
    macs += depth * (tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens**2 * width)
    macs += width * classes
    model = create_model("videomae2_vit_b", classes)
    flops = count_flops(model, (1, 3, 16, 224, 224))
    assert flops == 2 * macs
    assert 355e9 < flops < 365e9  # mmaction2's "180G" counts multiply-adds


# -- parity with Hugging Face transformers -------------------------------------------------


@pytest.mark.parametrize(
    "name", ["videomae2_vit_s", pytest.param("videomae2_vit_b", marks=pytest.mark.slow)]
)
def test_matches_transformers(name):
    model, spec = random_vit(name, 10, 4, 64)
    hf = huggingface_copy(model, spec)
    frames = torch.randint(0, 256, (3, 4, 64, 64, 3), dtype=torch.uint8)
    want = huggingface_probs(hf, frames, spec)
    with torch.no_grad():
        probs, features = FullyConvolutional(model, spec)(frames)
        logits = model(FullyConvolutional(model, spec).normalise(frames))
    assert 0.3 < want.max() < 0.999  # informative: neither uniform nor one-hot
    assert (probs - want).abs().max() < 1e-4
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)
    assert features.shape == (3, model.fc_norm.normalized_shape[0])
    # A model without the q/v biases would not pass: the check can fail.
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_bias.zero_()
            block.attn.v_bias.zero_()
        unbiased = FullyConvolutional(model, spec)(frames)[0]
    assert (unbiased - want).abs().max() > 1e-3


@pytest.mark.slow
def test_matches_transformers_full_size_vit_b():
    """ViT-B at its real 16 x 224 x 224 clip (1568 tokens), one clip."""
    model, spec = random_vit("videomae2_vit_b", 400, 16, 224)
    hf = huggingface_copy(model, spec)
    frames = torch.randint(0, 256, (1, 16, 224, 224, 3), dtype=torch.uint8)
    want = huggingface_probs(hf, frames, spec)
    with torch.no_grad():
        probs, _ = FullyConvolutional(model, spec)(frames)
    assert want.max() > 10 / 400
    assert (probs - want).abs().max() < 1e-4
