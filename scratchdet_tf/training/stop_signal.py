"""Ending a training run cleanly on SIGTERM / SIGINT: finish the step, save, report ``interrupted``."""

from __future__ import annotations

import os
import signal
import threading

from absl import logging


class StopOnSignal:
    """Records SIGTERM / SIGINT instead of dying, while installed (main thread only).

    ``signum`` is None until a signal arrives; a second signal ends the process at once
    (the default action, no checkpoint).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:  # a second signal: the default action (end now, no checkpoint)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        logging.warning("received %s: stopping after the current step with a checkpoint (send it again to end "
                        "at once)", signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
