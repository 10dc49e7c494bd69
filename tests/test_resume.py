"""Jobs survive: a real generation killed with a real signal, resumed, gives exactly the uninterrupted video."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GOLDEN, fpgen_env, fpgen_waiting
from helpers import read_until
from safetensors.torch import load_file

from fpgen.api import generate_video, resume_video
from fpgen.errors import ExitCode, OutOfMemoryError
from fpgen.spec import Settings
from fpgen.events import SectionDone
from fpgen.video import read_mp4

IMAGE = GOLDEN / "input.png"
JOB = ["--prompt", "a man walks", "--seconds", "4.8", "--steps", "2", "--size", "16x16", "--device", "cpu"]  # 4 sections
SETTINGS = Settings(prompt="a man walks", seconds=4.8, steps=2, size=(16, 16))


@pytest.mark.slow
def test_killed_job_resumes_to_the_identical_video(hf_cache, tiny_models, tmp_path):
    args = ["generate", IMAGE, *JOB, "-o", "cut.mp4", "--save-latents", "cut.safetensors", "--preview"]
    sections = tmp_path / "cut.mp4.job" / "sections"
    job = fpgen_waiting(*args, wait_after="section 2/4 done", env=fpgen_env(hf_cache), cwd=tmp_path)  # waits there for the signal
    read = read_until(job.stderr, "section 2/4 done")
    job.send_signal(signal.SIGTERM)
    _, rest = job.communicate(timeout=120)
    stderr = "".join(read) + rest
    assert job.returncode == ExitCode.INTERRUPTED, stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: interrupted (") and "--resume" in message and "Traceback" not in stderr
    done = len(list(sections.glob("*.safetensors")))
    assert 2 <= done < 4 and not (tmp_path / "cut.mp4").exists()
    partial, _ = read_mp4(tmp_path / "cut.partial.mp4")  # a playable video of what was made: the end, made first
    assert len(partial) == 36 * (done - 1)  # the frames of the last section made still wait for the next one's cross-fade

    other = subprocess.run([sys.executable, "-m", "fpgen", "generate", IMAGE, *JOB, "--seed", "1", "-o", "cut.mp4"], capture_output=True, text=True, cwd=tmp_path, env=fpgen_env(hf_cache))
    assert other.returncode == ExitCode.USAGE and "unfinished job for this output with other settings" in other.stderr  # never clobbered

    resumed = subprocess.run([sys.executable, "-m", "fpgen", "generate", "--resume", "cut.mp4", "--json"], capture_output=True, text=True, cwd=tmp_path, env=fpgen_env(hf_cache), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_sections"] == done

    reference = generate_video(tiny_models("framepack"), IMAGE, tmp_path / "full.mp4", SETTINGS)  # the same job, uninterrupted
    assert torch.equal(load_file(tmp_path / "cut.safetensors")["latents"], reference.result.latents)
    full, cut = read_mp4(tmp_path / "full.mp4")[0], read_mp4(tmp_path / "cut.mp4")[0]
    assert len(full) == 145 and np.array_equal(cut, full)
    assert np.array_equal(partial, full[-len(partial) :])
    assert not (tmp_path / "cut.mp4.job").exists() and not (tmp_path / "cut.partial.mp4").exists()


def test_out_of_memory_leaves_a_resumable_job(tiny_models, tmp_path):
    models = tiny_models("framepack-f1")  # the forward order: the overlap rebuilt on resume is the end of the last decode
    settings = Settings(prompt="a man walks", seconds=2.4, steps=2, size=(16, 16))
    reference = generate_video(models, IMAGE, tmp_path / "full.mp4", settings)

    def run_out_of_memory(event):
        if isinstance(event, SectionDone) and event.section.index == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(OutOfMemoryError) as stopped:
        generate_video(models, IMAGE, tmp_path / "cut.mp4", settings, on_event=run_out_of_memory)
    assert stopped.value.exit_code == ExitCode.OUT_OF_MEMORY == 6
    assert "1/2 sections done" in str(stopped.value) and "--resume" in str(stopped.value)
    assert len(read_mp4(tmp_path / "cut.partial.mp4")[0]) == 37 - 33  # forward: the frames no later section changes

    video = resume_video(models, tmp_path / "cut.mp4")
    assert video.resumed_sections == 1
    assert torch.equal(video.result.latents, reference.result.latents)
    assert np.array_equal(read_mp4(video.output)[0], read_mp4(reference.output)[0])


def test_a_full_disk_at_the_last_segment_leaves_a_resumable_job(tiny_models, tmp_path, monkeypatch):
    """Segments are encoded in the background; the last one still counts as the job's own: a full disk there is the
    job's disk-full stop (exit 5, the partial video, --resume), and the resumed video equals the uninterrupted one."""
    import errno

    from fpgen import output
    from fpgen.errors import DiskFullError

    models = tiny_models("framepack-f1")
    settings = Settings(prompt="a man walks", seconds=2.4, steps=2, size=(16, 16))
    reference = generate_video(models, IMAGE, tmp_path / "full.mp4", settings)
    written, write_mp4 = [], output.write_mp4

    def full_at_the_second(path, *args, **kwargs):
        written.append(path.name)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_mp4(path, *args, **kwargs)

    monkeypatch.setattr(output, "write_mp4", full_at_the_second)
    with pytest.raises(DiskFullError) as stopped:
        generate_video(models, IMAGE, tmp_path / "cut.mp4", settings)
    assert stopped.value.exit_code == ExitCode.DISK_FULL and "2/2 sections done" in str(stopped.value) and "--resume" in str(stopped.value)
    assert len(read_mp4(tmp_path / "cut.partial.mp4")[0]) == 37 - 33  # the first section's segment, finished before the stop
    monkeypatch.undo()
    video = resume_video(models, tmp_path / "cut.mp4")
    assert video.resumed_sections == 1  # the section whose segment never made it is made again
    assert np.array_equal(read_mp4(video.output)[0], read_mp4(reference.output)[0])
