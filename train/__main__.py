"""``python -m r21d.train``: the training entry point ``torchrun`` starts in every process.

    torchrun --nproc-per-node 2 -m r21d.train --config run.yaml [--flags ...]

Takes the same options as ``r21d train`` (without ``--nproc``). Only rank 0 logs at INFO.
An error the user can fix is one line and its exit code (started by ``r21d train --nproc``,
the rank leaves it to the launcher to print); stopped by a signal, a rank exits 130 once its
checkpoint is saved.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from r21d.errors import EXIT_INTERRUPTED, R21dError
from r21d.train.config import add_config_arguments, resolve_config
from r21d.train.launch import write_rank_error


def main(argv: list[str] | None = None) -> int:
    """Parse the options, train, and turn a user error or a stop into an exit code."""
    parser = argparse.ArgumentParser(prog="python -m r21d.train", description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        from r21d.train.trainer import train

        final = train(resolve_config(args))
    except R21dError as e:
        if not write_rank_error(e, rank):
            print(f"[rank {rank}] r21d train: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if rank == 0:
        print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
