"""Tensors on disk: safetensors files written aside and renamed, so a file that exists is complete.

Every tensor file fpgen writes (job inputs and sections, LoRAs, the training cache) goes through
``save_tensors``; every one it reads back through ``load_tensors``, which turns a damaged or foreign
file into one ``DamagedFileError`` naming it (safetensors raises its own error types), and a full
disk into ``DiskFullError`` (safetensors hides ENOSPC inside its own error).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import torch

from fpgen.errors import DiskFullError, FpgenError, InputError


class DamagedFileError(InputError):
    """A tensor file that exists but cannot be read (truncated, foreign, or missing a tensor)."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # processes filling one cache may write the same entry
    try:
        partial.open("w").close()  # created with the user's umask, to learn the mode a new file of theirs gets
        mode = stat.S_IMODE(partial.stat().st_mode)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(partial), metadata=metadata)
        os.chmod(partial, mode)  # safetensors (0.8) writes owner-only files: a LoRA or job shared on a server must stay readable
        os.replace(partial, path)
    except Exception as error:
        partial.unlink(missing_ok=True)
        if _is_disk_full(error):
            raise DiskFullError(f"the disk is full writing {path}", "free some space and run the command again") from error
        raise


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (FileNotFoundError, FpgenError):  # FpgenError: a stop requested while reading
        raise
    except Exception as error:  # SafetensorError, OSError from a short read, a header that is not JSON...
        raise DamagedFileError(f"{path} is damaged or not a safetensors file ({type(error).__name__})", "remove it or write it again") from None


def _is_disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)
