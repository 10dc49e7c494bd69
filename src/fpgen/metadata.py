"""A finished video's description: written into the MP4 (ffmpeg tags) and a JSON sidecar, read back by ``fpgen info``.

The MP4's ``comment`` tag holds the whole description as JSON (its ``title`` the prompt, for
players); the sidecar ``<name>.json`` holds the same, for tools that do not read MP4 tags and in
case a later re-encode drops them. ``job`` is the job's options exactly as ``fpgen generate`` takes
them, so ``fpgen generate --from VIDEO`` can run it again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fpgen._version import __version__
from fpgen.errors import InputError
from fpgen.geometry import FPS
from fpgen.video import read_tags, written_aside

TAG = "comment"


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")


def describe_video(
    options: dict, order: str, frames: int, height: int, width: int, sections: int, passes: list[int], elapsed: float, fps: int = FPS, color_match: bool = False
) -> dict:
    """``fps`` and ``color_match``: the output's rate and whether its colours were matched (as decided, not as asked)."""
    video = {"frames": frames, "width": width, "height": height, "fps": fps, "seconds": round(frames / fps, 3), "sections": sections, "order": order, "color_match": color_match}
    return {
        "fpgen": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "job": options,
        "video": video,
        "transformer_passes": passes,
        "elapsed_s": round(elapsed, 2),
    }


def mp4_tags(description: dict) -> dict[str, str]:
    prompt = " | ".join(line.strip() for line in str(description["job"].get("prompt", "")).splitlines() if line.strip())
    return {TAG: json.dumps(description, separators=(",", ":")), **({"title": prompt} if prompt else {})}


def is_description(data: object) -> bool:
    return isinstance(data, dict) and "fpgen" in data and isinstance(data.get("job"), dict)


def write_sidecar(video: Path, description: dict) -> Path:
    """Write the sidecar aside and rename it: a full disk leaves the old one (or none), never half a JSON file."""
    path = sidecar_path(video)
    with written_aside(path) as aside:
        aside.write_text(json.dumps(description, indent=1) + "\n")
    return path


def sidecar_is_ours(video: Path) -> bool:
    """True when there is no sidecar yet, or it is one fpgen wrote (and may replace)."""
    path = sidecar_path(video)
    try:
        return not path.exists() or is_description(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def read_description(video: Path) -> dict:
    """The description of a video fpgen made: from its MP4 tags, else from its sidecar."""
    video = Path(video)
    if not video.is_file():
        raise InputError(f"video not found: {video}", "check the path")
    try:
        data = json.loads(read_tags(video).get(TAG, ""))
    except ValueError:
        data = None
    if not is_description(data) and sidecar_path(video).is_file():
        try:
            data = json.loads(sidecar_path(video).read_text())
        except ValueError:
            data = None
    if not is_description(data):
        raise InputError(f"{video} has no fpgen metadata", "it was not made by fpgen, or its tags were stripped and it has no .json sidecar")
    return data
