"""The ``fpgen`` command: parses, calls the engine, reports. Exit codes are listed in ``fpgen.errors.ExitCode``.

``run(argv)`` is the whole command in this process (the tests call it); ``main()`` is the console script.
Nothing here imports torch or diffusers: ``--help`` and bad command lines answer at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import typer
from rich.markup import escape

from fpgen._version import __version__
from fpgen.errors import ExitCode, FpgenError
from fpgen.signals import sigterm_as_interrupt
from fpgen.terminal import IMPORT_NOISE, library_bars_off

app = typer.Typer(
    name="fpgen",
    help="FramePack image-to-video from the command line: generate, download models, finetune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# What each command leaves when Ctrl-C or SIGTERM stops it outside its own stop handling (loading, encoding, finishing);
# the stops a command handles itself (a job's sections, training steps) say what they kept in their own error.
KEPT_WHEN_INTERRUPTED = {
    "generate": "finished videos are kept, none is left half-written, and a job that had started stays in <output>.job/ for fpgen generate --resume",
    "download": "the files downloaded so far are kept; the same command goes on where it stopped",
    "finetune": "the cache written so far and any checkpoint saved are kept; the same command goes on (with --resume once training had started)",
}
NOTHING_HALF_WRITTEN = "no file was left half-written"
QUIET_FLAGS = {"-q", "--quiet", "--json"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fpgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """FramePack image-to-video from the command line."""


def main() -> None:
    """The console script."""
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Run ``fpgen ARGV`` and return its exit code. A failure is one line on stderr, never a traceback, and with
    --json also ``{"error", "exit_code"}`` on stdout, unless the run printed its own document there (a batch's summary)."""
    argv = [str(arg) for arg in argv]
    for name in IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
    printed = _documents_printed()
    message, code = _outcome(argv)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        if "--json" in argv and _documents_printed() == printed:
            print(json.dumps({"error": message, "exit_code": code}))
    return code


def _outcome(argv: list[str]) -> tuple[str | None, int]:
    """Run the command; its error message (None when it succeeded) and exit code. Every way a command ends is mapped here, once."""
    try:
        with sigterm_as_interrupt(), _library_bars_off() if QUIET_FLAGS & set(argv) else nullcontext():
            code = _command().main(args=argv, prog_name="fpgen", standalone_mode=False)
    except KeyboardInterrupt:  # outside Typer's reach (it turns the ones it sees into exit code 130)
        code = ExitCode.INTERRUPTED
    except typer.TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # `fpgen` or `fpgen lora` alone: the help is the answer
            error.show()
            return None, error.exit_code
        command = error.ctx.command_path if getattr(error, "ctx", None) else "fpgen"
        return f"{error.format_message().rstrip('.')}; see {command} --help", error.exit_code
    except FpgenError as error:
        return str(error), error.exit_code
    except typer.Abort:
        return "aborted", ExitCode.INTERRUPTED
    except Exception as error:
        if os.environ.get("FPGEN_DEBUG"):
            raise
        first_line = (str(error).splitlines() or [""])[0]
        return f"unexpected {type(error).__name__}: {first_line} (set FPGEN_DEBUG=1 for the traceback, and please report it)", ExitCode.FAILED
    if code == ExitCode.INTERRUPTED:
        return f"interrupted; {_kept_when_interrupted(argv)}", ExitCode.INTERRUPTED
    return None, code if isinstance(code, int) else ExitCode.OK


def _documents_printed() -> int:
    report = sys.modules.get("fpgen.cli.report")  # the reporter prints every document a command can still fail after (not imported: none)
    return report.Reporter.documents_printed if report else 0


def _kept_when_interrupted(argv: list[str]) -> str:
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # the root takes no option values
    return KEPT_WHEN_INTERRUPTED.get(command, NOTHING_HALF_WRITTEN)


@contextmanager
def _library_bars_off() -> Iterator[None]:
    """-q and --json mean no progress output: also none of the libraries' loading bars, in this process and in batch
    workers (which inherit the environment). The environment is put back after; a caller's libraries stay quiet."""
    from unittest import mock

    with mock.patch.dict(os.environ):
        library_bars_off()
        yield


def _command():
    """``app`` as a click command whose help is plain text: rich markup would eat a literal ``[default: ...]`` in a
    help string, and a flag gets no value placeholder (Typer shows ``<bool>`` as if it took one)."""
    command = typer.main.get_command(app)
    for ctx in _contexts(command):
        ctx.command.help, ctx.command.epilog = _plain(ctx.command.help), _plain(ctx.command.epilog)
        for param in filter(None, [*ctx.command.params, ctx.command.get_help_option(ctx)]):
            param.help = _plain(getattr(param, "help", None))
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return command


def _contexts(command, parent=None) -> Iterator[typer.Context]:
    """A context for ``command`` and each of its subcommands, settings inherited as when they run (-h among them)."""
    ctx = typer.Context(command, parent=parent, info_name=command.name, **command.context_settings)
    yield ctx
    for sub in getattr(command, "commands", {}).values():
        yield from _contexts(sub, ctx)


def _plain(text: str | None) -> str | None:
    return escape(text) if text else text


# Each command module registers its commands on ``app`` when imported; --help lists them in this order.
from fpgen.cli import generate  # noqa: E402, F401
from fpgen.cli import edit  # noqa: E402, F401
from fpgen.cli import download  # noqa: E402, F401
from fpgen.cli import models  # noqa: E402, F401
from fpgen.cli import info  # noqa: E402, F401
from fpgen.cli import finetune  # noqa: E402, F401
from fpgen.cli import lora  # noqa: E402, F401
from fpgen.cli import speed  # noqa: E402, F401
