"""``r21d train --nproc N``: N training processes on this machine, started and watched here.

What ``torchrun --standalone --nproc-per-node N -m r21d.train`` does (the same environment:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, one thread per
process unless ``OMP_NUM_THREADS`` says otherwise), without torchrun's agent in between, so:

- an error the user can fix that a rank finds (say, a batch that does not fit in memory) is
  one line from this process with its exit code, not a traceback and a failure report per
  rank; a bug in a rank keeps its traceback;
- a SIGINT (Ctrl-C) or SIGTERM here reaches each rank once, and they stop together after the
  same step with a checkpoint (torchrun would kill them 30 s later and print its own
  traceback); should this process die without passing one on, the ranks get SIGTERM (Linux);
- once a rank fails, the others are ended rather than left waiting for it in a collective.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r21d import errors
from r21d.train.config import TrainConfig
from r21d.train.interrupt import STOP_SIGNALS
from r21d.train.preflight import FINAL_MODEL
from r21d.train.run_state import list_checkpoints

ERROR_DIR = "R21D_TRAIN_ERROR_DIR"
"""Environment variable: the folder a rank writes its user error to (``rank-N.json``)."""
PR_SET_PDEATHSIG = 1  # prctl(2)
POLL_S = 0.05


def run_ranks(config: TrainConfig, nproc: int) -> int:
    """Train ``config`` in ``nproc`` processes; returns 0, or a failed rank's exit code.

    Raises the :class:`~r21d.errors.R21dError` a rank stopped with, and ``KeyboardInterrupt``
    when the run stopped early on a signal (its checkpoint saved).
    """
    with tempfile.TemporaryDirectory(prefix="r21d-train-") as folder:
        launch = config.save(Path(folder) / "launch_config.yaml")
        command = [
            sys.executable, "-m", "r21d.train", "--config", str(launch),
            f"--stop-at-step={config.stop_at_step}", "--resume" if config.resume else "--no-resume",
        ]  # fmt: skip
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            ERROR_DIR: folder,
        }
        env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: the processes share the cores
        ranks = [
            subprocess.Popen(
                command,
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                start_new_session=True,  # a terminal's Ctrl-C reaches them through here, once
                preexec_fn=_stop_with_parent,
            )
            for rank in range(nproc)
        ]

        def forward(signum: int, frame: object) -> None:
            for process in ranks:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
        try:
            codes = _wait(ranks)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        error = _rank_error(Path(folder))
    if error is not None:
        raise error
    failed = [c for c in codes if c not in (0, errors.EXIT_INTERRUPTED)]
    if failed:
        return failed[0]
    if not _finished(config):  # a signal came before the last step (one during it: finished)
        raise KeyboardInterrupt
    return 0


def _wait(ranks: list[subprocess.Popen]) -> list[int]:
    """Every rank's exit code; once one fails, the others are killed (they would wait for it
    in their next collective until gloo's or NCCL's timeout)."""
    while True:
        codes = [process.poll() for process in ranks]
        if all(code is not None for code in codes):
            return codes
        if any(code not in (None, 0, errors.EXIT_INTERRUPTED) for code in codes):
            for process in ranks:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            return [process.wait() for process in ranks]
        time.sleep(POLL_S)


def _rank_error(folder: Path) -> errors.R21dError | None:
    """The user error the lowest rank that wrote one stopped with."""
    for path in sorted(folder.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        report = json.loads(path.read_text("utf-8"))
        kind = getattr(errors, report["kind"], None)
        if isinstance(kind, type) and issubclass(kind, errors.R21dError):
            return kind(report["message"])
    return None


def write_rank_error(error: errors.R21dError, rank: int) -> bool:
    """In a rank started by :func:`run_ranks`: leave ``error`` for the launcher to report;
    False elsewhere (the rank prints it itself)."""
    folder = os.environ.get(ERROR_DIR)
    if not folder:
        return False
    report = {"kind": type(error).__name__, "message": str(error)}
    Path(folder, f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    return True


def _free_port() -> int:
    """A TCP port free on this machine now, for rank 0's rendezvous store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_with_parent() -> None:
    """``preexec_fn`` of a rank: on Linux it gets SIGTERM (and stops with a checkpoint) should
    the launcher die without passing a signal on, e.g. killed with SIGKILL."""
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
