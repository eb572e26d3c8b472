"""What a training run checks before it starts a process or writes a file.

:func:`check_run` runs in the process ``r21d train`` is started in, before ``torchrun``
spawns a rank, and again at the start of :func:`r21d.train.trainer.train` in every rank (a
run started with ``torchrun`` itself or from Python): a mistake is one line with its exit
code, not a traceback from every rank, and nothing in the run folder has changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from r21d.checkpoint import read_spec
from r21d.errors import BadModelFileError, BadOptionError, InputNotFoundError, UnusableDataError
from r21d.infer.runtime import parse_device
from r21d.outputs import output_folder
from r21d.spec import ModelSpec
from r21d.train.config import TrainConfig, read_config_file, resume_differences
from r21d.train.data import VideoSet, load_label_map, load_video_set
from r21d.train.model_setup import training_spec
from r21d.train.run_state import checkpoint_paths, list_checkpoints

log = logging.getLogger(__name__)
FINAL_MODEL = "model.safetensors"
SHOWN_MISSING = 3


@dataclass(frozen=True)
class RunPlan:
    """What the checks found: the run folder, the data, the spec and where a resume starts."""

    run_dir: Path
    train_set: VideoSet
    val_set: VideoSet | None
    spec: ModelSpec
    resume_step: int | None


def check_run(cfg: TrainConfig) -> RunPlan:
    """Refuse, with one :class:`~r21d.errors.R21dError`, a run that cannot start: an unusable
    ``--output-dir``, a ``--resume`` without a checkpoint or with options that differ from the
    run's ``config.yaml``, a new run over a folder that holds one, manifests that are missing
    or list mostly missing videos, a model that does not match the run's checkpoints."""
    cfg.validate()
    if parse_device(cfg.device) == "cpu":
        if cfg.sync_bn:
            raise BadOptionError("--sync-bn needs CUDA (SyncBatchNorm has no CPU implementation)")
        if cfg.precision == "fp16":
            raise BadOptionError("--precision fp16 needs CUDA; use bf16 on the CPU")
    run_dir = output_folder(cfg.output_dir, "--output-dir")
    steps = list_checkpoints(run_dir)
    if cfg.resume:
        if not steps:
            raise InputNotFoundError(
                f"--resume: no checkpoint in {run_dir / 'checkpoints'} to continue from "
                "(a run saves one every --checkpoint-every steps, at its end and when stopped "
                "with Ctrl-C)"
            )
        _check_resumed_options(cfg, run_dir)
    elif steps or (run_dir / FINAL_MODEL).exists():
        raise BadOptionError(
            f"--output-dir {run_dir} already holds a run; continue it with --resume, or give "
            "another folder"
        )
    train_set, val_set = _load_data(cfg, run_dir)
    spec = training_spec(
        arch=cfg.arch,
        label_names=train_set.label_names,
        clip_len=cfg.clip_len,
        width=cfg.width,
        frame_step=cfg.frame_step,
        resize_mode=cfg.resize_mode,
        resize_size=cfg.resize_size,
        crop_size=cfg.crop_size,
        init_from=cfg.init_from,
    )
    if cfg.resume:
        weights = checkpoint_paths(run_dir, steps[-1])[0]
        if read_spec(weights) != spec:
            raise BadModelFileError(
                f"--resume: {weights} was trained with a different model spec than the options "
                "describe (changed arch, clip, labels or preprocessing?)"
            )
    return RunPlan(run_dir, train_set, val_set, spec, steps[-1] if cfg.resume else None)


def _check_resumed_options(cfg: TrainConfig, run_dir: Path) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return  # a run folder from before runs saved their options: nothing to compare
    differences = resume_differences(cfg, TrainConfig(**read_config_file(saved)))
    if differences:
        raise BadOptionError(
            f"--resume continues the run in {run_dir} with the options of {saved}, but these "
            f"differ: {', '.join(differences)}; drop them, or start a new run in another "
            "--output-dir"
        )


def _load_data(cfg: TrainConfig, run_dir: Path) -> tuple[VideoSet, VideoSet | None]:
    saved = run_dir / "labels.txt"
    if cfg.resume and saved.is_file():
        names = load_label_map(saved)
    elif cfg.labels:
        if not Path(cfg.labels).is_file():
            raise InputNotFoundError(f"--labels {cfg.labels} not found")
        names = load_label_map(cfg.labels)
    else:
        names = None
    train_set = _video_set(cfg.train_manifest, "--train-manifest", names)
    val_set = None
    if cfg.val_manifest:
        val_set = _video_set(cfg.val_manifest, "--val-manifest", train_set.label_names)
    return train_set, val_set


def _video_set(source: str, flag: str, names: tuple[str, ...] | None) -> VideoSet:
    """The manifest, refused if it is missing or most of the videos it lists are."""
    if not Path(source).exists():
        raise InputNotFoundError(f"{flag} {source} not found")
    data = load_video_set(source, names)
    missing = [r.path for r in data.records if not Path(r.path).is_file()]
    if not missing:
        return data
    shown = ", ".join(map(str, missing[:SHOWN_MISSING])) + (
        ", ..." if len(missing) > SHOWN_MISSING else ""
    )
    summary = f"{flag} {source}: {len(missing)} of {len(data.records)} videos are missing"
    if 2 * len(missing) > len(data.records):
        # skipping them would leave most draws failing: the paths are wrong, not a few files
        raise UnusableDataError(f"{summary} ({shown})")
    log.warning("%s and will be skipped (%s)", summary, shown)
    return data
