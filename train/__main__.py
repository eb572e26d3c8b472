"""``python -m r21d.train``: the training entry point ``torchrun`` starts in every process.

    torchrun --nproc-per-node 2 -m r21d.train --config run.yaml [--flags ...]

Takes the same options as ``r21d train`` (without ``--nproc``). Only rank 0 logs at INFO.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from r21d.train.config import add_config_arguments, resolve_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r21d.train", description=__doc__)
    add_config_arguments(parser)
    config = resolve_config(parser.parse_args(argv))
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    from r21d.train.trainer import train

    final = train(config)
    if rank == 0:
        print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
