"""``r21d train`` and ``r21d data``: train a model, and prepare what it trains on.

- ``r21d train [--config FILE] [--flags ...] [--nproc N]``: one process, or ``N`` processes
  on this machine (:mod:`r21d.train.launch`; like ``torchrun --nproc-per-node N -m
  r21d.train ...``, which multi-machine runs use).
- ``r21d data hashtags LABEL ...``: the paper's relevant hashtags of action labels.
- ``r21d data subset MANIFEST -o OUT``: tail-preserving (``--cap``/``--budget``) or random
  (``--random N``) subsets, written as a manifest.
- ``r21d data manifest FOLDER -o OUT``: a manifest of a class-per-folder tree.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from r21d.errors import BadOptionError, InputNotFoundError
from r21d.outputs import output_file
from r21d.train.config import add_config_arguments, resolve_config
from r21d.train.preflight import check_run


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
    from r21d.train.launch import run_ranks

    check_run(config)  # here, before any rank starts: one line, not one traceback per rank
    return run_ranks(config, args.nproc)


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
