"""``r21d train`` and ``r21d data``: train a model, and prepare what it trains on.

- ``r21d train [--config FILE] [--flags ...] [--nproc N]``: one process, or ``N`` processes
  through ``torchrun`` (the same as ``torchrun --nproc-per-node N -m r21d.train ...``).
- ``r21d data hashtags LABEL ...``: the paper's relevant hashtags of action labels.
- ``r21d data subset MANIFEST -o OUT``: tail-preserving (``--cap``/``--budget``) or random
  (``--random N``) subsets, written as a manifest.
- ``r21d data manifest FOLDER -o OUT``: a manifest of a class-per-folder tree.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from r21d.errors import BadOptionError, InputNotFoundError
from r21d.outputs import output_file
from r21d.train.config import TrainConfig, add_config_arguments, resolve_config
from r21d.train.interrupt import STOP_SIGNALS
from r21d.train.preflight import FINAL_MODEL, check_run
from r21d.train.run_state import list_checkpoints

PR_SET_PDEATHSIG = 1  # prctl(2)


def register(subparsers) -> None:
    """Add the ``train`` and ``data`` subcommands to the ``r21d`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on videos",
        description="Train or fine-tune a model on videos. Ctrl-C (or SIGTERM) stops after "
        "the current step with a checkpoint, exit code 130; --resume continues it exactly.",
    )
    add_config_arguments(p)
    p.add_argument("--nproc", type=int, default=1, help="processes (DDP via torchrun)")
    p.set_defaults(func=_train)

    data = subparsers.add_parser("data", help="prepare training data: hashtags, subsets, manifests")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    h = sub.add_parser("hashtags", help="relevant hashtags of action labels")
    h.add_argument("labels", nargs="+", help='action labels, e.g. "catching a fish"')
    h.set_defaults(func=_hashtags)

    s = sub.add_parser("subset", help="tail-preserving or random subset of a manifest")
    s.add_argument("manifest", help="manifest (.jsonl/.csv) or class-per-folder tree")
    s.add_argument("-o", "--output", required=True, help="output manifest (.jsonl or .csv)")
    kind = s.add_mutually_exclusive_group(required=True)
    kind.add_argument("--cap", type=int, help="tail-preserving: videos per head class")
    kind.add_argument("--budget", type=int, help="tail-preserving: total videos at most")
    kind.add_argument("--random", type=int, metavar="N", help="N videos uniformly at random")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_subset)

    m = sub.add_parser("manifest", help="manifest of a class-per-folder tree of videos")
    m.add_argument("folder")
    m.add_argument("-o", "--output", required=True, help="output manifest (.jsonl or .csv)")
    m.set_defaults(func=_manifest)


def _train(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.nproc < 1:
        raise BadOptionError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc == 1:
        from r21d.train.trainer import train

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        final = train(config)
        print(f"wrote {final}")
        return 0
    check_run(config)  # here, before any rank starts: one line, not one traceback per rank
    with tempfile.TemporaryDirectory(prefix="r21d-train-") as folder:
        launch = config.save(Path(folder) / "launch_config.yaml")
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={args.nproc}", "-m", "r21d.train", "--config", str(launch),
            f"--stop-at-step={config.stop_at_step}", "--resume" if config.resume else "--no-resume",
        ]  # fmt: skip
        code, interrupted = _run_ranks(command)
    if code == 0 and (interrupted or not _finished(config)):
        raise KeyboardInterrupt  # the ranks stopped early on a signal, with a checkpoint
    return code


def _run_ranks(command: list[str]) -> tuple[int, bool]:
    """Run ``torchrun`` in a session of its own and wait for it: a SIGINT (Ctrl-C) or SIGTERM
    here goes to each rank once (not to torchrun, which would kill them after 30 s with a
    traceback of its own), so they stop together with a checkpoint. Returns torchrun's exit
    code and whether a signal came."""
    process = subprocess.Popen(command, start_new_session=True, preexec_fn=_stop_with_parent)
    signals: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signals.append(signum)
        for pid in _children(process.pid) or [process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        return process.wait(), bool(signals)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (torchrun's: the ranks); empty without Linux's /proc."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").glob("*/children")
        for child in task.read_text().split()
    ]


def _stop_with_parent() -> None:
    """``preexec_fn`` of torchrun: on Linux it gets SIGTERM (and stops the ranks) should this
    process die without forwarding a signal, e.g. killed with SIGKILL."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _finished(config: TrainConfig) -> bool:
    """Whether the run reached the end of this session (its last step, or --stop-at-step)."""
    run_dir = Path(config.output_dir)
    if config.finetune == "linear_probe":
        return (run_dir / FINAL_MODEL).is_file()
    end = min(config.max_steps, config.stop_at_step or config.max_steps)
    steps = list_checkpoints(run_dir)
    return bool(steps) and steps[-1] >= end


def _hashtags(args: argparse.Namespace) -> int:
    from r21d.train.hashtags import relevant_hashtags

    for label in args.labels:
        tags = relevant_hashtags(label)
        print(f"{label}: {' '.join(tags)}" if len(args.labels) > 1 else "\n".join(tags))
    return 0


def _subset(args: argparse.Namespace) -> int:
    from r21d.train.data import load_video_set, write_manifest
    from r21d.train.sampling import random_subset, tail_preserving_subset

    output_file(args.output, "-o")
    data = load_video_set(args.manifest)
    if args.random is not None:
        kept = random_subset(data.records, args.random, seed=args.seed)
    else:
        kept = tail_preserving_subset(
            data.records, data.num_classes, cap=args.cap, budget=args.budget, seed=args.seed
        )
    write_manifest(kept, data.label_names, args.output)
    print(f"kept {len(kept)} of {len(data.records)} videos -> {args.output}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from r21d.train.data import load_video_set, write_manifest

    folder = Path(args.folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder} is not a folder")
    output_file(args.output, "-o")
    data = load_video_set(folder)
    write_manifest(data.records, data.label_names, args.output)
    print(f"{len(data.records)} videos in {data.num_classes} classes -> {args.output}")
    return 0
