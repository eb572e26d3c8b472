"""Checkpoints: safetensors files whose metadata carries the model spec.

A checkpoint alone rebuilds the exact model: :func:`load_checkpoint` reads the spec, builds
the architecture and loads every tensor strictly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from r21d.artefacts import existing_file
from r21d.errors import BadModelFileError
from r21d.models import build_model
from r21d.outputs import atomic_file
from r21d.spec import SPEC_KEY, ModelSpec, SpecError


class CheckpointError(BadModelFileError):
    """A file that is not a usable r21d checkpoint."""


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: parameters and BN running statistics.

    ``num_batches_tracked`` counters are left out: they are training bookkeeping that Caffe2
    never had, and the ported weight files disagree on whether they exist.
    """
    return {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def save_checkpoint(model: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model``'s weights and ``spec`` to ``path`` atomically (a temporary file beside
    it, renamed; removed if the write fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file(model_tensors(model), str(tmp), metadata={SPEC_KEY: spec.to_json()})
    return path


def read_spec(path: str | Path) -> ModelSpec:
    """The spec stored in a checkpoint, without loading its tensors."""
    with _open(path) as f:
        return _spec_of(f, path)


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model a checkpoint describes, weights loaded strictly, in eval mode."""
    with _open(path) as f:
        spec = _spec_of(f, path)
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    model = build_model(spec)
    expected = model_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: tensors do not match {spec.name} as its spec describes: "
            + _describe(missing, unexpected, wrong)
        )
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval(), spec


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (provenance records and download checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{label}: {', '.join(keys[:5])}{more}")
    return "; ".join(parts)


def _open(path: str | Path):
    path = existing_file(path)
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a safetensors checkpoint (corrupted, truncated or another format: "
            f"{reason})"
        ) from None


def _spec_of(f, path: str | Path) -> ModelSpec:
    metadata = f.metadata() or {}
    if SPEC_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors file has no {SPEC_KEY!r} metadata; import foreign weights with "
            "`r21d convert` first"
        )
    try:
        return ModelSpec.from_json(metadata[SPEC_KEY])
    except SpecError as e:
        raise CheckpointError(f"{path}: bad {SPEC_KEY} metadata: {e}") from None
