"""The job options on the command line: --from, fpgen info, and one-line errors for the ways they can be misused."""

from __future__ import annotations

import json

import pytest
from conftest import GOLDEN, moving_gradient
from helpers import assert_one_line_error

from fpgen.errors import ExitCode
from fpgen.metadata import describe_video, mp4_tags
from fpgen.video import concat_mp4, write_mp4

IMAGE = GOLDEN / "input.png"


def described_clip(path, job: dict):
    """A short clip carrying fpgen metadata, as a finished job leaves it."""
    write_mp4(path.with_suffix(".raw.mp4"), moving_gradient(37, 16, 16))
    concat_mp4([path.with_suffix(".raw.mp4")], path, mp4_tags(describe_video(job, "inverted", 37, 16, 16, 1, [1], 1.0)))
    return path


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ([], ["missing IMAGE", "--extend", "--resume"]),
        (["--resume", "nowhere.mp4"], ["no unfinished job"]),
        (["--resume", "x.mp4", "--seed", "3"], ["--resume continues a job with its saved settings", "--seed"]),
        (["--resume", "x.mp4", "--jobs", "j.jsonl"], ["cannot be combined"]),
        ([IMAGE, "--prompt", "0s: walks in | sits down"], ["has no time"]),
        ([IMAGE, "--prompt", "a", "--prompts-file", "p.txt"], ["--prompt and --prompts-file cannot be combined"]),
        (["--from", "missing.mp4"], ["video not found"]),
        (["--jobs", "missing.jsonl"], ["cannot read jobs file"]),
        ([IMAGE, "--gpus", "2"], ["--gpus 2", "GPU(s) here"]),
        (["--jobs", "j.jsonl", "--gpus", "0"], ["--gpus", "GPU(s) here"]),
        (["--jobs", "j.jsonl", "--gpus", "99"], ["--gpus 99", "GPU(s) here"]),
        (["--jobs", "j.jsonl", "--device", "cpu", "--gpus", "all"], ["number of CPU workers"]),
    ],
)
def test_misuse_is_one_line(args, needles, cli, tmp_path):
    (tmp_path / "p.txt").write_text("0s: walks\n")
    assert_one_line_error(cli("generate", *args), ExitCode.USAGE, *needles)


def test_nothing_the_user_has_is_overwritten(cli, tmp_path):
    (tmp_path / "keep.safetensors").write_bytes(b"mine")
    (tmp_path / "v.json").write_text('{"my": "notes"}')
    assert_one_line_error(cli("generate", IMAGE, "-o", "w.mp4", "--save-latents", "keep.safetensors"), ExitCode.USAGE, "keep.safetensors already exists")
    assert_one_line_error(cli("generate", IMAGE, "-o", "v.mp4"), ExitCode.USAGE, "v.json exists and is not fpgen's metadata")
    assert (tmp_path / "keep.safetensors").read_bytes() == b"mine" and (tmp_path / "v.json").read_text() == '{"my": "notes"}'


def test_extend_needs_a_section_of_video(cli, tmp_path):
    write_mp4(tmp_path / "short.mp4", moving_gradient(20, 16, 16))
    assert_one_line_error(cli("generate", "--extend", "short.mp4", "--size", "16x16", "-o", "out.mp4"), ExitCode.USAGE, "has 20 frames", "at least 37")


@pytest.fixture
def made(tmp_path) -> dict:
    """made.mp4 in tmp_path, carrying the metadata of the job returned (whose start picture is gone)."""
    job = {"image": str(tmp_path / "gone.png"), "prompt": "a man walks", "seconds": 1.2, "steps": 1, "size": "16x16", "seed": 4, "device": "cpu", "save_latents": str(tmp_path / "l.safetensors")}
    described_clip(tmp_path / "made.mp4", job)
    return job


def test_info_shows_the_recorded_job(made, cli, tmp_path):
    write_mp4(tmp_path / "plain.mp4", moving_gradient(5, 16, 16))
    assert_one_line_error(cli("info", "plain.mp4"), ExitCode.USAGE, "has no fpgen metadata")
    shown = cli("info", "made.mp4")
    assert shown.returncode == 0 and "a man walks" in shown.stdout and "16x16" in shown.stdout
    assert json.loads(cli("info", "made.mp4", "--json").stdout)["job"] == made


def test_from_needs_the_recorded_picture_or_a_new_one(made, cli):
    assert_one_line_error(cli("generate", "--from", "made.mp4"), ExitCode.USAGE, "recorded start picture", "gone.png", "IMAGE")


@pytest.mark.slow
def test_from_runs_the_recorded_job_with_the_options_given(made, cli, tmp_path):
    (tmp_path / "p.txt").write_text("0s: a man walks\n0.6s: he sits\n")
    proc = cli("generate", "--from", "made.mp4", IMAGE, "--prompts-file", "p.txt", "--seed", "9", "-o", "again.mp4", "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(cli("info", "again.mp4", "--json").stdout)
    assert again["job"]["seed"] == 9 and again["job"]["prompt"] == "0s: a man walks\n0.6s: he sits"  # given on the command line
    assert (again["job"]["steps"], again["job"]["size"], again["job"]["seconds"]) == (1, "16x16", 1.2)  # recorded
    assert again["job"]["save_latents"] is None and not (tmp_path / "l.safetensors").exists()  # never written over by a re-run
    sidecar = json.loads((tmp_path / "again.json").read_text())
    assert sidecar["job"] == again["job"] and again["video"]["frames"] == 37
