"""VideoMAE V2 importers: upstream ``.pth``, mmaction2 ports and Hugging Face folders.

Each foreign layout is written here from the source projects' module names (OpenGVLab's
``modeling_finetune.py``, mmaction2's ``vit_mae.py`` + ``TimeSformerHead``, transformers'
``modeling_videomae.py``), independently of the importer's rename rules.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from hf_videomae import HF_LAYER, transformers_layout
from safetensors.torch import save_file

from r21d.checkpoint import load_checkpoint
from r21d.cli import main
from r21d.importers import ImportMismatchError, convert
from r21d.models import build_model, create_spec


def random_model(name="videomae2_vit_s", classes=7, clip_len=16, crop=224, layer_scale=True):
    spec = create_spec(
        name, classes, clip_len, crop_size=crop, resize_size=(crop,), layer_scale=layer_scale
    )
    model = build_model(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def vit_s():
    """ViT-S, 16 x 224 x 224 (upstream's clip), layer scale, 7 classes, random weights."""
    return random_model()


def upstream_layout(model) -> dict[str, torch.Tensor]:
    """OpenGVLab/VideoMAEv2 names: patch_embed.proj, blocks.N.{norm1,attn.{qkv,q_bias,v_bias,
    proj},norm2,mlp.{fc1,fc2},gamma_1,gamma_2}, fc_norm, head."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def mmaction2_layout(model) -> dict[str, torch.Tensor]:
    """mmaction2: backbone.* with mmcv's PatchEmbed ``projection`` and FFN ``layers.0.0`` /
    ``layers.1``, the sinusoid table as the buffer ``backbone.pos_embed`` (1, N, D), and
    ``cls_head.fc_cls``."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("head."):
            out["cls_head.fc_cls." + k.removeprefix("head.")] = v.clone()
            continue
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        k = k.replace("mlp.fc1.", "mlp.layers.0.0.").replace("mlp.fc2.", "mlp.layers.1.")
        out["backbone." + k] = v.clone()
    out["backbone.pos_embed"] = model.pos_embed[None].clone()
    return out


def write_hf_folder(folder, tensors, classes, clip_len=4, crop=224, **config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = {
        "model_type": "videomae",
        "image_size": crop,
        "num_frames": clip_len,
        "patch_size": 16,
        "tubelet_size": 2,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "hidden_act": "gelu",
        "qv_bias": True,
        "use_mean_pooling": True,
        "id2label": {str(i): f"class {i}" for i in range(classes)},
    } | config
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def assert_same_tensors(model, imported):
    want, got = model.state_dict(), imported.state_dict()
    assert sorted(want) == sorted(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k


# -- upstream ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrapper", "prefix"),
    [(None, ""), ("model", "_orig_mod."), ("module", "module."), (None, "encoder.")],
)
def test_upstream_round_trip(vit_s, tmp_path, wrapper, prefix):
    state = {prefix + k: v for k, v in upstream_layout(vit_s).items()}
    path = tmp_path / "vit_s.pth"
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    model, spec = convert(path, "videomae2")
    assert (spec.name, spec.num_classes, spec.clip_len, spec.crop_size) == (
        "videomae2_vit_s",
        7,
        16,
        224,
    )
    assert spec.layer_scale and spec.views == 15 and spec.labels is None
    assert spec.provenance["format"] == "videomae2" and len(spec.provenance["sha256"]) == 64
    assert_same_tensors(vit_s, model)


def test_upstream_vit_b_710_head_cut_to_kinetics400(tmp_path):
    vit_b = random_model("videomae2_vit_b", classes=710, layer_scale=False)
    path = tmp_path / "vit_b_k710_dl_from_giant.pth"
    torch.save({"module": upstream_layout(vit_b)}, path)
    indices = list(range(709, 309, -1))  # 400 distinct rows, reversed to catch an ignored map
    label_map = tmp_path / "label_710to400.json"
    label_map.write_text(json.dumps(indices))

    model, spec = convert(path, "videomae2", label_map=label_map)
    assert spec.name == "videomae2_vit_b" and not spec.layer_scale
    assert spec.num_classes == 400 and spec.labels[0] == "abseiling"  # Kinetics-400 names
    assert spec.provenance["label_map"]["file"] == "label_710to400.json"
    assert spec.provenance["label_map"]["from_classes"] == 710
    assert torch.equal(model.head.weight, vit_b.head.weight[indices])
    assert torch.equal(model.head.bias, vit_b.head.bias[indices])
    assert torch.equal(model.blocks[11].attn.v_bias, vit_b.blocks[11].attn.v_bias)


@pytest.mark.parametrize(
    ("content", "message"),
    [([0, 1, 7], "outside"), ([0, 1, 1], "repeated"), ({"0": 1}, "JSON list"), ([], "list")],
)
def test_bad_label_maps_are_refused(vit_s, tmp_path, content, message):
    path = tmp_path / "vit_s.pth"
    torch.save(upstream_layout(vit_s), path)
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        convert(path, "videomae2", label_map=label_map)


def test_pickle_with_code_is_refused(vit_s, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    torch.save({"model": upstream_layout(vit_s), "args": Payload()}, path)
    with pytest.raises(ImportMismatchError, match="refused"):
        convert(path, "videomae2")
    assert not marker.exists()


# -- strictness, every format --------------------------------------------------------------


def write_format(fmt, model, tmp_path):
    """``model``'s weights written in ``fmt``'s file layout; returns (path, tensors, save)."""
    if fmt == "transformers":
        folder = tmp_path / "hf"

        def save(tensors):
            return write_hf_folder(folder, tensors, model.head.out_features)

        return save, transformers_layout(model)
    path = tmp_path / f"{fmt}.pth"

    def save(tensors):
        torch.save(
            {"state_dict": tensors, "meta": {"epoch": 1}} if fmt == "mmaction2" else tensors, path
        )
        return path

    return save, (mmaction2_layout(model) if fmt == "mmaction2" else upstream_layout(model))


@pytest.fixture(scope="module")
def small_vit():
    """ViT-S without layer scale (transformers has none) for 4-frame clips."""
    return random_model(clip_len=4, layer_scale=False)


FORMAT_CASES = {
    # format: (a tensor to drop, a key to add, a tensor to misshape)
    "videomae2": ("blocks.3.attn.q_bias", "blocks.0.attn.k_bias", "fc_norm.weight"),
    "mmaction2": (
        "backbone.blocks.5.mlp.layers.1.weight",
        "backbone.blocks.0.attn.k_bias",
        "cls_head.fc_cls.bias",
    ),
    "transformers": (
        f"{HF_LAYER}2.attention.attention.value.bias",
        f"{HF_LAYER}0.attention.attention.key.bias",
        f"{HF_LAYER}7.layernorm_after.bias",
    ),
}


@pytest.mark.parametrize("fmt", list(FORMAT_CASES))
def test_round_trip_and_refusals_name_the_key(fmt, small_vit, tmp_path):
    save, tensors = write_format(fmt, small_vit, tmp_path)
    clip = {} if fmt == "transformers" else {"clip_len": 4}  # Hugging Face: from the config
    model, spec = convert(save(tensors), fmt, **clip)
    assert (spec.name, spec.clip_len, spec.num_classes) == ("videomae2_vit_s", 4, 7)
    assert_same_tensors(small_vit, model)

    drop, extra, misshape = FORMAT_CASES[fmt]
    with pytest.raises(ImportMismatchError, match=f"missing: .*{drop}"):
        convert(save({k: v for k, v in tensors.items() if k != drop}), fmt, **clip)
    with pytest.raises(ImportMismatchError, match=f"unexpected.*{extra}"):
        convert(save(tensors | {extra: torch.zeros(384)}), fmt, **clip)
    bad = tensors | {misshape: torch.zeros(3)}
    with pytest.raises(ImportMismatchError, match=f"wrong shape: {misshape}"):
        convert(save(bad), fmt, **clip)


def test_wrong_format_is_named(small_vit, tmp_path):
    save, tensors = write_format("mmaction2", small_vit, tmp_path)
    with pytest.raises(ImportMismatchError, match="no patch_embed.proj.weight.*--from mmaction2"):
        convert(save(tensors), "videomae2", clip_len=4)


def test_mmaction2_table_must_match_the_clip_and_be_the_fixed_one(small_vit, tmp_path):
    save, tensors = write_format("mmaction2", small_vit, tmp_path)
    with pytest.raises(ImportMismatchError, match="--clip-len"):
        convert(save(tensors), "mmaction2")  # default 16 frames: 1568 tokens, the file has 392
    learnt = tensors | {"backbone.pos_embed": tensors["backbone.pos_embed"] + 0.1}
    with pytest.raises(ImportMismatchError, match="learnt position embedding"):
        convert(save(learnt), "mmaction2", clip_len=4)


def test_mmaction2_kinetics_head_gets_kinetics_labels(tmp_path):
    vit = random_model(classes=400, clip_len=16, layer_scale=False)
    path = tmp_path / "vit-small-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400.pth"
    torch.save({"meta": {"mmengine_version": "0.7.3"}, "state_dict": mmaction2_layout(vit)}, path)
    model, spec = convert(path, "mmaction2")
    assert spec.labels is not None and spec.labels[-1] == "zumba"
    assert_same_tensors(vit, model)


# -- transformers --------------------------------------------------------------------------


def test_transformers_config_labels_eps_and_old_bias_names(small_vit, tmp_path):
    folder = write_hf_folder(
        tmp_path / "old", transformers_layout(small_vit, old_bias_names=True), 7
    )
    model, spec = convert(folder, "transformers")
    assert spec.layer_norm_eps == 1e-12  # transformers' default when the config omits it
    assert model.blocks[0].norm1.eps == model.fc_norm.eps == 1e-12
    assert spec.labels == tuple(f"class {i}" for i in range(7))
    assert (spec.clip_len, spec.crop_size) == (4, 224)
    assert_same_tensors(small_vit, model)

    folder = write_hf_folder(
        tmp_path / "eps", transformers_layout(small_vit), 7, layer_norm_eps=1e-6
    )
    assert convert(folder, "transformers")[1].layer_norm_eps == 1e-6
    folder = write_hf_folder(tmp_path / "noqv", transformers_layout(small_vit), 7, qv_bias=False)
    with pytest.raises(ImportMismatchError, match="qv_bias"):
        convert(folder, "transformers")
    with pytest.raises(ValueError, match="folder"):
        convert(folder / "model.safetensors", "transformers")


def test_transformers_save_pretrained_scores_as_transformers_does(tmp_path):
    """A folder written by transformers itself imports and gives its probabilities."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)  # transformers initialises from the global generator
    config = transformers.VideoMAEConfig(
        image_size=64,
        num_frames=4,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        layer_norm_eps=1e-6,
        num_labels=5,
    )
    hf = transformers.VideoMAEForVideoClassification(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        hf.classifier.weight.mul_(4)
    hf.save_pretrained(tmp_path / "hf")
    query_bias = hf.videomae.encoder.layer[0].attention.attention.query.bias
    assert query_bias.abs().max() > 0.05  # the q/v biases are really there

    model, spec = convert(tmp_path / "hf", "transformers")
    assert torch.equal(model.blocks[0].attn.q_bias, query_bias)
    hf.fc_norm.eps = 1e-6  # transformers builds fc_norm with torch's 1e-5 whatever the config
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        want = hf(pixel_values=x.transpose(1, 2)).logits.softmax(-1)
        got = model(x).softmax(-1)
    assert 0.3 < want.max() < 0.999
    assert (got - want).abs().max() < 1e-4


# -- command line --------------------------------------------------------------------------


def test_cli_convert_and_info(vit_s, tmp_path, capsys):
    src = tmp_path / "vit_s.pth"
    torch.save({"model": upstream_layout(vit_s)}, src)
    out = tmp_path / "vit_s.safetensors"
    assert main(["convert", str(src), "--from", "videomae2", "-o", str(out)]) == 0
    model, spec = load_checkpoint(out)
    assert spec.name == "videomae2_vit_s" and spec.layer_scale
    assert_same_tensors(vit_s, model)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "VideoMAE V2 ViT-S" in printed
    assert "15 (5 clips x 3 crops)" in printed
    gflop = float(
        next(line for line in printed.splitlines() if "gflop_per_view" in line).split()[-1]
    )
    assert 110 < gflop < 120  # ViT-S, 16 x 224 x 224: about 57 G multiply-adds

    wrong = [
        "convert",
        str(src),
        "--from",
        "videomae2",
        "--arch",
        "videomae2_vit_b",
        "-o",
        str(out),
    ]
    assert main(wrong) == 4
    assert "wrong shape" in capsys.readouterr().err
