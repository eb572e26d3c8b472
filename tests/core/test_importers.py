"""Importers: Caffe2 blobs, ig65m-pytorch and torchvision state dicts, and the safe unpickler.

The expected blob names and the torchvision layout are written out here from DESIGN.md (and
torchvision's VideoResNet), independently of the code under test.
"""

import os
import pickle

import numpy as np
import pytest
import torch

from r21d.checkpoint import load_checkpoint
from r21d.cli import main
from r21d.errors import BadWeightsError
from r21d.importers import ImportMismatchError, convert
from r21d.importers.caffe2 import blob_names
from r21d.importers.safe_pickle import UnsafePickleError, safe_load_pickle
from r21d.models import create_model

BN = ("s", "b", "rm", "riv")
STAGE_STARTS = {18: (0, 2, 4, 6), 34: (0, 3, 7, 13)}
NUM_BLOCKS = {18: 8, 34: 16}


def expected_blobs(depth: int, classes: int) -> set[str]:
    """DESIGN.md section 5's table, spelled out."""
    names = {"conv1_middle_w", "conv1_w"}
    names |= {f"conv1_middle_spatbn_relu_{s}" for s in BN} | {f"conv1_spatbn_relu_{s}" for s in BN}
    for i in range(NUM_BLOCKS[depth]):
        for j in (1, 2):
            names |= {f"comp_{i}_conv_{j}_middle_w", f"comp_{i}_conv_{j}_w"}
            names |= {f"comp_{i}_spatbn_{j}_middle_{s}" for s in BN}
            names |= {f"comp_{i}_spatbn_{j}_{s}" for s in BN}
    for i in STAGE_STARTS[depth][1:]:
        names |= {f"shortcut_projection_{i}_w"} | {
            f"shortcut_projection_{i}_spatbn_{s}" for s in BN
        }
    return names | {f"last_out_L{classes}_w", f"last_out_L{classes}_b"}


def test_expected_blob_counts():
    assert len(expected_blobs(34, 359)) == 10 + 16 * 20 + 3 * 5 + 2


@pytest.mark.parametrize(("depth", "classes"), [(18, 400), (34, 359)])
def test_blob_name_set_matches_design(depth, classes):
    model = create_model(f"r2plus1d_{depth}", classes, 8, width=0.125)
    mapping = blob_names(model)
    assert set(mapping.values()) == expected_blobs(depth, classes)
    assert len(set(mapping.values())) == len(mapping)  # one blob per tensor


def test_r3d_blob_names_have_no_middle_convs():
    names = set(blob_names(create_model("r3d_18", 400, 8, width=0.125)).values())
    assert {"conv1_w", "conv1_spatbn_relu_s", "comp_0_conv_1_w", "comp_7_conv_2_w"} <= names
    assert not any("middle" in n for n in names)
    assert len(names) == 5 + 8 * 2 * 5 + 3 * 5 + 2


def caffe2_blobs_of(model) -> dict[str, np.ndarray]:
    """Blob dict written from a model by this test's own reading of DESIGN.md s.5."""
    sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    suffix = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    blobs = {}

    def bn(prefix, blob):
        for p, s in suffix.items():
            blobs[f"{blob}_{s}"] = sd[f"{prefix}.{p}"]

    blobs["conv1_middle_w"] = sd["stem.0.weight"]
    bn("stem.1", "conv1_middle_spatbn_relu")
    blobs["conv1_w"] = sd["stem.3.weight"]
    bn("stem.4", "conv1_spatbn_relu")
    i = 0
    for stage in range(1, 5):
        for b in range(len(getattr(model, f"layer{stage}"))):
            p = f"layer{stage}.{b}"
            for j in (1, 2):
                blobs[f"comp_{i}_conv_{j}_middle_w"] = sd[f"{p}.conv{j}.0.0.weight"]
                bn(f"{p}.conv{j}.0.1", f"comp_{i}_spatbn_{j}_middle")
                blobs[f"comp_{i}_conv_{j}_w"] = sd[f"{p}.conv{j}.0.3.weight"]
                bn(f"{p}.conv{j}.1", f"comp_{i}_spatbn_{j}")
            if f"{p}.downsample.0.weight" in sd:
                blobs[f"shortcut_projection_{i}_w"] = sd[f"{p}.downsample.0.weight"]
                bn(f"{p}.downsample.1", f"shortcut_projection_{i}_spatbn")
            i += 1
    n = model.fc.out_features
    blobs[f"last_out_L{n}_w"] = sd["fc.weight"]
    blobs[f"last_out_L{n}_b"] = sd["fc.bias"]
    return blobs


def random_model(name, classes, clip_len=8, width=0.125):
    torch.manual_seed(0)
    model = create_model(name, classes, clip_len, width=width)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol Python 2 Caffe2 wrote
    return path


@pytest.mark.parametrize("wrapped", [True, False])
def test_caffe2_blobs_round_trip_to_identical_outputs(tmp_path, wrapped):
    reference = random_model("r2plus1d_18", 7)
    blobs = caffe2_blobs_of(reference)
    src = write_pickle(tmp_path / "r18.pkl", {"blobs": blobs} if wrapped else blobs)
    model, spec = convert(src, "caffe2", "r2plus1d_18", clip_len=8)
    assert spec.num_classes == 7 and spec.provenance["format"] == "caffe2"
    for name, tensor in model.state_dict().items():  # parameter by parameter
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(tensor, reference.state_dict()[name], rtol=0, atol=0)
    x = torch.randn(2, 3, 8, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_real_width_depth_34_caffe2_import(tmp_path):
    reference = random_model("r2plus1d_34", 359, width=1.0)
    src = write_pickle(tmp_path / "r34.pkl", {"blobs": caffe2_blobs_of(reference)})
    model, _ = convert(src, "caffe2", "r2plus1d_34", clip_len=32)
    torch.testing.assert_close(
        model.layer4[0].conv2[0][0].weight, reference.layer4[0].conv2[0][0].weight
    )
    assert model.layer4[0].conv2[0][0].weight.shape[0] == 1152


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.pop("comp_5_conv_2_middle_w"), r"missing: comp_5_conv_2_middle_w"),
        (
            lambda b: b.update(extra_blob=np.zeros(3, np.float32)),
            r"unexpected \(unused\): extra_blob",
        ),
        (
            lambda b: b.update(comp_3_conv_1_w=np.zeros((1, 2, 3), np.float32)),
            r"wrong shape: comp_3_conv_1_w",
        ),
    ],
)
def test_missing_extra_or_misshaped_blob_is_named(tmp_path, edit, message):
    blobs = caffe2_blobs_of(random_model("r2plus1d_18", 7))
    edit(blobs)
    src = write_pickle(tmp_path / "bad.pkl", {"blobs": blobs})
    with pytest.raises(ImportMismatchError, match=message):
        convert(src, "caffe2", "r2plus1d_18", clip_len=8)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os')",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_pickle_is_refused_without_running_anything(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _Evil(marker) if payload == "system" else _EvalEvil()
    src = write_pickle(tmp_path / "evil.pkl", {"blobs": {"conv1_w": evil}})
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        safe_load_pickle(src)
    with pytest.raises(UnsafePickleError):
        convert(src, "caffe2", "r2plus1d_18", clip_len=8)
    assert not marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    src = write_pickle(tmp_path / "m.pkl", {"blobs": {"a": np.zeros(100)}})
    src.write_bytes(src.read_bytes()[:50])
    with pytest.raises(BadWeightsError, match="m.pkl: not a readable weight pickle"):
        safe_load_pickle(src)


def test_ig65m_state_dict_with_counters_loads(tmp_path):
    reference = random_model("r2plus1d_34", 400, width=0.125)
    state = reference.state_dict()  # includes num_batches_tracked, as ig65m's files do
    assert any(k.endswith("num_batches_tracked") for k in state)
    torch.save(state, tmp_path / "ig.pth")
    model, spec = convert(tmp_path / "ig.pth", "ig65m", "r2plus1d_34", clip_len=8)
    x = torch.randn(1, 3, 8, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_pth_with_pickled_code_is_refused(tmp_path):
    torch.save({"fc.weight": _EvalEvil()}, tmp_path / "evil.pth")
    with pytest.raises(ImportMismatchError, match="evil.pth: refused: .* object .*eval") as e:
        convert(tmp_path / "evil.pth", "ig65m", "r2plus1d_18", clip_len=8)
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)


def torchvision_r2plus1d_18_shapes(classes: int) -> dict[str, tuple]:
    """torchvision.models.video.r2plus1d_18's state-dict layout (per-block middle widths)."""
    shapes = {}

    def bn(prefix, ch):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{p}"] = (ch,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["stem.0.weight"] = (45, 3, 1, 7, 7)
    bn("stem.1", 45)
    shapes["stem.3.weight"] = (64, 45, 3, 1, 1)
    bn("stem.4", 64)
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{stage}.{b}"
            mid = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
            for j, cin in ((1, inplanes), (2, planes)):
                shapes[f"{p}.conv{j}.0.0.weight"] = (mid, cin, 1, 3, 3)
                bn(f"{p}.conv{j}.0.1", mid)
                shapes[f"{p}.conv{j}.0.3.weight"] = (planes, mid, 3, 1, 1)
                bn(f"{p}.conv{j}.1", planes)
            if b == 0 and stage > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    shapes["fc.weight"] = (classes, 512)
    shapes["fc.bias"] = (classes,)
    return shapes


def test_torchvision_state_dict_loads_into_torchvision_width_variant(tmp_path):
    torch.manual_seed(1)
    state = {
        k: torch.tensor(0) if not s else torch.rand(s) + 0.1
        for k, s in torchvision_r2plus1d_18_shapes(400).items()
    }
    torch.save(state, tmp_path / "r2plus1d_18.pth")
    model, spec = convert(tmp_path / "r2plus1d_18.pth", "torchvision")
    assert spec.name == "r2plus1d_tv_18" and spec.clip_len == 16 and spec.bn_eps == 1e-5
    assert spec.label(6) == "arm wrestling"
    for name, tensor in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)
    # The same file does not fit Caffe2 widths, and the error says where.
    with pytest.raises(ImportMismatchError, match=r"layer2\.0\.conv2\.0\.0\.weight"):
        convert(tmp_path / "r2plus1d_18.pth", "torchvision", "r2plus1d_18", clip_len=16)


def test_clip_length_is_required_for_caffe2_weights(tmp_path):
    src = write_pickle(tmp_path / "m.pkl", caffe2_blobs_of(random_model("r2plus1d_18", 7)))
    with pytest.raises(ValueError, match="--clip-len is required"):
        convert(src, "caffe2", "r2plus1d_18")


def test_cli_convert_then_info(tmp_path, capsys):
    src = write_pickle(tmp_path / "m.pkl", caffe2_blobs_of(random_model("r2plus1d_18", 7)))
    out = tmp_path / "m.safetensors"
    rc = main(
        [
            "convert",
            str(src),
            "--from",
            "caffe2",
            "--arch",
            "r2plus1d_18",
            "--clip-len",
            "8",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    model, spec = load_checkpoint(out)
    assert spec.provenance["file"] == "m.pkl" and len(spec.provenance["sha256"]) == 64
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "r2plus1d" in printed and "parameters" in printed and "gflop_per_view" in printed
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
