"""MP4 in and out through the ffmpeg that imageio-ffmpeg ships: libx264, yuv420p, CRF, the family's frame rate (30 fps by default).

Nothing the user chose passes through ffmpeg's own syntax: every path goes to ffmpeg as ``file:``
and an absolute path (so ``a:b.mp4`` is not read as a protocol), the concat list names links with
plain names (its quoting cannot hold a newline), and tags go through an ffmetadata file (the command
line holds ~128 kB). ffmpeg's failures are read from its exit status and stderr: a full disk is
``DiskFullError`` (exit 5) wherever it happens, never an "unexpected" error or a silent broken file.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from fpgen.errors import DiskFullError, FpgenError, InputError
from fpgen.geometry import FPS

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as ffmpeg prints it
FFMETADATA_SPECIAL = re.compile(r"([=;#\\\n\r])")  # what ffmpeg's ffmetadata format escapes with a backslash


def ffmpeg_url(path: str | Path) -> str:
    """``path`` as ffmpeg must read it: a ``file:`` URL, so no part of the name is taken for a protocol."""
    return "file:" + os.path.abspath(path)


def disk_full(path: str | Path) -> DiskFullError:
    return DiskFullError(f"the disk is full writing {path}", "free some space and run the command again")


@contextlib.contextmanager
def disk_full_as_error(path: str | Path):
    """ENOSPC while writing ``path`` becomes DiskFullError (exit 5), not an unexpected OSError."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise disk_full(path) from error


@contextlib.contextmanager
def written_aside(path: Path):
    """A new file next to ``path`` to write; it replaces ``path`` only once complete and never stays behind (a full disk leaves no half file)."""
    with disk_full_as_error(path):
        aside = Path(path).with_name(f".{Path(path).name[:200]}.{secrets.token_hex(6)}.fpgen-tmp")  # within NAME_MAX however long the name
        aside.open("x").close()  # a new name, created with the user's umask (mkstemp's files are private to the owner)
        try:
            yield aside
            os.replace(aside, path)
        finally:
            aside.unlink(missing_ok=True)


def _ffmpeg_error(path: Path, returncode: int, stderr: bytes) -> FpgenError:
    """What a failed ffmpeg run means: ffmpeg exits with -errno (ENOSPC: 228) and says why on stderr."""
    text = stderr.decode(errors="replace").strip()
    if NO_SPACE in text or returncode == (-errno.ENOSPC) & 0xFF:
        return disk_full(path)
    return FpgenError(f"ffmpeg could not write {path}: {text.splitlines()[-1] if text else f'exit status {returncode}'}")


def _ffmpeg(*arguments: str) -> list[str]:
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *arguments]


def _run_ffmpeg(arguments: list[str], output: Path) -> None:
    done = subprocess.run(_ffmpeg(*arguments), capture_output=True)
    if done.returncode != 0:
        raise _ffmpeg_error(output, done.returncode, done.stderr)


def write_mp4(path: Path, frames: Iterable[np.ndarray], crf: int = 16, fps: int = FPS) -> int:
    """Encode (H, W, 3) uint8 frames as H.264, streaming them (the file is complete only when this returns); returns the count."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    command = _ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(int(crf)), "-preset", "medium", "-f", "mp4", ffmpeg_url(path),
    )  # fmt: skip
    ffmpeg = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(ffmpeg.stderr.read()))  # so ffmpeg never blocks on a full pipe
    reader.start()
    count = 0
    try:
        for frame in itertools.chain([first], frames):
            ffmpeg.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8))
            count += 1
    except BrokenPipeError:
        pass  # ffmpeg stopped early: its exit status says why
    except BaseException:
        ffmpeg.kill()  # the frames failed (or Ctrl-C): no file to finish
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            ffmpeg.stdin.close()  # ffmpeg finishes the file; where it stopped, the unsent rest is dropped
        returncode = ffmpeg.wait()
        reader.join()
        ffmpeg.stderr.close()
    if returncode != 0:
        raise _ffmpeg_error(path, returncode, stderr[0])
    return count


def _escape_ffmetadata(text: str) -> str:
    """``=``, ``;``, ``#``, ``\\`` and line ends escaped with a backslash; NUL, which no tag can hold, dropped."""
    return FFMETADATA_SPECIAL.sub(r"\\\1", str(text).replace("\0", ""))


def ffmetadata(tags: dict[str, str]) -> str:
    """Tags as an ffmetadata file, the way to give ffmpeg text of any length and content.

    ffmpeg's reader takes a newline after an escaped backslash for an escaped newline, so a value
    that ends in a backslash can only be the last, with no newline after it: one such value fits.
    """
    entries = sorted((f"{_escape_ffmetadata(key)}={_escape_ffmetadata(value)}" for key, value in tags.items()), key=lambda entry: entry.endswith("\\"))
    if sum(entry.endswith("\\") for entry in entries) > 1:
        raise ValueError("ffmetadata holds only one tag value that ends in a backslash")
    return ";FFMETADATA1\n" + "\n".join(entries)


def concat_mp4(parts: list[Path], output: Path, metadata: dict[str, str] | None = None) -> None:
    """Join MP4 segments made with the same settings without re-encoding them; ``metadata`` becomes the container's tags.

    The concat list names links to the parts by number, in a private folder, so any file name works.
    """
    with disk_full_as_error(output), tempfile.TemporaryDirectory(prefix="fpgen-concat-") as folder:
        folder = Path(folder)
        for number, part in enumerate(parts):
            (folder / f"{number:08d}.mp4").symlink_to(Path(part).absolute())
        (folder / "parts.txt").write_text("".join(f"file '{number:08d}.mp4'\n" for number in range(len(parts))))
        inputs = ["-f", "concat", "-i", ffmpeg_url(folder / "parts.txt"), *_tags_input(folder, metadata)]
        _run_ffmpeg([*inputs, "-map", "0", "-map_metadata", "1", "-c", "copy", "-movflags", "+faststart", "-f", "mp4", ffmpeg_url(output)], output)


def _tags_input(folder: Path, metadata: dict[str, str] | None) -> list[str]:
    """ffmpeg's second input: ``metadata`` as an ffmetadata file in ``folder``, for ``-map_metadata 1``."""
    (folder / "tags.txt").write_text(ffmetadata(metadata or {}), encoding="utf-8")
    return ["-f", "ffmetadata", "-i", ffmpeg_url(folder / "tags.txt")]


def interpolate_mp4(source: Path, output: Path, native: int, fps: int, crf: int = 16, metadata: dict[str, str] | None = None) -> None:
    """Re-encode ``source`` (frames at ``native`` fps) at ``fps`` by motion-compensated interpolation (ffmpeg's ``minterpolate``, ``mci``).

    Frame ``n`` is first put at exactly ``n/native`` s (joined segments carry rounding in their
    timestamps) and the last frame held one frame longer (``tpad``): minterpolate makes frames only
    between two inputs, and without it the video would lose its end (a loop's closing frame).
    """
    with disk_full_as_error(output), tempfile.TemporaryDirectory(prefix="fpgen-interpolate-") as folder:
        filters = f"setpts=N/{int(native)}/TB,tpad=stop_mode=clone:stop=1,minterpolate=fps={int(fps)}:mi_mode=mci"
        arguments = ["-i", ffmpeg_url(source), *_tags_input(Path(folder), metadata), "-map", "0:v", "-map_metadata", "1", "-vf", filters]
        encode = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(int(crf)), "-preset", "medium", "-movflags", "+faststart", "-f", "mp4"]
        _run_ffmpeg([*arguments, *encode, ffmpeg_url(output)], output)


def iter_mp4(path: Path) -> tuple[dict, Iterator[np.ndarray]]:
    """A video's properties (size, fps, nframes estimate) and an iterator over its frames as (H, W, 3) uint8."""
    if not Path(path).is_file():
        raise InputError(f"video not found: {path}", "check the path")
    reader = imageio_ffmpeg.read_frames(ffmpeg_url(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise InputError(f"cannot read {path} as a video ({type(exc).__name__})", "pass an MP4 (or another format ffmpeg reads)") from None
    width, height = meta["size"]
    return meta, (np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader)


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a video as (T, H, W, 3) uint8, and its frame rate."""
    meta, frames = iter_mp4(path)
    return np.stack(list(frames)), float(meta["fps"])


def parse_ffmetadata(text: str) -> dict[str, str]:
    """The global tags of an ffmetadata dump: an entry ends at an unescaped newline, a backslash escapes the next character."""
    tags = {}
    for entry in re.findall(r"(?:\\.|[^\\\n])+", text, flags=re.S):
        if entry.startswith("["):
            break  # stream and chapter sections follow the global tags
        match = re.fullmatch(r"((?:\\.|[^\\=])*)=(.*)", entry, flags=re.S)
        if match and not entry.startswith((";", "#")):
            key, value = (re.sub(r"\\(.)", r"\1", part, flags=re.S) for part in match.groups())
            tags[key] = value
    return tags


def read_tags(path: Path) -> dict[str, str]:
    """The container's metadata tags (ffmpeg's ffmetadata dump, unescaped)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", ffmpeg_url(path), "-f", "ffmetadata", "-"]
    dump = subprocess.run(command, capture_output=True)
    stderr = dump.stderr.decode(errors="replace").strip()
    if dump.returncode != 0:
        raise InputError(f"cannot read {path} as a video", stderr.splitlines()[-1] if stderr else "is it an MP4?")
    return parse_ffmetadata(dump.stdout.decode(errors="replace"))
