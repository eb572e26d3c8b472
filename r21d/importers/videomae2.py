"""Import VideoMAE V2 ViTs from their three homes, every tensor checked (DESIGN.md s.12).

* ``videomae2``: upstream OpenGVLab/VideoMAEv2 ``.pth`` files. Our module names are
  upstream's, so the map is the identity once wrappers (``model``, ``module``) and prefixes
  (``_orig_mod.``, ``module.``, ``encoder.``, ``backbone.``) are removed.
* ``mmaction2``: mmaction2's ports (``{"state_dict": ..., "meta": ...}``, ``backbone.*`` with
  mmcv's ``patch_embed.projection`` and ``mlp.layers.{0.0,1}``, head ``cls_head.fc_cls``). They
  store the sinusoid table as a buffer; it is checked against ours and then counts as used.
* ``transformers``: a Hugging Face ``VideoMAEForVideoClassification`` folder (``config.json``
  + ``model.safetensors``). Its attention has separate ``query``/``key``/``value`` Linear
  layers, fused here into ``qkv`` (the key has no bias), and the q/v biases appear either as
  ``query.bias``/``value.bias`` or, in older files, as ``q_bias``/``v_bias``. Labels come from
  ``id2label`` and the LayerNorm epsilon from ``layer_norm_eps`` (transformers' default 1e-12,
  not upstream's 1e-6). Note: transformers builds its ``fc_norm`` with torch's default 1e-5
  whatever the config says; here every LayerNorm uses the config's value.

Arch, class count and layer scale are read from the tensor shapes; the clip shape is not in
upstream files (16 x 224 x 224 unless told). A 710-class (Kinetics-710) head can be cut to
Kinetics-400 with a label map: a JSON list of 400 indices into the 710 rows (upstream's
``misc/label_710to400.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r21d.checkpoint import file_sha256
from r21d.errors import BadOptionError, InputNotFoundError
from r21d.importers.exact import ImportMismatchError, load_exact
from r21d.importers.state_dict import load_torch_file
from r21d.labels import resolve_labels
from r21d.models import VIDEOMAE2_CLIP_LEN, build_model, create_spec
from r21d.models.videomae2 import SIZES, TUBELET_FRAMES, sinusoid_table
from r21d.spec import ARCH_DEPTHS, VIT_PATCH, ModelSpec

FORMATS = ("videomae2", "mmaction2", "transformers")
UPSTREAM_PREFIXES = ("_orig_mod.", "module.", "encoder.", "backbone.")
DEFAULT_CROP = 224

Rules = list[tuple[str, str]]
# Our tensor name (regex) -> the format's name; the first matching rule wins.
MMACTION2_RULES: Rules = [
    (r"patch_embed\.proj\.(.+)", r"backbone.patch_embed.projection.\1"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(.+)", r"backbone.blocks.\1.mlp.layers.0.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(.+)", r"backbone.blocks.\1.mlp.layers.1.\2"),
    (r"head\.(.+)", r"cls_head.fc_cls.\1"),
    (r"(.+)", r"backbone.\1"),
]
HF_LAYER = r"videomae.encoder.layer.\1"
TRANSFORMERS_RULES: Rules = [
    (r"patch_embed\.proj\.(.+)", r"videomae.embeddings.patch_embeddings.projection.\1"),
    (r"pos_embed", r"videomae.embeddings.position_embeddings"),
    (r"blocks\.(\d+)\.norm1\.(.+)", HF_LAYER + r".layernorm_before.\2"),
    (r"blocks\.(\d+)\.norm2\.(.+)", HF_LAYER + r".layernorm_after.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", HF_LAYER + r".attention.attention.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.q_bias", HF_LAYER + r".attention.attention.query.bias"),
    (r"blocks\.(\d+)\.attn\.v_bias", HF_LAYER + r".attention.attention.value.bias"),
    (r"blocks\.(\d+)\.attn\.proj\.(.+)", HF_LAYER + r".attention.output.dense.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(.+)", HF_LAYER + r".intermediate.dense.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(.+)", HF_LAYER + r".output.dense.\2"),
    (r"fc_norm\.(.+)", r"fc_norm.\1"),
    (r"head\.(.+)", r"classifier.\1"),
]
RULES: dict[str, Rules] = {
    "videomae2": [(r"(.+)", r"\1")],
    "mmaction2": MMACTION2_RULES,
    "transformers": TRANSFORMERS_RULES,
}


def foreign_name(source_format: str, name: str) -> str:
    """The name ``source_format`` gives our tensor ``name`` (e.g. ``blocks.0.mlp.fc1.weight``
    -> ``backbone.blocks.0.mlp.layers.0.0.weight`` for mmaction2)."""
    for pattern, template in RULES[source_format]:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, template, name)
    raise ImportMismatchError(f"{source_format} layout has no tensor for {name}")


def convert(
    src: Path,
    source_format: str,
    name: str | None = None,
    clip_len: int | None = None,
    labels: str | Path | None = None,
    label_map: str | Path | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Import ``src`` (a ``.pth`` file, or a folder for ``transformers``) as a VideoMAE V2
    model; ``name`` (e.g. ``videomae2_vit_b``) defaults to the size the shapes show."""
    if name is not None and name not in VIT_PATCH:
        raise BadOptionError(f"--from {source_format} imports VideoMAE V2 ViTs, not {name}")
    config: dict[str, Any] = {}
    if source_format == "transformers":
        tensors, config = read_transformers(src)
        digest_file = src / "model.safetensors"
    else:
        tensors = read_torch_state(src, source_format)
        digest_file = src
    provenance = {"format": source_format, "file": src.name, "sha256": file_sha256(digest_file)}

    key = partial(foreign_name, source_format)
    found = infer_arch(tensors, key, str(src))
    name = name or found["arch"]
    spec_fields: dict[str, Any] = {"layer_scale": found["layer_scale"]}
    crop = DEFAULT_CROP
    if config:
        spec_fields["layer_norm_eps"] = float(config.get("layer_norm_eps", 1e-12))
        clip_len = clip_len or int(config.get("num_frames", VIDEOMAE2_CLIP_LEN))
        crop = _square(config.get("image_size", DEFAULT_CROP), "image_size", src)
    clip_len = clip_len or VIDEOMAE2_CLIP_LEN
    num_classes = found["num_classes"]
    names = None  # class names from the file itself (Hugging Face's id2label)
    if labels is None and "id2label" in config:
        names = _id2label(config["id2label"], num_classes, src)

    if label_map is not None:
        indices, provenance["label_map"] = read_label_map(label_map, num_classes)
        for part in ("weight", "bias"):
            tensors[key(f"head.{part}")] = tensors[key(f"head.{part}")][indices]
        num_classes = len(indices)
        if names is not None:
            names = tuple(names[i] for i in indices)
        elif labels is None and num_classes == 400:
            labels = "kinetics400"  # upstream's map selects Kinetics-400 in its class order
    if names is None and labels is None and source_format == "mmaction2" and num_classes == 400:
        labels = "kinetics400"  # mmaction2's ports carry Kinetics-400 heads

    spec = create_spec(
        name,
        num_classes,
        clip_len,
        crop_size=crop,
        resize_size=(crop,),
        labels=names if names is not None else resolve_labels(labels, num_classes),
        provenance=provenance,
        **spec_fields,
    )
    model = build_model(spec)
    _consume_position_table(tensors, key("pos_embed"), model.pos_embed, str(src))
    key_map = {our: key(our) for our in model.state_dict()}
    load_exact(model, tensors, key_map, str(src))
    return model, spec


def read_torch_state(path: Path, source_format: str) -> dict[str, torch.Tensor]:
    """The state dict of an upstream or mmaction2 ``.pth`` file, read by
    :func:`~r21d.importers.state_dict.load_torch_file`: a file that needs any other Python
    object is refused, not run."""
    data = load_torch_file(path)
    wrappers = (
        ("state_dict",) if source_format == "mmaction2" else ("model", "module", "state_dict")
    )
    for wrapper in wrappers:
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ImportMismatchError(
            f"{path}: expected a state dict (a dict of tensors, at the top or under "
            f"{' / '.join(wrappers)})"
        )
    if source_format == "mmaction2":
        return dict(data)
    return {_strip(k, UPSTREAM_PREFIXES): v for k, v in data.items()}


def read_transformers(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (attention fused into our ``qkv``) and config of a Hugging Face folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise BadOptionError(
            f"{folder}: --from transformers takes a folder (config.json + model.safetensors)"
        )
    for file in ("config.json", "model.safetensors"):
        if not (folder / file).is_file():
            raise InputNotFoundError(
                f"{folder}: no {file} (a VideoMAEForVideoClassification "
                "folder as save_pretrained writes it)"
            )
    try:
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ImportMismatchError(f"{folder / 'config.json'}: not valid JSON ({e})") from None
    if config.get("model_type") != "videomae":
        raise ImportMismatchError(
            f"{folder}: model_type {config.get('model_type')!r}, not 'videomae'"
        )
    options = {
        "use_mean_pooling": config.get("use_mean_pooling", True),
        "qv_bias": config.get("qv_bias", config.get("qkv_bias", True)),
        "hidden_act": config.get("hidden_act", "gelu"),
        "tubelet_size": config.get("tubelet_size", TUBELET_FRAMES),
    }
    for option, want in (
        ("use_mean_pooling", True),
        ("qv_bias", True),
        ("hidden_act", "gelu"),  # exact (erf) GELU
        ("tubelet_size", TUBELET_FRAMES),
    ):
        if options[option] != want:
            raise ImportMismatchError(
                f"{folder}: config {option}={options[option]!r}; VideoMAE V2 has {want!r}"
            )
    try:
        tensors = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise ImportMismatchError(f"{folder / 'model.safetensors'}: unreadable ({e})") from None
    return _fuse_attention(tensors, str(folder)), config


def _fuse_attention(tensors: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Hugging Face attention -> ours: ``query/key/value.weight`` stacked into ``qkv.weight``
    and the old ``q_bias``/``v_bias`` names moved to ``query.bias``/``value.bias``."""
    tensors = dict(tensors)
    prefixes = sorted(
        {k.removesuffix("query.weight") for k in tensors if k.endswith(".attention.query.weight")}
    )
    for p in prefixes:
        for old, new in (("q_bias", "query.bias"), ("v_bias", "value.bias")):
            if p + old in tensors:
                if p + new in tensors:
                    raise ImportMismatchError(f"{origin}: both {p + old} and {p + new}")
                tensors[p + new] = tensors.pop(p + old)
        parts = [p + f"{part}.weight" for part in ("query", "key", "value")]
        missing = [k for k in parts if k not in tensors]
        if missing:
            raise ImportMismatchError(f"{origin}: missing: {', '.join(missing)}")
        shapes = {tuple(tensors[k].shape) for k in parts}
        if len(shapes) != 1:
            raise ImportMismatchError(
                f"{origin}: {p}query/key/value weights differ in shape: {sorted(shapes)}"
            )
        tensors[p + "qkv.weight"] = torch.cat([tensors.pop(k) for k in parts])
    return tensors


def infer_arch(
    tensors: dict[str, torch.Tensor], key: Callable[[str], str], origin: str
) -> dict[str, Any]:
    """Arch, class count and layer scale from the shapes: width and patch from the tubelet
    embedding, depth from the blocks present, classes from the head."""
    for needed in ("patch_embed.proj.weight", "head.weight"):
        if key(needed) not in tensors:
            hint = next(
                (
                    f" (this looks like --from {fmt})"
                    for fmt, marker in (("mmaction2", "cls_head."), ("transformers", "videomae."))
                    if any(k.startswith(marker) for k in tensors)
                ),
                "",
            )
            raise ImportMismatchError(
                f"{origin}: no {key(needed)}: not a VideoMAE V2 classifier in this layout{hint}"
            )
    embed = tensors[key("patch_embed.proj.weight")]
    if embed.dim() != 5 or embed.shape[1:3] != (3, TUBELET_FRAMES):
        raise ImportMismatchError(
            f"{origin}: {key('patch_embed.proj.weight')} {tuple(embed.shape)} is not a tubelet "
            f"embedding (D, 3, {TUBELET_FRAMES}, p, p)"
        )
    width, patch = int(embed.shape[0]), int(embed.shape[-1])
    depth = 0
    while key(f"blocks.{depth}.norm1.weight") in tensors:
        depth += 1
    matches = [
        arch
        for arch, size in SIZES.items()
        if (size.width, ARCH_DEPTHS[arch][0], VIT_PATCH[arch]) == (width, depth, patch)
    ]
    if not matches:
        raise ImportMismatchError(
            f"{origin}: width {width}, {depth} blocks, patch {patch} is none of the VideoMAE V2 "
            f"sizes ({', '.join(SIZES)})"
        )
    try:
        layer_scale = key("blocks.0.gamma_1") in tensors
    except ImportMismatchError:  # a layout without layer scale (transformers)
        layer_scale = False
    return {
        "arch": matches[0],
        "num_classes": int(tensors[key("head.weight")].shape[0]),
        "layer_scale": layer_scale,
    }


def read_label_map(path: str | Path, num_classes: int) -> tuple[list[int], dict[str, Any]]:
    """Indices of a label map (a JSON list of distinct row indices into the head) and its
    provenance record."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"label map {path} not found")
    try:
        indices = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise BadOptionError(f"{path}: not valid JSON ({e})") from None
    if (
        not isinstance(indices, list)
        or not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
    ):
        raise BadOptionError(f"{path}: a label map is a JSON list of integer class indices")
    bad = [i for i in indices if not 0 <= i < num_classes]
    if bad:
        raise BadOptionError(f"{path}: indices {bad[:5]} outside the head's {num_classes} classes")
    if len(set(indices)) != len(indices):
        raise BadOptionError(f"{path}: repeated indices (each class may be selected once)")
    record = {"file": path.name, "sha256": file_sha256(path), "from_classes": num_classes}
    return indices, record


def _consume_position_table(
    tensors: dict[str, torch.Tensor], name: str, ours: torch.Tensor, origin: str
) -> None:
    """A stored position table must be the fixed sinusoid one for this token grid; it then
    counts as used (a learnt table, ``use_learnable_pos_emb``, is refused)."""
    if name not in tensors:
        return
    stored = tensors.pop(name).float()
    if stored.dim() == 3:
        stored = stored[0]
    if stored.shape != ours.shape:
        raise ImportMismatchError(
            f"{origin}: {name} has {tuple(stored.shape)} (tokens, width) where the spec's clip "
            f"shape gives {tuple(ours.shape)}: pass the --clip-len the weights were trained for"
        )
    if not torch.allclose(stored, sinusoid_table(*ours.shape), atol=1e-4):
        raise ImportMismatchError(
            f"{origin}: {name} is not the fixed sinusoid table (a learnt position embedding, "
            "which VideoMAE V2's released models do not use)"
        )


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _square(value: Any, option: str, origin: Path) -> int:
    sizes = value if isinstance(value, list | tuple) else [value, value]
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise ImportMismatchError(f"{origin}: config {option} {value!r} is not square")
    return int(sizes[0])


def _id2label(id2label: dict[str, str], num_classes: int, origin: Path) -> tuple[str, ...]:
    try:
        names = tuple(id2label[str(i)] for i in range(num_classes))
    except KeyError as e:
        raise ImportMismatchError(
            f"{origin}: config id2label lacks class {e} of the head's {num_classes}"
        ) from None
    return names
