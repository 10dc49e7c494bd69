"""Build a real Hugging Face cache layout (blobs, snapshots, refs) from a folder of repos laid out as owner/name/..."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def repo_ids(hub: Path) -> list[str]:
    return sorted(f"{owner.name}/{repo.name}" for owner in hub.iterdir() if owner.is_dir() for repo in owner.iterdir() if repo.is_dir())


def fake_commit(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


def build_hf_cache(hub: Path, cache: Path, repos: list[str] | None = None) -> Path:
    """Content-addressed blobs plus relative symlinks from ``snapshots/<commit>``, as huggingface_hub writes them."""
    for repo_id in repos or repo_ids(hub):
        root = cache / ("models--" + repo_id.replace("/", "--"))
        commit = fake_commit(repo_id)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(commit)
        for file in sorted(p for p in (hub / repo_id).rglob("*") if p.is_file()):
            data = file.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                blob.write_bytes(data)
            link = root / "snapshots" / commit / file.relative_to(hub / repo_id)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, link.parent))
    return cache
