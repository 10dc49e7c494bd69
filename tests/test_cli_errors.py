"""Bad input ends with one line on stderr, a meaningful exit code, and no traceback; nothing is overwritten.

Run in this process through ``fpgen.cli.run``, the console script's own entry (test_cli.py runs real processes).
"""

from __future__ import annotations

import json

import pytest
from conftest import GOLDEN
from helpers import assert_one_line_error, offline_hub

from fpgen.errors import ExitCode

IMAGE = GOLDEN / "input.png"


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["missing.png"], ExitCode.USAGE, ["image not found", "missing.png"]),
        (["--seconds", "0"], ExitCode.USAGE, ["--seconds must be positive"]),
        (["--seconds", "nan"], ExitCode.USAGE, ["--seconds must be positive"]),
        (["--steps", "-3"], ExitCode.USAGE, ["--steps must be at least 1"]),
        (["--size", "100x100"], ExitCode.USAGE, ["multiples of 16"]),
        (["--size", "big"], ExitCode.USAGE, ["is not HxW"]),
        (["--model", "no-such-model"], ExitCode.USAGE, ["unknown model", "framepack-f1"]),
        (["--crf", "70"], ExitCode.USAGE, ["--crf must be between 0 and 51"]),
        (["--device", "tpu"], ExitCode.USAGE, ["--device"]),
        (["--dtype", "int8"], ExitCode.USAGE, ["unknown --dtype"]),
        (["--window", "0"], ExitCode.USAGE, ["--window"]),
        (["--cfg", "0.5"], ExitCode.USAGE, ["--cfg must be at least 1"]),
    ],
)
def test_bad_options(args, code, needles, cli, tmp_path):
    image = [] if args[0].endswith(".png") else [IMAGE]
    assert_one_line_error(cli("generate", *image, *args, "-o", "out.mp4"), code, *needles)
    assert not (tmp_path / "out.mp4").exists()


def test_folder_and_non_image(cli, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    assert_one_line_error(cli("generate", "notes.png"), ExitCode.USAGE, "cannot read", "notes.png")
    assert_one_line_error(cli("generate", tmp_path), ExitCode.USAGE, "is a folder")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["generate", IMAGE, "--frobnicate"], ["No such option: --frobnicate", "see fpgen generate --help"]),
        (["generate", IMAGE, "--seconds", "five"], ["Invalid value for '--seconds'", "see fpgen generate --help"]),
        (["finetune"], ["Missing argument", "see fpgen finetune --help"]),
        (["lora", "convert", "a.safetensors"], ["Missing argument", "see fpgen lora convert --help"]),
        (["genrate"], ["No such command 'genrate'", "see fpgen --help"]),
    ],
)
def test_usage_errors_are_one_line_too(args, needles, cli):
    assert_one_line_error(cli(*args), ExitCode.USAGE, *needles)


def test_json_failures_are_a_document_on_stdout(cli):
    """With --json a failure is also ``{"error", "exit_code"}`` on stdout, for scripts that read only stdout."""
    for args in (["generate", "missing.png", "--json"], ["generate", IMAGE, "--json", "--frobnicate"], ["info", "none.mp4", "--json"]):
        proc = cli(*args)
        assert_one_line_error(proc, ExitCode.USAGE)
        assert json.loads(proc.stdout) == {"error": proc.stderr.strip().removeprefix("error: "), "exit_code": ExitCode.USAGE}


def test_weights_missing_while_offline(cli, tmp_path):
    (tmp_path / "empty-cache").mkdir()
    with offline_hub(tmp_path / "empty-cache"):
        proc = cli("generate", IMAGE, "-o", "x.mp4")
    assert_one_line_error(proc, ExitCode.MODEL_MISSING, "framepack", "lllyasviel/FramePackI2V_HY", "fpgen download framepack")


def test_existing_output_is_never_overwritten(cli, tmp_path):
    (tmp_path / "mine.mp4").write_bytes(b"precious")
    assert_one_line_error(cli("generate", IMAGE, "-o", "mine.mp4"), ExitCode.USAGE, "already exists", "--overwrite")
    assert (tmp_path / "mine.mp4").read_bytes() == b"precious"


def test_an_unforeseen_error_is_one_line_asking_for_a_report(cli, monkeypatch):
    def broken(path):
        raise RuntimeError("the disk melted\nsecond line")

    monkeypatch.setattr("fpgen.metadata.read_description", broken)
    assert_one_line_error(cli("info", "a.mp4"), ExitCode.FAILED, "unexpected RuntimeError: the disk melted", "FPGEN_DEBUG=1")
    monkeypatch.setenv("FPGEN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the disk melted"):
        cli("info", "a.mp4")


def test_a_json_batch_summary_stays_the_only_document(cli, tmp_path):
    """A batch's summary on stdout already names each failure: its exit code adds no second JSON document."""
    (tmp_path / "jobs.jsonl").write_text('{"image": "missing.png", "output": "a.mp4"}\n')
    proc = cli("generate", "--jobs", "jobs.jsonl", "--json")
    assert_one_line_error(proc, ExitCode.FAILED, "1 of 1 job(s) failed")
    summary = json.loads(proc.stdout)
    assert summary["failed"] == 1 and summary["jobs"][0]["exit_code"] == ExitCode.USAGE
