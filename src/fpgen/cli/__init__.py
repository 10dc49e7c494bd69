"""The ``fpgen`` command: parses, calls the engine, reports. Exit codes are listed in ``fpgen.errors.ExitCode``."""

from __future__ import annotations

import os
import sys

import typer

from fpgen._version import __version__
from fpgen.errors import ExitCode, FpgenError

app = typer.Typer(
    name="fpgen",
    help="FramePack image-to-video from the command line: generate, download models, finetune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fpgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """FramePack image-to-video from the command line."""


COMMAND_ORDER = ("generate", "download", "models", "info", "finetune")


def _register() -> None:
    """Import every command module of this package; each registers its commands on ``app`` (listed in COMMAND_ORDER first)."""
    import importlib
    import pkgutil

    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "report"}
    for name in [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER)):
        importlib.import_module(f"fpgen.cli.{name}")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main() -> None:
    """Entry point: user errors become one line on stderr and a meaningful exit code, never a traceback."""
    _register()
    try:
        app(standalone_mode=False)
    except FpgenError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.INTERRUPTED)
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except typer.Abort:
        _fail("aborted", ExitCode.INTERRUPTED)
    except Exception as error:
        if hasattr(error, "show") and hasattr(error, "exit_code"):  # click's usage errors (typer vendors click)
            error.show()
            raise SystemExit(error.exit_code) from None
        if os.environ.get("FPGEN_DEBUG"):
            raise
        _fail(f"unexpected {type(error).__name__}: {error} (set FPGEN_DEBUG=1 for the traceback, and please report it)", ExitCode.FAILED)
