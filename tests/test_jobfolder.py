"""A job folder is one process's at a time, holds only what fpgen made, and a damaged one is cut back to what is intact.

The jobs here are real: the tiny models make the sections, the real pipeline records them, ffmpeg
writes the segments; each test then does what a user or a second run does to the folder.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import GOLDEN
from enginejob import prepare

from fpgen.api import generate_video, resume_video
from fpgen.buckets import load_image
from fpgen.errors import ExitCode, InputError, Interrupted
from fpgen.jobfolder import JobCheck, JobFolder, check_job_paths, job_dir
from fpgen.engine import generate_frames
from fpgen.events import SectionDone
from fpgen.output import SegmentedMp4, partial_path
from fpgen.spec import JobSpec, Settings
from fpgen.tensorfile import load_tensors, save_tensors
from fpgen.video import read_mp4

IMAGE = GOLDEN / "input.png"
SETTINGS = Settings(prompt="a man walks", seconds=4.8, steps=2, size=(16, 16))  # 4 sections, the end made first
HOLD = "import sys; from fpgen.jobfolder import JobFolder\nwith JobFolder(sys.argv[1]).claim():\n    print('held', flush=True); sys.stdin.read()"


def interrupt_job(models, folder: JobFolder, sections: int) -> None:
    """Make a claimed job's first ``sections`` sections, then stop as Ctrl-C does: the folder and a partial video are left."""
    job, inputs = prepare(models, IMAGE, SETTINGS)
    folder.create(replace(job.spec, output=folder.output).options(), inputs, job.plan.order)
    sink = SegmentedMp4(folder.segments_dir)

    def listen(event) -> None:
        folder.record(event)
        if isinstance(event, SectionDone) and event.section.index + 1 == sections:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_frames(models, inputs, job.plan, job.settings, sink, listen)
    sink.write_partial(partial_path(folder.output))


@pytest.fixture(scope="module")
def stopped_job(tiny_models, tmp_path_factory):
    """A job stopped after 3 of its 4 sections (kept pristine: tests copy it), and the uninterrupted video's frames."""
    models = tiny_models("framepack")
    where = tmp_path_factory.mktemp("stopped")
    with JobFolder(job_dir(where / "cut.mp4")).claim() as folder:
        interrupt_job(models, folder, 3)
    reference = generate_video(models, IMAGE, where / "full.mp4", SETTINGS)
    return folder, read_mp4(reference.output)[0]


def copy_job(stopped: JobFolder, output) -> JobFolder:
    """The stopped job under another output (its job.json names the new one)."""
    folder = JobFolder(job_dir(output))
    shutil.copytree(stopped.path, folder.path)
    record = json.loads(folder.job_file.read_text())
    record["job"]["output"] = str(output)
    folder.job_file.write_text(json.dumps(record))
    return folder


def files_under(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_job_is_held_by_one_process_and_a_killed_holder_does_not_block(tmp_path):
    """Two runs on one output mixed their frames; now the second is refused at once, naming the first, and SIGKILL frees it."""
    output = tmp_path / "clip.mp4"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(job_dir(output))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"  # the child holds the lock now
        before = files_under(job_dir(output))
        with pytest.raises(InputError) as refused:
            with JobFolder(job_dir(output)).claim():
                pytest.fail("a second claim on a held job must not get in")
        assert refused.value.exit_code == ExitCode.USAGE == 2
        assert f"is in use by another fpgen run (pid {holder.pid} on {socket.gethostname()}, since " in str(refused.value)
        assert files_under(job_dir(output)) == before  # the refused run touched nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert json.loads(JobFolder(job_dir(output)).lock_file.read_text())["pid"] == holder.pid  # a stale holder note stays...
    with JobFolder(job_dir(output)).claim() as folder:  # ...but the lock went with the process
        assert json.loads(folder.lock_file.read_text())["pid"] != holder.pid
        folder.remove()
    assert not job_dir(output).exists()


def test_fpgen_refuses_and_never_deletes_what_it_did_not_make(stopped_job, tmp_path):
    """A user's ``.job`` folder and ``.partial.mp4`` are clashes found before any work; removal takes only fpgen's files."""
    stopped, _ = stopped_job
    user_folder = tmp_path / "keep.mp4.job"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # never written into, even with --overwrite
        with pytest.raises(InputError, match=r"keep\.mp4\.job exists and is not an fpgen job folder \(it holds notes\.txt") as refused:
            check_job_paths(tmp_path / "keep.mp4", overwrite)
        assert refused.value.exit_code == 2
    with pytest.raises(InputError, match="not an fpgen job folder"):
        JobFolder(user_folder).remove()
    assert files_under(user_folder) == {"notes.txt": b"mine"}

    (tmp_path / "vid.partial.mp4").write_bytes(b"my own video")
    with pytest.raises(InputError, match=r"vid\.partial\.mp4 exists and is not this job's partial video.*--overwrite"):
        with JobFolder(job_dir(tmp_path / "vid.mp4")).claim():
            pytest.fail("a clash must stop the claim")
    assert not job_dir(tmp_path / "vid.mp4").exists() and (tmp_path / "vid.partial.mp4").read_bytes() == b"my own video"

    folder = copy_job(stopped, tmp_path / "cut.mp4")
    (folder.segments_dir / "poster.png").write_bytes(b"user's")  # a file fpgen never writes, dropped into its folder
    with pytest.raises(InputError, match=r"holds segments/poster\.png"):
        folder.remove()
    assert len(files_under(folder.path)) == len(files_under(stopped.path)) + 1  # nothing deleted

    (folder.segments_dir / "poster.png").unlink()
    shutil.copy(partial_path(stopped.output), partial_path(folder.output))
    (tmp_path / "cut.partial.mp4.bak").write_bytes(b"a neighbour")
    with pytest.raises(InputError, match="not this job's partial video"):  # the copied lock notes the other output's partial
        check_job_paths(folder.output, False)
    with folder.claim(overwrite=True):  # consent: the job takes the partial video over
        check_job_paths(folder.output, False)
        folder.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.partial.mp4.bak", "keep.mp4.job", "vid.partial.mp4"]


@pytest.mark.parametrize(
    "damage, intact, reported",
    [
        ("delete the segment of section 2", 1, "lost its frames (00000109.mp4 is missing or damaged)"),
        ("cut the segment of section 3 short", 2, "lost its frames (00000073.mp4 is missing or damaged)"),
        ("swap in a shorter segment for section 3", 2, "lost its frames (00000073.mp4 is 35 frames, not 36)"),
        ("truncate the file of section 2", 1, "is damaged (0001.safetensors cannot be read)"),
        ("drop the segment note of section 3", 2, "is incomplete (0002.safetensors lacks its latents or does not say which segment it wrote)"),
    ],
)
def test_a_damaged_section_is_dropped_with_every_later_one_and_their_segments(stopped_job, tmp_path, damage, intact, reported):
    """A section whose file or segment is damaged is made again, and so is every section after it."""
    stopped, reference = stopped_job
    folder = copy_job(stopped, tmp_path / "cut.mp4")
    segments = sorted(folder.segments_dir.iterdir())
    assert [p.name for p in segments] == ["00000073.mp4", "00000109.mp4"]  # sections 3 and 2 (the 1st keeps its frames pending)
    if damage == "delete the segment of section 2":
        segments[1].unlink()
    elif damage == "cut the segment of section 3 short":
        segments[0].write_bytes(segments[0].read_bytes()[:-200])
    elif damage == "swap in a shorter segment for section 3":
        SegmentedMp4(tmp_path / "other").write(reference[73:108], 73)
        shutil.copy(tmp_path / "other" / "00000073.mp4", segments[0])
    elif damage == "truncate the file of section 2":
        section = folder.section_file(1)
        section.write_bytes(section.read_bytes()[:-64])
    else:  # as an fpgen before segment notes wrote it
        tensors, metadata = load_tensors(folder.section_file(2))
        save_tensors(folder.section_file(2), tensors, {"transformer_passes": metadata["transformer_passes"]})

    assert folder.repair() == JobCheck(intact, f"section {intact + 1} of {folder.path} {reported}")
    assert sorted(p.name for p in folder.sections_dir.iterdir()) == [f"{i:04d}.safetensors" for i in range(intact)]
    assert sorted(p.name for p in folder.segments_dir.iterdir()) == ["00000109.mp4"][: intact - 1]
    assert folder.check() == JobCheck(intact)


def test_a_job_with_a_deleted_segment_resumes_to_the_uninterrupted_video(stopped_job, tiny_models, tmp_path):
    """Deleted segments made ``--resume`` claim 289 frames in a 253-frame file; now what is lost is made again."""
    stopped, reference = stopped_job
    folder = copy_job(stopped, tmp_path / "cut.mp4")
    (folder.segments_dir / "00000109.mp4").unlink()
    with folder.claim():
        assert folder.repair().sections == 1
        video = resume_video(tiny_models("framepack"), folder.output)
    frames = read_mp4(folder.output)[0]
    assert video.resumed_sections == 1 and video.frames == len(frames) == len(reference) == 145
    assert np.array_equal(frames, reference)
    assert not folder.path.exists() and not partial_path(folder.output).exists()


@pytest.mark.parametrize("damage", ["broken job.json", "job.json without settings", "inputs missing", "inputs truncated"])
def test_a_job_that_cannot_go_on_says_what_is_damaged_and_to_start_over(stopped_job, tmp_path, damage):
    """No "unexpected, please report it" and no resume hint that cannot work: the damaged file, and --overwrite."""
    stopped, _ = stopped_job
    folder = copy_job(stopped, tmp_path / "cut.mp4")
    if damage == "broken job.json":
        folder.job_file.write_text(folder.job_file.read_text()[:40])
    elif damage == "job.json without settings":
        folder.job_file.write_text(json.dumps({"order": "inverted", "frame_offset": 0}))
    elif damage == "inputs missing":
        folder.inputs_file.unlink()
    else:
        folder.inputs_file.write_bytes(folder.inputs_file.read_bytes()[:1000])
    before = files_under(folder.path)
    with pytest.raises(InputError) as refused:
        folder.repair()
    damaged = folder.job_file if "job.json" in damage else folder.inputs_file
    assert refused.value.exit_code == 2 and str(refused.value).startswith(f"{damaged} is ")
    assert str(refused.value).endswith("start the job over: run the fpgen generate command that began it again, with --overwrite (--resume cannot mend this)")
    assert files_under(folder.path) == before  # nothing dropped: starting over is the user's call


def test_a_damaged_extension_keeps_the_given_video_and_redoes_its_own_sections(tiny_models, tmp_path):
    """An extended video's job starts with a segment of the given frames: it is kept, or (lost) the job is started over."""
    models = tiny_models("framepack-f1")  # the forward order: the sections' segments follow the given frames
    given = generate_video(models, IMAGE, tmp_path / "given.mp4", Settings(prompt="a man walks", seconds=1.2, steps=1, size=(16, 16))).output
    settings = Settings(prompt="he sits down", seconds=3.6, steps=1, size=(16, 16))
    reference = read_mp4(generate_video(models, None, tmp_path / "full.mp4", settings, extend=given).output)[0]

    def stop_after_two(event) -> None:
        if isinstance(event, SectionDone) and event.section.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        generate_video(models, None, tmp_path / "cut.mp4", settings, extend=given, on_event=stop_after_two)
    folder = JobFolder(job_dir(tmp_path / "cut.mp4"))
    assert folder.check() == JobCheck(2)
    headless = copy_job(folder, tmp_path / "headless.mp4")
    (headless.segments_dir / "00000000.mp4").unlink()
    with pytest.raises(InputError, match=r"00000000\.mp4 \(the extended video's own frames\) is missing or damaged; start the job over: run"):
        headless.check()

    metadata = load_tensors(folder.section_file(1))[1]
    second = folder.segments_dir / f"{int(metadata['first_frame']) + json.loads(folder.job_file.read_text())['frame_offset']:08d}.mp4"
    kept = sorted(p.name for p in folder.segments_dir.iterdir() if p != second)
    assert len(kept) == 2 and kept[0] == "00000000.mp4"  # the given frames, and the first section's
    second.unlink()
    assert folder.repair() == JobCheck(1, f"section 2 of {folder.path} lost its frames ({second.name} is missing or damaged)")
    assert sorted(p.name for p in folder.segments_dir.iterdir()) == kept
    video = resume_video(models, tmp_path / "cut.mp4")
    frames = read_mp4(video.output)[0]
    assert video.resumed_sections == 1 and video.frames == len(frames) == len(reference) == 37 + 108
    assert np.array_equal(frames, reference)
