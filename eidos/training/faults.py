"""What stops a run early: a preemption signal (checkpoint, then stop) or too many non-finite steps."""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was written before raising."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; a checkpoint was saved, "
                         f"rerun the same command to resume")
        self.signum = signum


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class StopRequest:
    """Records SIGTERM/SIGINT (a cluster preemption, Ctrl-C) instead of dying mid-step; the loop checks it."""

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self.request)

    def request(self, signum, frame) -> None:
        self.signum = signum
        logger.warning("received %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
