"""SIGTERM as Ctrl-C: a job stopped by either keeps what it made and can be resumed (exit code 130)."""

from __future__ import annotations

import signal


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _interrupt)
