"""A Hugging Face Hub on 127.0.0.1 that serves a folder of repos (owner/name/...) the way huggingface.co does.

It answers what huggingface_hub asks while downloading: ``GET /api/models/{repo}/revision/{rev}``
(with ``blobs=true``: sizes, git blob ids, LFS sha256), ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``
(X-Repo-Commit and ETag; LFS files redirect to a CDN URL with X-Linked-Etag and X-Linked-Size), and
the CDN itself, with Range requests for resuming. Gated repos answer 401/403 with the Hub's error
headers unless the request carries their token. Every request is logged, and faults can be injected:
a status for a file, a connection dropped part-way through a file, or no answer at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hubcache import fake_commit, repo_ids

LFS_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class RepoFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        """The git object id, which is the Hub's ETag of a file not stored with LFS."""
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    file: str | None  # "owner/name/path" when the request was for a file's content
    status: int
    range: str | None
    body_bytes: int


class FakeHub:
    def __init__(self, *roots: Path, gated: dict[str, str] | None = None):
        self.repos = {
            repo: {p.relative_to(root / repo).as_posix(): RepoFile(p.read_bytes(), p.suffix in LFS_SUFFIXES) for p in (root / repo).rglob("*") if p.is_file()}
            for root in roots for repo in repo_ids(root)
        }  # fmt: skip
        self.cdn = {f.sha256: (repo, path) for repo, files in self.repos.items() for path, f in files.items() if f.lfs}
        self.gated = gated or {}  # repo -> the token that may read it
        self.log: list[Served] = []
        self.fail_status: dict[str, int] = {}  # "owner/name/path" -> status its content requests get
        self.drop_once: dict[str, int] = {}  # "owner/name/path" -> bytes sent before the connection drops, once
        self.stall: str | None = None  # "api" or "resolve": such requests never get an answer
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        """The same server under another host name: huggingface_hub treats it as the CDN it is on the Hub."""
        return f"http://localhost:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def content_bytes(self, since: int = 0) -> Counter:
        """Body bytes sent per file by GET requests, from log entry ``since`` on."""
        sent: Counter = Counter()
        for served in self.log[since:]:
            if served.method == "GET" and served.file:
                sent[served.file] += served.body_bytes
        return sent


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

        def _route(self) -> None:
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
            if hub.stall == _kind(parts):
                hub._release.wait()
                self.close_connection = True
            elif _kind(parts) == "api":
                self._api("/".join(parts[2:4]), parts[5] if len(parts) == 6 else "main")
            elif _kind(parts) == "cdn":
                self._content(*hub.cdn[parts[1]])
            elif _kind(parts) == "resolve":
                self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            else:
                self._error(404, "EntryNotFound", "Not found")

        def _check_repo(self, repo: str, revision: str) -> bool:
            if repo not in hub.repos:
                self._error(404, "RepoNotFound", "Repository not found")
            elif revision not in ("main", fake_commit(repo)):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            else:
                return True
            return False

        def _api(self, repo: str, revision: str) -> None:
            if not self._check_repo(repo, revision):
                return
            siblings = [
                {"rfilename": path, "size": len(f.data), "blobId": f.blob_id}
                | ({"lfs": {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}} if f.lfs else {})
                for path, f in sorted(hub.repos[repo].items())
            ]  # fmt: skip
            info = {
                "_id": fake_commit(repo)[:24], "id": repo, "modelId": repo, "sha": fake_commit(repo), "private": False,
                "gated": "manual" if repo in hub.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "lastModified": "2025-05-03T00:00:00.000Z", "createdAt": "2025-04-12T00:00:00.000Z", "tags": [], "siblings": siblings,
            }  # fmt: skip
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

        def _resolve(self, repo: str, revision: str, path: str) -> None:
            if not self._check_repo(repo, revision) or not self._authorized(repo):
                return
            f = hub.repos[repo].get(path)
            if f is None:
                self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            elif f.lfs:
                headers = {"X-Repo-Commit": fake_commit(repo), "ETag": '"pointer"', "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))}
                self._send(302, b"", headers | {"Location": f"{hub.cdn_url}/lfs-cdn/{f.sha256}"}, file=f"{repo}/{path}")
            else:
                self._content(repo, path, {"X-Repo-Commit": fake_commit(repo)})

        def _authorized(self, repo: str) -> bool:
            if repo not in hub.gated:
                return True
            sent = self.headers.get("Authorization")
            if sent == f"Bearer {hub.gated[repo]}":
                return True
            if sent is None:
                self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must be authenticated to access it.")
            else:
                self._error(403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the authorized list.")
            return False

        def _content(self, repo: str, path: str, headers: dict | None = None) -> None:
            name, f = f"{repo}/{path}", hub.repos[repo][path]
            if self.command == "GET" and name in hub.fail_status:
                self._send(hub.fail_status[name], b"server error", {}, file=name)
                return
            start = _range_start(self.headers.get("Range"))
            headers = (headers or {}) | {"ETag": f'"{f.sha256 if f.lfs else f.blob_id}"', "Accept-Ranges": "bytes"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
            body = f.data[start:]
            drop_at = hub.drop_once.pop(name, None) if self.command == "GET" else None
            self._send(206 if start else 200, body, headers, file=name, drop_after=drop_at)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

        def _send(self, status: int, body: bytes, headers: dict, file: str | None = None, drop_after: int | None = None) -> None:
            self.send_response(status)
            for key, value in (headers | {"Content-Length": str(len(body))}).items():
                self.send_header(key, value)
            self.end_headers()
            sent = 0
            if self.command == "GET":
                sent = len(body) if drop_after is None else min(drop_after, len(body))
                self.wfile.write(body[:sent])
            hub.log.append(Served(self.command, urlsplit(self.path).path, file, status, self.headers.get("Range"), sent))
            if drop_after is not None:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

    return Handler


def _kind(parts: list[str]) -> str | None:
    """Which of the Hub's endpoints a request path (split at "/") is for."""
    if parts[:2] == ["api", "models"] and (len(parts) == 4 or len(parts) == 6 and parts[4] == "revision"):
        return "api"
    if parts[0] == "lfs-cdn" and len(parts) == 2:
        return "cdn"
    if len(parts) >= 5 and parts[2] == "resolve":
        return "resolve"
    return None


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else 0
