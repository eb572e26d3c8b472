"""Import released Caffe2 (VMZ) R(2+1)D weights: pickled ``{"blobs": {name: array}}``.

Blob names follow DESIGN.md section 5: blocks are numbered globally from 0 and the convs in a
block from 1; a (2+1)D conv contributes a ``_middle`` (spatial) and a plain (temporal) blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from r21d.importers.exact import ImportMismatchError
from r21d.importers.safe_pickle import safe_load_pickle
from r21d.models.video_resnet import Conv2Plus1D, VideoResNet

BN_SUFFIXES = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def read_blobs(path: str | Path) -> dict[str, np.ndarray]:
    """The blob dict of a Caffe2 pickle (``{"blobs": ...}`` or flat), arrays only."""
    data = safe_load_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    if not isinstance(data, dict):
        raise ImportMismatchError(f"{path}: expected a dict of blobs, got {type(data).__name__}")
    not_arrays = sorted(k for k, v in data.items() if not isinstance(v, np.ndarray))
    if not_arrays:
        raise ImportMismatchError(f"{path}: blobs that are not arrays: {not_arrays[:6]}")
    return data


def num_classes_of(blobs: dict[str, np.ndarray]) -> int:
    """Class count from the classifier blob ``last_out_L{N}_w``."""
    heads = [k for k in blobs if k.startswith("last_out_L") and k.endswith("_w")]
    if len(heads) != 1:
        raise ImportMismatchError(f"expected one last_out_L{{N}}_w classifier blob, found {heads}")
    return int(blobs[heads[0]].shape[0])


def blob_names(model: VideoResNet) -> dict[str, str]:
    """Map each tensor name of ``model`` to the Caffe2 blob that holds it."""
    names: dict[str, str] = {}

    def conv(module_path: str, blob: str) -> None:
        names[f"{module_path}.weight"] = f"{blob}_w"

    def bn(module_path: str, blob: str) -> None:
        for param, suffix in BN_SUFFIXES.items():
            names[f"{module_path}.{param}"] = f"{blob}_{suffix}"

    if len(model.stem) == 3:  # R3D: one 3x7x7 conv
        conv("stem.0", "conv1")
        bn("stem.1", "conv1_spatbn_relu")
    else:
        conv("stem.0", "conv1_middle")
        bn("stem.1", "conv1_middle_spatbn_relu")
        conv("stem.3", "conv1")
        bn("stem.4", "conv1_spatbn_relu")

    blocks = [
        (f"layer{s}.{b}", block)
        for s in range(1, 5)
        for b, block in enumerate(getattr(model, f"layer{s}"))
    ]
    for i, (path, block) in enumerate(blocks):
        j = 1
        while hasattr(block, f"conv{j}"):
            seq: nn.Sequential = getattr(block, f"conv{j}")
            if isinstance(seq[0], Conv2Plus1D):
                conv(f"{path}.conv{j}.0.0", f"comp_{i}_conv_{j}_middle")
                bn(f"{path}.conv{j}.0.1", f"comp_{i}_spatbn_{j}_middle")
                conv(f"{path}.conv{j}.0.3", f"comp_{i}_conv_{j}")
            else:
                conv(f"{path}.conv{j}.0", f"comp_{i}_conv_{j}")
            bn(f"{path}.conv{j}.1", f"comp_{i}_spatbn_{j}")
            j += 1
        if block.downsample is not None:
            conv(f"{path}.downsample.0", f"shortcut_projection_{i}")
            bn(f"{path}.downsample.1", f"shortcut_projection_{i}_spatbn")

    n = model.fc.out_features
    names["fc.weight"] = f"last_out_L{n}_w"
    names["fc.bias"] = f"last_out_L{n}_b"
    return names
