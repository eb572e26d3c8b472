"""Checkpoints of a run: model weights as an r21d checkpoint, plus the training state.

Every checkpoint is a pair in ``<run>/checkpoints/``:

- ``step_XXXXXXXX.safetensors``: the weights and BN statistics with the spec
  (:func:`r21d.checkpoint.save_checkpoint`), so ``r21d export`` and ``r21d score`` take it
  directly;
- ``step_XXXXXXXX.state.pt``: what else a resumed run needs (step, optimiser and grad-scaler
  state, sampler position, RNG states), written with ``torch.save`` and read with
  ``weights_only=True``: tensors and plain containers only, never arbitrary objects.

Both files are written to a temporary name and renamed, the state file last, so a pair whose
state file exists is complete even if the run was killed while saving.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r21d.checkpoint import save_checkpoint
from r21d.outputs import atomic_file
from r21d.spec import ModelSpec

STATE_SUFFIX = ".state.pt"
_STEP = re.compile(r"step_(\d{8})\.state\.pt$")


def checkpoint_paths(run_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(weights, state) paths of the checkpoint at ``step``."""
    stem = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_name(stem.name + STATE_SUFFIX)


def save_run_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    spec: ModelSpec,
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write the checkpoint pair for ``step`` and drop all but the newest ``keep`` pairs."""
    weights, state_path = checkpoint_paths(run_dir, step)
    save_checkpoint(model, spec, weights)
    with atomic_file(state_path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        for path in checkpoint_paths(run_dir, old):
            path.unlink(missing_ok=True)
    return weights


def list_checkpoints(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    steps = [int(m.group(1)) for p in folder.iterdir() if (m := _STEP.match(p.name))]
    return sorted(s for s in steps if checkpoint_paths(run_dir, s)[0].is_file())


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A training-state file, loaded safely (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) generator states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
