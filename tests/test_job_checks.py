"""Everything a job writes is checked before any model loads (issue 12: #6, #9, #10, #11, #13)."""

from __future__ import annotations

import json

import pytest
from conftest import GOLDEN
from helpers import assert_one_line_error

from fpgen.errors import ExitCode

IMAGE = GOLDEN / "input.png"
TINY = ["--size", "16x16", "--steps", "1", "--seconds", "1", "--device", "cpu"]


def test_an_untrusted_jobs_file_writes_only_in_its_folder_and_overwrites_only_when_allowed(cli, tmp_path):
    """#6: a shared jobs file tried to replace files elsewhere; each line is refused, the victim's files stay."""
    victim, jobs = tmp_path / "victim", tmp_path / "jobs"
    victim.mkdir(), jobs.mkdir()
    (victim / "package.mp4").write_bytes(b"mine")
    (victim / "notes.txt").write_text("keep")
    (jobs / "face.png").write_bytes(IMAGE.read_bytes())
    lines = [
        {"image": "face.png", "output": "../victim/package.mp4", "overwrite": True, "save_latents": "../victim/notes.txt"},
        {"image": "face.png", "output": "../victim/new.mp4"},
        {"image": "face.png", "output": "ok.mp4", "save_latents": "ok.txt"},
    ]
    (jobs / "jobs.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    for extra in ([], ["--overwrite"]):
        ran = cli("generate", "--jobs", jobs / "jobs.jsonl", *TINY, "--json", *extra)
        summary = {job["line"]: job for job in json.loads(ran.stdout)["jobs"]}
        assert ran.returncode == ExitCode.FAILED and all(job["status"] == "failed" for job in summary.values())
        assert "outside the jobs file's folder" in summary[2]["error"] and "--trust-jobs" in summary[2]["error"]
        assert "must end in .safetensors" in summary[3]["error"]
        assert ("asks to overwrite" in summary[1]["error"]) == (not extra)
    assert (victim / "package.mp4").read_bytes() == b"mine" and (victim / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt", "package.mp4"]


@pytest.mark.parametrize(
    ("latents", "needle"),
    [("out.json", "must end in .safetensors"), ("out.mp4.job/l.safetensors", "inside the job folder")],
)
def test_save_latents_never_collides_with_another_path_of_the_job(cli, tmp_path, latents, needle):
    """#9: --save-latents equal to -o, to the sidecar, or inside the job folder lost the latents silently."""
    ran = cli("generate", IMAGE, "-o", "out.mp4", "--save-latents", latents, *TINY)
    assert_one_line_error(ran, ExitCode.USAGE, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds", ["1e9", "100000"])
def test_a_length_beyond_the_limit_is_refused_at_once(cli, seconds):
    """#10: --seconds 1e9 hung, memory growing, building per-section lists."""
    ran = cli("generate", IMAGE, "--seconds", seconds, "--device", "cpu")
    assert_one_line_error(ran, ExitCode.USAGE, f"--seconds {float(seconds):g} is more than 10000 sections")


def test_an_impossible_size_is_refused_before_models_load(cli):
    """#11: --size 16000x16000 failed after loading the models, as 'unexpected'."""
    ran = cli("generate", IMAGE, "--size", "16000x16000", "--device", "cpu")
    assert_one_line_error(ran, ExitCode.USAGE, "larger than 4096x4096")
    assert "Loading" not in ran.stderr


def test_an_output_that_is_a_folder_is_refused_before_work_even_with_overwrite(cli, tmp_path):
    """#13: -o naming a directory with --overwrite was found after the models loaded and reported as a bug."""
    (tmp_path / "clip.mp4").mkdir()
    ran = cli("generate", IMAGE, "-o", "clip.mp4", "--overwrite", *TINY)
    assert_one_line_error(ran, ExitCode.USAGE, "is a folder")
    assert "Loading" not in ran.stderr and (tmp_path / "clip.mp4").is_dir()
