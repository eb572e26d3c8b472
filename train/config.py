"""Training configuration: one dataclass, a YAML/TOML file, and a flag for every field.

Precedence: field defaults < ``--config FILE`` < command-line flags. The flags are generated
from the dataclass, so every option is available both ways by construction, and an unknown
key in a config file is an error rather than a silently ignored typo. A run saves the
resolved configuration as ``config.yaml`` in its output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r21d.errors import BadOptionError, InputNotFoundError
from r21d.infer.runtime import (
    PRECISIONS,
    RUNTIME_FIELDS,
    add_runtime_arguments,
    default_workers,
    parse_device,
)
from r21d.outputs import atomic_file
from r21d.train.optim import OPTIMIZERS


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Every option of a training run (the flag for ``foo_bar`` is ``--foo-bar``)."""

    # data
    train_manifest: str | None = _opt(None, "training manifest (.jsonl/.csv) or class folders")
    val_manifest: str | None = _opt(None, "validation manifest, scored with the 10-clip protocol")
    labels: str | None = _opt(None, "label map file (one name per line); default: sorted names")
    output_dir: str | None = _opt(None, "run folder: checkpoints, metrics, config, labels")
    # model
    arch: str = _opt("r2plus1d_18", "architecture when training from scratch")
    width: float = _opt(1.0, "channel width multiplier (from scratch)")
    clip_len: int | None = _opt(
        None,
        "frames per clip (8 or 32 in the paper; default: "
        "init_from's, else the arch's: 8, or 16 for ViTs)",
    )
    frame_step: int | None = _opt(
        None, "sampling rate: take every n-th frame (default: init_from's, else the arch's)"
    )
    resize_mode: str | None = _opt(
        None,
        "frame resizing (default: init_from's, else the arch's: fixed 128x171)",
        ("fixed", "short_edge"),
    )
    resize_size: list[int] | None = _opt(None, "H W for fixed, the short side for short_edge")
    crop_size: int | None = _opt(None, "random crop size (default: init_from's, else the arch's)")
    init_from: str | None = _opt(None, "r21d checkpoint to start from (new classifier)")
    inflate_from: str | None = _opt(
        None, "2D ResNet state dict (.pth, torchvision layout) inflated into an r3d model"
    )
    finetune: str = _opt("full", "what trains", ("full", "fc_only", "linear_probe"))
    drop_path: float = _opt(0.0, "ViTs: stochastic depth, rising to this rate in the last block")
    # augmentation and targets
    flip: bool = _opt(False, "random horizontal flips (not for direction-sensitive classes)")
    multi_label: str = _opt("sample", "multi-label videos", ("sample", "sigmoid"))
    sampling: str = _opt("uniform", "video sampling", ("uniform", "sqrt"))
    # optimisation
    batch_size: int = _opt(8, "clips per process per step (and per validation model call)")
    max_steps: int = _opt(1000, "optimiser steps")
    base_lr: float = _opt(0.1, "learning rate per 256 clips of global batch (linear scaling)")
    optimizer: str = _opt("sgd", "sgd (the paper's) or adamw (ViT fine-tuning)", OPTIMIZERS)
    layer_decay: float = _opt(1.0, "adamw on ViTs: layer-wise learning-rate decay (e.g. 0.75)")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(1e-4, "SGD weight decay")
    nesterov: bool = _opt(False, "Nesterov momentum")
    warmup_steps: int = _opt(0, "linear warm-up steps")
    warmup_factor: float = _opt(0.1, "warm-up starts at this fraction of the peak rate")
    schedule: str = _opt("step", "decay after warm-up", ("step", "cosine"))
    halvings: int = _opt(13, "times the step schedule halves the rate (the paper: 13)")
    precise_bn_batches: int = _opt(0, "recompute BN statistics over this many batches at the end")
    precision: str = _opt("fp32", "autocast dtype (bf16 on CPU; fp16/bf16 on GPU)", PRECISIONS)
    # linear probe (finetune=linear_probe)
    l2: float = _opt(1e-3, "L2 weight of the logistic regression")
    lbfgs_steps: int = _opt(100, "LBFGS iterations of the logistic regression")
    # distributed and system
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    channels_last: bool = _opt(True, "channels_last_3d memory format (faster convs)")
    sync_bn: bool = _opt(False, "SyncBatchNorm (GPU only) instead of per-process BN statistics")
    workers: int = _opt(default_workers(), "decoding processes per training process")
    threads: int | None = _opt(None, "CPU threads for the model (default: all cores)")
    seed: int = _opt(0, "seed of initialisation, sampling and augmentation")
    deterministic: bool = _opt(False, "deterministic algorithms (exact resume; slower)")
    # bookkeeping
    checkpoint_every: int = _opt(500, "steps between checkpoints (and one at the end)")
    keep_checkpoints: int = _opt(3, "checkpoints kept in the run folder")
    val_every: int = _opt(0, "steps between validations (0: only at the end)")
    val_clips: int = _opt(10, "clips per validation video")
    log_every: int = _opt(10, "steps between metric lines")
    progress: bool = _opt(True, "tqdm progress bar")
    resume: bool = _opt(
        False,
        "continue the run in --output-dir from its newest checkpoint with the options of its "
        "config.yaml (read when --config is not given); a flag that changes them is refused, "
        "except --device, --workers, --threads, --progress and the log, validation and "
        "checkpoint intervals",
    )
    stop_at_step: int = _opt(0, "end this session at this step with a checkpoint (0: none)")

    def validate(self) -> None:
        """Raise :class:`BadOptionError` for missing or contradictory options, named as flags."""
        if not self.output_dir:
            raise BadOptionError("--output-dir is required")
        if not self.train_manifest:
            raise BadOptionError("--train-manifest is required")
        parse_device(self.device)
        for names, least in ((_AT_LEAST_ONE, 1), (_AT_LEAST_ZERO, 0)):
            for name in names:
                value = getattr(self, name)
                if value is not None and value < least:
                    raise BadOptionError(f"{flag(name)} must be >= {least}, got {value}")
        if self.width <= 0:
            raise BadOptionError(f"--width must be > 0, got {self.width}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            unset = f.default is None and getattr(self, f.name) is None  # e.g. resize_mode
            if choices and not unset and getattr(self, f.name) not in choices:
                raise BadOptionError(
                    f"{flag(f.name)} must be one of {choices}, got {getattr(self, f.name)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.resize_size is not None:
            data["resize_size"] = list(self.resize_size)
        return data

    def save(self, path: str | Path) -> Path:
        """Write the resolved configuration as YAML (loadable with ``--config``), atomically.

        The per-session options (``resume``, ``stop_at_step``) are left out: a run resumed
        from its saved configuration must not stop again where the last session stopped.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in self.to_dict().items() if k not in SESSION_OPTIONS}
        with atomic_file(path) as tmp:
            tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path


SESSION_OPTIONS = ("resume", "stop_at_step")
RESUME_MAY_CHANGE = (
    *SESSION_OPTIONS,
    *("device", "workers", "threads", "progress", "log_every", "val_every", "val_clips"),
    *("checkpoint_every", "keep_checkpoints", "output_dir"),
)
"""Options a ``--resume`` may set for its session: where and how fast it runs, how often it
logs, validates and checkpoints (and ``output_dir``: the run is the folder resumed, wherever
it has been moved). Every other option is the run's, fixed by its config.yaml."""
PATH_OPTIONS = (
    "train_manifest",
    "val_manifest",
    "labels",
    "output_dir",
    "init_from",
    "inflate_from",
)
_AT_LEAST_ONE = (
    *("batch_size", "max_steps", "clip_len", "frame_step", "crop_size", "checkpoint_every"),
    *("log_every", "val_clips", "lbfgs_steps", "threads"),
)
_AT_LEAST_ZERO = (
    *("warmup_steps", "halvings", "precise_bn_batches", "workers", "val_every"),
    *("keep_checkpoints", "stop_at_step", "drop_path", "weight_decay", "l2"),
)


def flag(name: str) -> str:
    """The command-line flag of a :class:`TrainConfig` field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def resume_differences(config: TrainConfig, saved: TrainConfig) -> list[str]:
    """The options outside :data:`RESUME_MAY_CHANGE` where ``config`` differs from the run's
    ``saved`` configuration, as ``--flag VALUE (the run: VALUE)``; paths compare resolved."""
    differences = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUME_MAY_CHANGE:
            continue
        mine, theirs = getattr(config, f.name), getattr(saved, f.name)
        if f.name in PATH_OPTIONS and mine is not None and theirs is not None:
            same = Path(mine).resolve() == Path(theirs).resolve()
        else:
            same = mine == theirs
        if not same:
            differences.append(f"{flag(f.name)} {_show(mine)} (the run: {_show(theirs)})")
    return differences


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file, keys checked."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"config file {path} not found")
    text = path.read_text("utf-8")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise BadOptionError("TOML configs need Python 3.11 or later; use YAML") from None

        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    else:
        raise BadOptionError(f"{path}: config must be .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise BadOptionError(f"{path}: config must be a mapping of option names to values")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadOptionError(f"{path}: unknown options {unknown}")
    return data


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one flag per :class:`TrainConfig` field (defaults left unset)."""
    parser.add_argument("--config", help="YAML or TOML file of options (flags override it)")
    hints = typing.get_type_hints(TrainConfig)
    add_runtime_arguments(
        parser, batch_help="clips per process per step (default: 8)", suppress_defaults=True
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name in RUNTIME_FIELDS:
            continue  # in the shared runtime group above
        kind = _base_type(hints[f.name])
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS)
        kwargs["help"] = f"{f.metadata['help']} (default: {f.default})"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs.update(type=int, nargs="+")
        else:
            kwargs.update(type=kind, choices=f.metadata.get("choices"))
        parser.add_argument(flag(f.name), **kwargs)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the ``--config`` file, then the flags that were given; validated.

    ``--resume --output-dir RUN`` without ``--config`` reads ``RUN/config.yaml``, the
    configuration the run was started with.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    _check_runtime_flags(args)
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    saved = Path(flags.get("output_dir") or ".") / "config.yaml"
    if not config_file and flags.get("resume") and flags.get("output_dir"):
        if saved.is_file():
            config_file = saved
        elif not flags.get("train_manifest"):
            raise InputNotFoundError(
                f"--resume: {saved} not found: --output-dir {flags['output_dir']} holds no run "
                "to continue"
            )
    if config_file:
        values.update(read_config_file(config_file))
    values.update(flags)
    config = TrainConfig(**values)
    if config.resize_size is not None:
        config.resize_size = [int(s) for s in config.resize_size]
    config.validate()
    return config


def _base_type(hint: Any) -> type:
    """``str | None`` -> ``str``; ``list[int]`` -> ``list``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _check_runtime_flags(args: argparse.Namespace) -> None:
    """The runtime options training cannot honour: it trains and validates in torch."""
    if getattr(args, "backend", "auto") not in ("auto", "torch"):
        raise BadOptionError(f"training runs the torch backend, not {args.backend}")
    if getattr(args, "ort_provider", None) is not None:
        raise BadOptionError("--ort-provider applies to onnxruntime, which training does not run")
