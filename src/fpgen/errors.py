"""User-facing errors: one line of text and an exit code that means something.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a traceback for
these. Anything else that escapes is a bug and is reported as such.
"""

import sys


class ExitCode:
    OK = 0
    FAILED = 1  # the job ran and failed (a bug, or a batch with failed jobs)
    USAGE = 2  # bad arguments or unreadable input: fix the command line
    MODEL_MISSING = 3  # weights not available (offline, not downloaded, no access)
    NETWORK = 4  # the Hub could not be reached or refused the request
    DISK_FULL = 5  # not enough disk space for the download or output
    OUT_OF_MEMORY = 6  # the GPU or host ran out of memory; the job folder can be resumed
    INTERRUPTED = 130  # Ctrl-C / SIGTERM; partial output kept and resumable


class FpgenError(Exception):
    """An error the user can act on. ``hint`` says what to do about it."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InputError(FpgenError):
    exit_code = ExitCode.USAGE


class ModelMissingError(FpgenError):
    exit_code = ExitCode.MODEL_MISSING


class NetworkError(FpgenError):
    exit_code = ExitCode.NETWORK


class DiskFullError(FpgenError):
    exit_code = ExitCode.DISK_FULL


class OutOfMemoryError(FpgenError):
    exit_code = ExitCode.OUT_OF_MEMORY


class Interrupted(FpgenError):
    exit_code = ExitCode.INTERRUPTED


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error, Python's, or the CPU allocator's (torch is only looked at once it is loaded)."""
    torch = sys.modules.get("torch")
    if isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))
