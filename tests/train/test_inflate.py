"""Inflating 2D weights into 3D: the same response on a static video."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from r21d.train.inflate import inflate_2d_to_3d, inflate_state_dict


def test_inflated_kernel_has_the_2d_response_on_a_static_video():
    torch.manual_seed(0)
    conv2d = nn.Conv2d(3, 5, 3, padding=1)
    conv3d = nn.Conv3d(3, 5, (4, 3, 3), padding=(0, 1, 1))
    with torch.no_grad():
        conv3d.weight.copy_(inflate_2d_to_3d(conv2d.weight, 4))
        conv3d.bias.copy_(conv2d.bias)
    image = torch.randn(2, 3, 16, 16)
    video = image[:, :, None].repeat(1, 1, 9, 1, 1)  # 9 identical frames
    out = conv3d(video)
    assert out.shape == (2, 5, 6, 16, 16)
    for t in range(6):
        torch.testing.assert_close(out[:, :, t], conv2d(image), rtol=1e-5, atol=1e-5)


def test_inflated_weight_shape_and_scale():
    w = torch.randn(4, 2, 3, 3)
    w3 = inflate_2d_to_3d(w, 3)
    assert w3.shape == (4, 2, 3, 3, 3)
    torch.testing.assert_close(w3.sum(2), w)  # the time slices add back up to the 2D kernel
    with pytest.raises(ValueError, match="2D conv weight"):
        inflate_2d_to_3d(w3, 3)


def _net(dims: int) -> nn.Sequential:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    k = 3 if dims == 2 else (3, 3, 3)
    pad = 1 if dims == 2 else (0, 1, 1)
    return nn.Sequential(conv(3, 8, k, padding=pad), bn(8), nn.ReLU(), conv(8, 4, k, padding=pad))


def test_inflate_state_dict_turns_a_2d_network_into_a_3d_one():
    torch.manual_seed(1)
    net2d, net3d = _net(2).eval(), _net(3).eval()
    with torch.no_grad():  # non-trivial BN statistics so they are carried over too
        net2d[1].running_mean.uniform_(-1, 1)
        net2d[1].running_var.uniform_(0.5, 2)
    net3d.load_state_dict(inflate_state_dict(net2d.state_dict(), net3d))
    image = torch.randn(1, 3, 12, 12)
    out = net3d(image[:, :, None].repeat(1, 1, 5, 1, 1))  # two valid 3-frame convs: 5 -> 1
    torch.testing.assert_close(out[:, :, 0], net2d(image), rtol=1e-5, atol=1e-5)


def test_inflate_state_dict_refuses_mismatched_networks():
    with pytest.raises(ValueError, match="differ"):
        inflate_state_dict({"0.weight": torch.zeros(8, 3, 3, 3)}, _net(3))
    wrong = _net(2).state_dict()
    wrong["0.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(ValueError, match="does not inflate"):
        inflate_state_dict(wrong, _net(3))


def resnet18_2d_state(classes: int = 1000) -> dict[str, torch.Tensor]:
    """torchvision's 2D ``resnet18`` state-dict layout (ImageNet weights look like this)."""
    torch.manual_seed(2)
    state: dict[str, torch.Tensor] = {}

    def bn(prefix: str, ch: int) -> None:
        for p in ("weight", "bias", "running_mean"):
            state[f"{prefix}.{p}"] = torch.randn(ch)
        state[f"{prefix}.running_var"] = torch.rand(ch) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{stage}.{b}"
            state[f"{p}.conv1.weight"] = torch.randn(planes, inplanes, 3, 3)
            bn(f"{p}.bn1", planes)
            state[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if b == 0 and stage > 1:
                state[f"{p}.downsample.0.weight"] = torch.randn(planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    state["fc.weight"] = torch.randn(classes, 512)
    state["fc.bias"] = torch.randn(classes)
    return state


def test_a_2d_resnet_inflates_into_the_r3d_baseline(tmp_path):
    from r21d.models import create_spec
    from r21d.train.model_setup import build_training_model

    state = resnet18_2d_state()
    torch.save(state, tmp_path / "resnet18.pth")
    spec = create_spec("r3d_18", 5, 8)
    model = build_training_model(spec, inflate_from=str(tmp_path / "resnet18.pth"))
    got = model.state_dict()
    for t in range(3):  # every temporal slice is the 2D kernel / 3
        torch.testing.assert_close(got["stem.0.weight"][:, :, t], state["conv1.weight"] / 3)
        torch.testing.assert_close(
            got["layer3.1.conv2.0.weight"][:, :, t], state["layer3.1.conv2.weight"] / 3
        )
    torch.testing.assert_close(got["layer2.0.downsample.0.weight"][:, :, 0],
                               state["layer2.0.downsample.0.weight"])  # fmt: skip
    torch.testing.assert_close(
        got["layer4.1.conv1.1.running_var"], state["layer4.1.bn1.running_var"]
    )
    assert got["fc.weight"].shape == (5, 512) and float(got["fc.bias"].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="use arch r3d_18 or r3d_34"):
        build_training_model(
            create_spec("r2plus1d_18", 5, 8), inflate_from=str(tmp_path / "resnet18.pth")
        )
