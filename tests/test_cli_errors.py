"""Bad input ends with one line on stderr, a meaningful exit code, and no traceback; nothing is overwritten."""

from __future__ import annotations

import pytest
from conftest import GOLDEN, run_fpgen

from fpgen.errors import ExitCode

IMAGE = GOLDEN / "input.png"


def assert_one_line_error(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


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
def test_bad_options(args, code, needles, hf_cache, tmp_path):
    image = [] if args[0].endswith(".png") else [IMAGE]
    proc = run_fpgen("generate", *image, *args, "-o", tmp_path / "out.mp4", cache=hf_cache, cwd=tmp_path)
    assert_one_line_error(proc, code, *needles)
    assert not (tmp_path / "out.mp4").exists()


def test_folder_and_non_image(hf_cache, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert_one_line_error(run_fpgen("generate", text, cache=hf_cache, cwd=tmp_path), ExitCode.USAGE, "cannot read", "notes.png")
    assert_one_line_error(run_fpgen("generate", tmp_path, cache=hf_cache, cwd=tmp_path), ExitCode.USAGE, "is a folder")


def test_unknown_option_is_a_usage_error(hf_cache, tmp_path):
    proc = run_fpgen("generate", IMAGE, "--frobnicate", cache=hf_cache, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "frobnicate" in proc.stderr


def test_weights_missing_while_offline(tmp_path):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    proc = run_fpgen("generate", IMAGE, "-o", tmp_path / "x.mp4", cache=empty, cwd=tmp_path)
    assert_one_line_error(proc, ExitCode.MODEL_MISSING, "framepack", "lllyasviel/FramePackI2V_HY", "fpgen download framepack")


def test_existing_output_is_never_overwritten(hf_cache, tmp_path):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"precious")
    proc = run_fpgen("generate", IMAGE, "-o", out, cache=hf_cache, cwd=tmp_path)
    assert_one_line_error(proc, ExitCode.USAGE, "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"


def test_version_and_help():
    version = run_fpgen("--version")
    assert version.returncode == 0 and version.stdout.startswith("fpgen ")
    help_text = run_fpgen("generate", "--help")
    assert help_text.returncode == 0
    for option in ("--prompt", "--seconds", "--teacache", "--size", "--save-latents", "Examples"):
        assert option in help_text.stdout
