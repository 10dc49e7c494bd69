"""Ctrl-C and SIGTERM during a run: the first asks for a stop at the next safe point, a second stops at once.

Safe points are a clip's end in the cache, the end of setup and every optimizer step (the loop
then writes a checkpoint). Either way the run raises ``Interrupted`` (exit 130), saying what it kept.
"""

from __future__ import annotations

import signal
import threading

from fpgen.errors import Interrupted


class StopRequests:
    """Installed for the whole run (on the main thread, where signals arrive); restores the previous handlers."""

    def __init__(self):
        self.requested = False
        self.kept, self.hint = "nothing: no file was written", "run the same command again"
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def keep(self, kept: str, hint: str) -> None:
        """What a stop from now on leaves behind, and how to carry on."""
        self.kept, self.hint = kept, hint

    def check(self) -> None:
        """At a safe point before training: stop here if asked to."""
        if self.requested:
            raise self.interrupted("before its first step")

    def agreed(self, accelerator) -> bool:
        """At a step boundary: whether any process was asked to stop (all of them then stop at this step)."""
        if self.requested:
            accelerator.set_trigger()
        return accelerator.check_trigger()

    def interrupted(self, when: str) -> Interrupted:
        return Interrupted(f"training stopped {when}; kept: {self.kept}", self.hint)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise self.interrupted("at once")
        self.requested = True
