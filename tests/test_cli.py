"""The command's entry (``fpgen.cli.run``): help text, start-up imports, interrupts, quiet runs, exit codes of a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from conftest import GOLDEN, fpgen_env, fpgen_waiting, run_fpgen
from helpers import assert_one_line_error, read_until

import fpgen
from fpgen.errors import ExitCode

IMAGE = GOLDEN / "input.png"
TINY_JOB = ["--size", "16x16", "--steps", "1", "--seconds", "1", "--device", "cpu"]  # one section
LOADING_BARS = ("Loading weights", "Loading checkpoint shards", "it/s]", "%|")


def help_row(text: str, option: str) -> str:
    """The line of ``--help`` output that lists ``option``."""
    return next(line for line in text.splitlines() if f" {option} " in line)


def test_version_and_help(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping: one row per option
    version = cli("--version")
    assert version.returncode == 0 and version.stdout == f"fpgen {fpgen.__version__}\n"
    shown = cli("generate", "--help")
    assert shown.returncode == 0
    for option in ("--prompt", "--seconds", "--step-cache", "--size", "--save-latents", "Examples"):
        assert option in shown.stdout
    assert "[default: outputs/<time>_<seed>.mp4]" in help_row(shown.stdout, "--output")  # written in the help string
    assert "[default: teacache with --fast, else none]" in help_row(shown.stdout, "--step-cache")
    assert "[default: 31337]" in help_row(shown.stdout, "--seed")  # added by Typer
    assert "<int>" in help_row(shown.stdout, "--seed") and "<path>" in help_row(shown.stdout, "--output")
    for flag in ("--overwrite", "--json", "--quiet", "--help"):
        assert "bool" not in help_row(shown.stdout, flag).lower(), help_row(shown.stdout, flag)  # a flag takes no value
    assert "[default: the rank, scale 1]" in help_row(cli("finetune", "--help").stdout, "--alpha")


def test_download_and_models_help_show_examples(cli):
    for command, options in (("download", ("--revision", "--local-dir", "--dry-run", "--json")), ("models", ("--model-dir", "--json")), ("edit", ("--target-index", "--reference", "--mask"))):
        proc = cli(command, "--help")
        assert proc.returncode == 0 and "Examples" in proc.stdout
        assert all(option in proc.stdout for option in options), proc.stdout


def test_commands_are_listed_in_order(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    first_words = [line.strip("│ ").split(" ")[0] for line in cli("--help").stdout.splitlines() if line.startswith("│ ")]
    assert first_words == ["--version", "--help", "generate", "edit", "download", "models", "info", "finetune", "calibrate", "warmup", "lora"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize(
    ("args", "moment", "kept"),
    [
        (["generate", IMAGE, "-o", "out.mp4"], "fpgen.cli.report.Reporter.info", "a job that had started stays in <output>.job/"),  # "loading framepack ..."
        (["download", "--dry-run"], "fpgen.download.plan_download", "the files downloaded so far are kept"),
        (["finetune", "clips", "-o", "run"], "fpgen.training.config.TrainConfig.validate", "any checkpoint saved are kept"),
        (["info", "made.mp4"], "fpgen.metadata.read_description", "no file was left half-written"),
    ],
    ids=["generate", "download", "finetune", "info"],
)
def test_an_interrupt_at_any_moment_exits_130_saying_what_was_kept(args, moment, kept, signum, cli, monkeypatch, tmp_path):
    """Ctrl-C or SIGTERM outside a command's own stop handling (here: at its first step) still ends in 130 and one line."""

    def interrupted(*args, **kwargs):
        signal.raise_signal(signum)
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(moment, interrupted)
    handler = signal.getsignal(signal.SIGTERM)
    assert_one_line_error(cli(*args), ExitCode.INTERRUPTED, "interrupted", kept)
    assert signal.getsignal(signal.SIGTERM) is handler  # the caller's handler is back
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.job").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_models_load_exits_130(signum, hf_cache, tmp_path):
    """A real process, a real signal: sent once it has said it is loading, while it waits there (stop_probe.py)."""
    with fpgen_waiting("generate", IMAGE, *TINY_JOB, "-o", "out.mp4", wait_after="loading ", env=fpgen_env(hf_cache), cwd=tmp_path) as proc:
        read_until(proc.stderr, "loading framepack")
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
        rest = proc.stderr.read()
    assert "Traceback" not in rest and rest.strip().splitlines()[-1].startswith("error: interrupted; finished videos are kept")
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # nothing written, nothing left behind


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], ExitCode.OK),
        (["generate", "--help"], ExitCode.OK),
        (["--version"], ExitCode.OK),
        (["generate", "x.png", "--frobnicate"], ExitCode.USAGE),
        (["generate", "x.png", "--seconds", "five"], ExitCode.USAGE),
        (["generate", "missing.png"], ExitCode.USAGE),
        (["generate", str(IMAGE), "--seconds", "0"], ExitCode.USAGE),
        (["generate", str(IMAGE), "--crf", "99"], ExitCode.USAGE),
        (["generate", str(IMAGE), "--steps", "0"], ExitCode.USAGE),
    ],
)
def test_help_and_bad_arguments_never_import_torch(argv, code):
    """Start-up stays instant: torch and diffusers (seconds to import) load only for work that needs them."""
    script = f"import sys, fpgen.cli; code = fpgen.cli.run({argv!r}); print('\\nexit', code, sorted({{'torch', 'diffusers'}} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=fpgen_env(None), timeout=60)
    assert proc.stdout.splitlines()[-1] == f"exit {code} []", proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_quiet_process_prints_only_its_result(hf_cache, tmp_path):
    """-q: no loading bars of huggingface_hub, transformers or diffusers either (switched off before they load)."""
    proc = run_fpgen("generate", IMAGE, *TINY_JOB, "-o", "out.mp4", "-q", cache=hf_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith(f"{tmp_path / 'out.mp4'}  (37 frames")


def test_json_shows_no_loading_bars_where_the_libraries_are_loaded(cli, tiny_models):
    """--json in a process that has loaded the libraries already (this one): their bars are switched off all the same."""
    tiny_models("framepack")  # transformers, diffusers and huggingface_hub are loaded here, their bars on
    proc = cli("generate", IMAGE, *TINY_JOB, "-o", "out.mp4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert not [bar for bar in LOADING_BARS if bar in proc.stderr], proc.stderr
    assert json.loads(proc.stdout)["frames"] == 37


def test_a_real_process_exits_with_the_code_and_one_line(hf_cache, tmp_path):
    """The exit status a shell sees, and no traceback, for a bad option and for bad input with --json."""
    unknown = run_fpgen("generate", IMAGE, "--frobnicate", cache=hf_cache, cwd=tmp_path)
    assert_one_line_error(unknown, ExitCode.USAGE, "No such option: --frobnicate")
    missing = run_fpgen("generate", "missing.png", "--json", cache=hf_cache, cwd=tmp_path)
    assert_one_line_error(missing, ExitCode.USAGE, "image not found")
    assert json.loads(missing.stdout)["exit_code"] == ExitCode.USAGE
