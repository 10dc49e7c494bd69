"""``fpgen download``: fetch exactly the files a model needs, into the Hugging Face cache or a model folder.

The plan comes from the Hub's metadata (one ``model_info`` call per repo): the files that match the
registry's patterns, their sizes, and which of them are on disk already. One file of each repo is
asked for and the free space checked, so that a gated repo or a full disk stops the download before
its first byte.
huggingface_hub does the transfer (``hf_hub_download``, one file at a time), the cache layout, tokens
and its environment variables. Each folder's ``*config.json`` files come after its other files, so
that ``hub.is_complete`` can tell a finished folder from an interrupted one."""

from __future__ import annotations

import errno
import inspect
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, constants, get_hf_file_metadata, get_token, hf_hub_download, hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import filter_repo_objects
from tqdm.std import tqdm

from fpgen.errors import DiskFullError, FpgenError, InputError, ModelMissingError, NetworkError
from fpgen.registry import ModelSpec, Source

RETRY = "run the same command again: files already downloaded are kept"
# With a huggingface_hub whose hf_hub_download takes no tqdm_class, fpgen reports whole files only.
REPORTS_BYTES = "tqdm_class" in inspect.signature(hf_hub_download).parameters


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    revision: str | None  # as asked for (None: the default branch)
    commit: str
    path: str
    size: int
    present: bool  # its content is on disk already: nothing to transfer


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    destination: Path  # the HF cache, or the --local-dir folder
    local_dir: Path | None
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def to_fetch(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if not f.present)

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.to_fetch)


@dataclass(frozen=True)
class FileStarted:
    file: RemoteFile
    number: int  # 1-based, among the files to fetch
    count: int


@dataclass(frozen=True)
class FileProgress:
    file: RemoteFile
    done: int  # bytes of this file on disk so far


@dataclass(frozen=True)
class FileDone:
    file: RemoteFile


Event = FileStarted | FileProgress | FileDone


def plan_download(specs: list[ModelSpec], local_dir: Path | None = None) -> Plan:
    """What downloading ``specs`` involves, from the Hub's metadata; transfers nothing."""
    if constants.HF_HUB_OFFLINE:
        raise NetworkError("HF_HUB_OFFLINE is set, so nothing can be downloaded", "unset HF_HUB_OFFLINE (or set it to 0) and run again")
    if local_dir is not None and local_dir.exists() and not local_dir.is_dir():
        raise InputError(f"--local-dir {local_dir} is not a folder", "pass a folder (it is created when missing)")
    files = _needed_files(specs, local_dir)
    _check_access(files)
    destination = local_dir or Path(constants.HF_HUB_CACHE)
    return Plan(tuple(s.name for s in specs), tuple(files), destination, local_dir, free_space(destination))


def check_space(plan: Plan) -> None:
    """Refuse before the first byte when the destination's disk cannot hold what is left to fetch."""
    if plan.fetch_bytes > plan.free_bytes:
        raise DiskFullError(
            f"not enough disk space in {plan.destination}: the download needs {human_size(plan.fetch_bytes)}, {human_size(plan.free_bytes)} is free",
            "free some space, or download to another disk with --local-dir DIR (or HF_HUB_CACHE=DIR)",
        )


def run_download(plan: Plan, on_event: Callable[[Event], None] = lambda event: None) -> None:
    """Fetch what is missing; files already present are only linked into place (no transfer)."""
    count, number = len(plan.to_fetch), 0
    for file in plan.files:
        if file.present:
            _fetch(file, plan.local_dir, None)
            continue
        number += 1
        on_event(FileStarted(file, number, count))
        _fetch(file, plan.local_dir, on_event)
        on_event(FileDone(file))


def free_space(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (or would, once its parents are made)."""
    existing = folder.expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def human_size(size: float) -> str:
    """In decimal units, as the Hub shows sizes."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


def _remote_sources(specs: list[ModelSpec]) -> Iterator[Source]:
    for spec in specs:
        yield from (source for source in spec.sources().values() if source.local is None)


def _needed_files(specs: list[ModelSpec], local_dir: Path | None) -> list[RemoteFile]:
    """The files of every remote source of ``specs`` (each once), in the order they are fetched."""
    listings: dict[tuple[str, str | None], tuple[str, list[RepoSibling]]] = {}
    files: dict[tuple[str, str], RemoteFile] = {}
    for source in _remote_sources(specs):
        key = (source.repo, source.revision)
        if key not in listings:
            listings[key] = _list_repo(source.repo, source.revision)
        commit, siblings = listings[key]
        matched = list(filter_repo_objects(siblings, allow_patterns=source.allow_patterns, key=lambda s: s.rfilename))
        if not matched:
            raise InputError(f"{source.repo} has none of the files fpgen needs ({', '.join(source.allow_patterns)})", "check the repo id: fpgen needs a FramePack transformer in diffusers format")
        for sibling in matched:
            files[(source.repo, sibling.rfilename)] = _remote_file(source, commit, sibling, local_dir)
    return sorted(files.values(), key=_fetch_order(list(dict.fromkeys(repo for repo, _ in listings))))


def _list_repo(repo: str, revision: str | None) -> tuple[str, list[RepoSibling]]:
    with _hub_errors(repo, revision=revision):
        info = HfApi().model_info(repo, revision=revision, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    return info.sha, info.siblings or []


def _check_access(files: list[RemoteFile]) -> None:
    """Ask for one file of each repo there is something to fetch from, so that a gated or private
    repo stops the download before the first byte rather than after the repos before it."""
    first = {f.repo: f for f in reversed(files) if not f.present}
    for file in first.values():
        with _hub_errors(file.repo, file.path, file.revision):
            get_hf_file_metadata(hf_hub_url(file.repo, file.path, revision=file.commit))


def _remote_file(source: Source, commit: str, sibling: RepoSibling, local_dir: Path | None) -> RemoteFile:
    size = sibling.lfs.size if sibling.lfs else sibling.size or 0
    etag = sibling.lfs.sha256 if sibling.lfs else sibling.blob_id
    if local_dir is not None:
        target = local_dir / source.repo / sibling.rfilename
        present = target.is_file() and target.stat().st_size == size
    else:
        present = (Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=source.repo, repo_type="model") / "blobs" / str(etag)).is_file()
    return RemoteFile(source.repo, source.revision, commit, sibling.rfilename, size, present)


def _fetch_order(repos: list[str]) -> Callable[[RemoteFile], tuple]:
    """Repo by repo, folder by folder, each folder's config files last (see the module docstring)."""

    def key(file: RemoteFile) -> tuple:
        path = PurePosixPath(file.path)
        return repos.index(file.repo), str(path.parent), path.name.endswith("config.json"), path.name

    return key


def _fetch(file: RemoteFile, local_dir: Path | None, on_event: Callable[[Event], None] | None) -> None:
    options = {"tqdm_class": _progress_bar(file, on_event)} if on_event and REPORTS_BYTES else {}
    with _hub_errors(file.repo, file.path, file.revision):
        hf_hub_download(file.repo, file.path, revision=file.revision, local_dir=local_dir / file.repo if local_dir else None, **options)


def _progress_bar(file: RemoteFile, on_event: Callable[[Event], None]) -> type[tqdm]:
    """A tqdm class for huggingface_hub that draws nothing and reports ``file``'s bytes as events.

    It counts even where the libraries' bars are switched off (``fpgen.terminal.library_bars_off``): a disabled
    tqdm counts nothing, and it would otherwise be one, as huggingface_hub passes its switch on."""
    reported = [0]

    class Bar(tqdm):
        monitor_interval = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": _Discard(), "disable": False})

        def update(self, n=1):
            super().update(n)
            done = min(int(self.n), file.size)  # the largest of the bars hf draws for this file (xet draws two)
            if done > reported[0]:
                reported[0] = done
                on_event(FileProgress(file, done))

    return Bar


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def _hub_errors(repo: str, path: str | None = None, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the network's errors into one-line fpgen errors; never shows the token."""
    what = f"{repo}/{path}" if path else repo
    try:
        yield
    except FpgenError:
        raise
    except GatedRepoError as error:
        raise _no_access(repo, error.response.status_code) from None
    except RepositoryNotFoundError:
        raise InputError(f"the Hub has no model repo {repo} (or it is private and your token cannot see it)", "check the name; for a private repo run `hf auth login` or set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise InputError(f"{repo} has no revision {revision!r}", "pass a branch, tag or commit id of that repo to --revision") from None
    except HfHubHTTPError as error:
        status = error.response.status_code
        if status in (401, 403):
            raise _no_access(repo, status) from None
        raise NetworkError(f"the Hub answered HTTP {status} for {what}", RETRY) from None
    except LocalEntryNotFoundError as error:  # hf_hub_download could not reach the Hub for a file it does not have
        raise NetworkError(f"could not reach the Hub at {constants.ENDPOINT} for {what} ({_reason(error.__cause__ or error)})", RETRY) from None
    except OSError as error:
        raise _disk_error(error, what) from None
    except Exception as error:
        if not _is_transport_error(error):
            raise
        raise NetworkError(f"could not reach the Hub at {constants.ENDPOINT} for {what} ({_reason(error)})", RETRY) from None


def _no_access(repo: str, status: int) -> ModelMissingError:
    page = f"{constants.ENDPOINT}/{repo}"
    if get_token() is None:
        return ModelMissingError(f"{repo} needs a Hugging Face login (HTTP {status})", f"accept its terms at {page}, then run `hf auth login` or set HF_TOKEN")
    return ModelMissingError(f"your Hugging Face token has no access to {repo} (HTTP {status})", f"request access at {page} with the token's account, or use another token")


def _disk_error(error: OSError, what: str) -> FpgenError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"the disk filled up while downloading {what}", "free some space and " + RETRY)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"cannot write {what}: {error.strerror} ({error.filename})", "choose a writable --local-dir or HF_HUB_CACHE")
    return NetworkError(f"downloading {what} failed ({_reason(error)})", RETRY)


def _is_transport_error(error: BaseException) -> bool:
    """httpx's (huggingface_hub 1.x) and httpx2's (2.x) connection and timeout errors share this base name."""
    return any(cls.__name__ == "TransportError" for cls in type(error).__mro__)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
