"""The zoo against DESIGN.md section 3: counts, widths, BN settings, strides, head."""

import pytest
import torch
from torch import nn

from r21d.flops import count_flops, count_parameters
from r21d.models import create_model, model_names, parse_name
from r21d.models.video_resnet import middle_width, stage_strides
from r21d.spec import SpecError


@pytest.mark.parametrize(
    ("name", "params"),
    [("r2plus1d_18", 33.37e6), ("r2plus1d_34", 63.70e6)],
)
def test_caffe2_parameter_counts_at_400_classes(name, params):
    model = create_model(name, 400, 8)
    assert count_parameters(model) == pytest.approx(params, abs=0.005e6)


def test_torchvision_variant_parameter_count_is_torchvisions():
    assert count_parameters(create_model("r2plus1d_tv_18", 400, 16)) == 31_505_325


@pytest.mark.parametrize("name", ["r2plus1d_18", "r2plus1d_34"])
def test_middle_widths_of_second_conv_in_first_block_of_stages_2_to_4(name):
    model = create_model(name, 400, 8)
    widths = [getattr(model, f"layer{s}")[0].conv2[0][0].out_channels for s in (2, 3, 4)]
    assert widths == [288, 576, 1152]


def test_torchvision_variant_reuses_the_block_middle_width():
    model = create_model("r2plus1d_tv_18", 400, 16)
    widths = [getattr(model, f"layer{s}")[0].conv2[0][0].out_channels for s in (2, 3, 4)]
    assert widths == [230, 460, 921]


def test_stem_is_45_wide_and_has_no_max_pool():
    model = create_model("r2plus1d_34", 400, 8)
    spatial, temporal = model.stem[0], model.stem[3]
    assert (spatial.out_channels, spatial.kernel_size, spatial.stride, spatial.padding) == (
        45,
        (1, 7, 7),
        (1, 2, 2),
        (0, 3, 3),
    )
    assert (temporal.kernel_size, temporal.padding, temporal.out_channels) == (
        (3, 1, 1),
        (1, 0, 0),
        64,
    )
    assert not any(isinstance(m, nn.MaxPool3d) for m in model.modules())


@pytest.mark.parametrize("name", ["r2plus1d_18", "r2plus1d_34", "r2plus1d_50"])
def test_every_batchnorm_has_caffe2_epsilon_and_momentum(name):
    bns = [m for m in create_model(name, 10, 8).modules() if isinstance(m, nn.BatchNorm3d)]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.1 for bn in bns)


def test_no_conv_has_a_bias():
    model = create_model("r2plus1d_18", 10, 8)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv3d))


def test_bottleneck_widths_and_middle_channels():
    model = create_model("r2plus1d_50", 400, 8)
    block = model.layer1[0]
    assert block.conv2[0][0].out_channels == middle_width(64, 64) == 144
    assert block.conv3[0].out_channels == 256
    assert model.fc.in_features == 2048
    assert [len(getattr(model, f"layer{s}")) for s in range(1, 5)] == [3, 4, 6, 3]
    assert len(create_model("r2plus1d_152", 10, 8).layer3) == 36


def test_temporal_downsampling_is_skipped_for_short_clips():
    assert stage_strides(8) == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert stage_strides(4) == [(1, 1), (2, 2), (2, 2), (1, 2)]
    assert stage_strides(2) == [(1, 1), (2, 2), (1, 2), (1, 2)]


@pytest.mark.parametrize(("clip_len", "pool_t"), [(8, 1), (16, 2), (32, 4)])
def test_head_pool_is_clip_len_over_8_by_7x7_stride_1(clip_len, pool_t):
    model = create_model("r2plus1d_18", 10, clip_len, width=0.125)
    assert model.pool.kernel_size == (pool_t, 7, 7) and model.pool.stride == 1
    out = model(torch.randn(2, 3, clip_len, 112, 112))
    assert out.shape == (2, 10)


def test_fc_head_refuses_inputs_that_pool_to_several_positions():
    model = create_model("r2plus1d_18", 10, 8, width=0.125)
    with pytest.raises(ValueError, match="positions"):
        model(torch.randn(1, 3, 8, 128, 171))


def test_classifier_map_is_the_fc_as_a_1x1x1_conv():
    model = create_model("r2plus1d_18", 10, 8, width=0.125)
    x = torch.randn(2, 3, 8, 112, 112)
    with torch.no_grad():
        logits_map = model.classifier_map(model.pool(model.features(x)))
        assert logits_map.shape == (2, 10, 1, 1, 1)
        torch.testing.assert_close(logits_map.flatten(1), model(x))


def test_flops_per_clip_are_close_to_design_figures():
    # DESIGN.md s.9 quotes 40.5 (R(2+1)D-18, 8x112x112) and 300.8 GFLOP (R(2+1)D-34, 32 frames);
    # torch's counter counts convs and the fc only, 2 FLOPs per multiply-add.
    r18 = count_flops(create_model("r2plus1d_18", 400, 8), (1, 3, 8, 112, 112)) / 1e9
    r34 = count_flops(create_model("r2plus1d_34", 400, 32), (1, 3, 32, 112, 112)) / 1e9
    assert r18 == pytest.approx(40.5, rel=0.03)
    assert r34 == pytest.approx(300.8, rel=0.03)


def test_registry_names_and_errors():
    assert {
        "r2plus1d_18",
        "r2plus1d_34",
        "r2plus1d_50",
        "r2plus1d_101",
        "r2plus1d_152",
        "r2plus1d_tv_18",
    } <= set(model_names())
    assert parse_name("r2plus1d_tv_18") == ("r2plus1d_tv", 18)
    with pytest.raises(SpecError, match="unknown model"):
        parse_name("r2plus1d_20")


def test_r3d_baseline_is_torchvisions_r3d_18_layout():
    # torchvision's r3d_18 (same structure: 3x7x7 stem to 64, 3x3x3 convs) has 33,371,472.
    model = create_model("r3d_18", 400, 16)
    assert count_parameters(model) == 33_371_472
    assert model.stem[0].kernel_size == (3, 7, 7) and len(model.stem) == 3
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert all(c.kernel_size == (3, 3, 3) for c in convs[1:])
    assert model.layer2[0].conv1[0].stride == (2, 2, 2)
    assert model(torch.randn(1, 3, 16, 112, 112)).shape == (1, 400)
