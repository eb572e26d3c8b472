"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, stop.

The first SIGINT or SIGTERM only sets a flag. The training loop reads it between steps, all
ranks together (:func:`r21d.train.distributed.any_rank`), so every rank stops after the same
step; rank 0 saves the checkpoint a periodic one would be (:mod:`r21d.train.run_state`) and
``--resume`` continues from it exactly. A second signal quits at once, without a checkpoint.
DataLoader workers ignore SIGINT: a terminal's Ctrl-C reaches them too, and the training
process decides. They keep SIGTERM's default, the signal their shutdown uses (a worker that
ignored it would make the interpreter's exit wait for it forever), so a SIGTERM sent to the
whole process group (not only to the training process) ends them and the run fails.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether a stop signal has arrived (``signum``: which one)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: object) -> None:
        """Signal handler: the first signal asks for a stop, the second quits now."""
        if self.requested:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s: stopping after this step with a checkpoint (again to quit without one)",
            signal.Signals(signum).name,
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the yielded request's flag while the block runs (only in the
    main thread, the one Python delivers signals to; elsewhere the flag never gets set)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request.handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_ctrl_c(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave SIGINT to the training process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
