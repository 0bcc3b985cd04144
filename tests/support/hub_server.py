"""A loopback stand-in for the Hugging Face Hub, speaking real HTTP.

It serves the endpoints the download step uses (and the ones huggingface_hub 1.33 uses for the
same jobs): ``GET /api/models/{repo}[/revision/{rev}][?blobs=true]`` (model info with ``sha`` and
``siblings``, with sizes/blob ids/LFS data when ``blobs=true``), ``GET /api/models/{repo}/tree/
{rev}`` (what ``snapshot_download`` lists) and ``HEAD``/``GET
/{repo}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``, ``Accept-Ranges`` and ``Range`` (206). Errors carry the
``X-Error-Code`` values huggingface_hub maps to its exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``).

Fault injection, per file: ``drop_after`` closes the connection after N bytes of the body and
``stall_after`` sends N bytes then waits (so a test can kill the client mid-file), both once;
``hide_on_resolve`` lists a file in model info but answers 404 when it is fetched.
LFS files can be served Hub-style through a 302 to a "CDN" on the same server reached via
``localhost`` instead of ``127.0.0.1`` (another host, so clients must drop ``Authorization``).
Every request is recorded (method, path, query, headers) for assertions.

Bodies are in memory for tests or on disk for the benchmark (``os.sendfile``), so the server
is never the bottleneck.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from tests.support.loopback import LoopbackHTTPServer

_SEND_CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# {repo}/revision/{rev} or {repo}/tree/{rev}[/{folder}]; repo is "name" or "namespace/name".
_API_ROUTE = re.compile(r"^(?P<repo>[^/]+(?:/[^/]+)?)/(?P<kind>revision|tree)/(?P<rest>.+)$")


@dataclass(frozen=True)
class HubFile:
    """One file of a commit: bytes in memory or a path on disk, and its Hub identities."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None
    data: bytes | None = None
    disk_path: Path | None = None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id

    @classmethod
    def from_bytes(cls, path: str, data: bytes, *, lfs: bool | None = None) -> HubFile:
        is_lfs = (
            lfs if lfs is not None else (len(data) > 10 * 1024 or path.endswith(".safetensors"))
        )
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        sha = hashlib.sha256(data).hexdigest() if is_lfs else None
        return cls(path=path, size=len(data), blob_id=blob_id, lfs_sha256=sha, data=data)

    @classmethod
    def from_disk(cls, path: str, disk_path: Path, *, sha256: str | None = None) -> HubFile:
        """A big file served with sendfile; ``sha256`` may be given to avoid hashing GiBs."""
        size = disk_path.stat().st_size
        digest = sha256 or hashlib.sha256(disk_path.read_bytes()).hexdigest()
        blob_id = hashlib.sha1(digest.encode()).hexdigest()  # a stand-in for the pointer's oid
        return cls(path=path, size=size, blob_id=blob_id, lfs_sha256=digest, disk_path=disk_path)


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)

    def commit(self, files: dict[str, bytes] | list[HubFile], *, ref: str | None = "main") -> str:
        """Add a commit holding ``files``; point ``ref`` at it; return its 40-hex sha."""
        items = (
            [HubFile.from_bytes(p, d) for p, d in files.items()]
            if isinstance(files, dict)
            else list(files)
        )
        digest = hashlib.sha1()
        digest.update(f"{self.repo_id}:{len(self.commits)}".encode())
        for item in sorted(items, key=lambda f: f.path):
            digest.update(f"{item.path}:{item.etag}".encode())
        sha = digest.hexdigest()
        self.commits[sha] = {item.path: item for item in items}
        if ref is not None:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_file_request(self) -> bool:
        return "/resolve/" in self.path or self.path.startswith("/cdn/")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class HubServer:
    """The server plus its repos, fault switches and request log (thread-safe)."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.lfs_redirect = False
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.hide_on_resolve: set[str] = set()  # listed by model info, 404 on resolve
        self.ignore_range = False  # answer 200 with the whole body, like some CDNs
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._server = LoopbackHTTPServer(_make_handler(self))
        self.port = self._server.port
        self.url = self._server.url
        self.cdn_url = f"http://localhost:{self.port}"

    def start(self) -> HubServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.stop()

    def add_repo(
        self, repo_id: str, *, gated: bool = False, tokens: set[str] | None = None
    ) -> HubRepo:
        repo = HubRepo(repo_id=repo_id, gated=gated, allowed_tokens=set(tokens or ()))
        self.repos[repo_id] = repo
        return repo

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def file_requests(self, method: str | None = "GET") -> list[RecordedRequest]:
        return [
            r for r in self.requests if r.is_file_request and (method is None or r.method == method)
        ]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def add_sent(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count


def _find_file(repo: HubRepo, etag: str) -> HubFile | None:
    for files in repo.commits.values():
        for item in files.values():
            if item.etag == etag:
                return item
    return None


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "HubStandIn/1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_HEAD(self) -> None:  # noqa: N802
            self._handle(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._handle(head=False)

        # -- routing ---------------------------------------------------------------------------

        def _handle(self, *, head: bool) -> None:
            split = urlsplit(self.path)
            path = unquote(split.path)
            hub.record(
                RecordedRequest(
                    method=self.command,
                    path=path,
                    query=parse_qs(split.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
            )
            try:
                if path.startswith("/api/models/"):
                    self._model_info(split.path[len("/api/models/") :], parse_qs(split.query))
                elif path.startswith("/cdn/"):
                    self._cdn(path, head=head)
                elif "/resolve/" in path:
                    self._resolve(split.path, head=head)
                else:
                    self._error(404, "EntryNotFound", "Not found")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _repo(self, repo_id: str) -> HubRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _token(self) -> str | None:
            value = self.headers.get("Authorization", "")
            return value[len("Bearer ") :] if value.startswith("Bearer ") else None

        # -- endpoints -------------------------------------------------------------------------

        def _model_info(self, raw: str, query: dict[str, list[str]]) -> None:
            match = _API_ROUTE.match(raw)
            if match and match["kind"] == "tree":
                self._tree(match["repo"], match["rest"])
                return
            if match:
                repo_id, revision = unquote(match["repo"]), unquote(match["rest"])
            else:
                repo_id, revision = unquote(raw), "main"
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = repo.resolve(revision)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for item in sorted(repo.commits[sha].values(), key=lambda f: f.path):
                entry: dict[str, object] = {"rfilename": item.path}
                if blobs:
                    entry["blobId"] = item.blob_id
                    entry["size"] = item.size
                    if item.lfs_sha256:
                        entry["lfs"] = {
                            "sha256": item.lfs_sha256,
                            "size": item.size,
                            "pointerSize": 134,
                        }
                siblings.append(entry)
            body = json.dumps(
                {
                    "_id": "0" * 24,
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "author": repo.repo_id.split("/")[0],
                    "sha": sha,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "tags": [],
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "siblings": siblings,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _tree(self, raw_repo: str, rest: str) -> None:
            """``/api/models/{repo}/tree/{rev}[/{folder}]`` (snapshot_download lists files so)."""
            raw_rev, _, raw_folder = rest.partition("/")
            repo = self._repo(unquote(raw_repo))
            if repo is None:
                return
            sha = repo.resolve(unquote(raw_rev))
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(raw_rev)}")
                return
            folder = unquote(raw_folder.split("?", 1)[0]).strip("/")
            prefix = f"{folder}/" if folder else ""
            entries: list[dict[str, object]] = []
            folders: set[str] = set()
            for item in sorted(repo.commits[sha].values(), key=lambda f: f.path):
                if not item.path.startswith(prefix):
                    continue
                parts = item.path.split("/")
                for depth in range(1, len(parts)):
                    folders.add("/".join(parts[:depth]))
                entry: dict[str, object] = {
                    "type": "file",
                    "oid": item.blob_id,
                    "size": item.size,
                    "path": item.path,
                }
                if item.lfs_sha256:
                    entry["lfs"] = {"oid": item.lfs_sha256, "size": item.size, "pointerSize": 134}
                entries.append(entry)
            for name in sorted(f for f in folders if f.startswith(prefix)):
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": name})
            body = json.dumps(entries).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, raw_path: str, *, head: bool) -> None:
            # /{namespace}/{name}/resolve/{revision}/{path...}; the revision is URL-quoted.
            raw_repo, rest = raw_path.lstrip("/").split("/resolve/", 1)
            raw_rev, _, raw_file = rest.partition("/")
            repo = self._repo(unquote(raw_repo))
            if repo is None:
                return
            revision, filename = unquote(raw_rev), unquote(raw_file)
            if repo.gated:
                token = self._token()
                if token is None:
                    self._error(
                        401,
                        "GatedRepo",
                        f"Access to model {repo.repo_id} is restricted. You must have access to "
                        "it and be authenticated to access it. Please log in.",
                    )
                    return
                if token not in repo.allowed_tokens:
                    self._error(
                        403,
                        "GatedRepo",
                        f"Access to model {repo.repo_id} is restricted and you are not in the "
                        "authorized list.",
                    )
                    return
            sha = repo.resolve(revision)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            item = repo.commits[sha].get(filename)
            if item is None or filename in hub.hide_on_resolve:
                self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}")
                return
            common = {
                "X-Repo-Commit": sha,
                "ETag": f'"{item.blob_id}"',
                "Accept-Ranges": "bytes",
            }
            if item.lfs_sha256:
                common["X-Linked-Etag"] = f'"{item.lfs_sha256}"'
                common["X-Linked-Size"] = str(item.size)
            if item.lfs_sha256 and hub.lfs_redirect:
                location = f"{hub.cdn_url}/cdn/{quote(repo.repo_id)}/{item.lfs_sha256}"
                self.send_response(302)
                for key, value in common.items():
                    self.send_header(key, value)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_body(item, head=head, extra=common)

        def _cdn(self, path: str, *, head: bool) -> None:
            _, _, repo_and_etag = path.partition("/cdn/")
            repo_id, _, etag = repo_and_etag.rpartition("/")
            repo = hub.repos.get(repo_id)
            item = _find_file(repo, etag) if repo else None
            if item is None:
                self._error(404, None, "no such object")
                return
            self._send_body(item, head=head, extra={"ETag": f'"{etag}"'})

        # -- bodies ----------------------------------------------------------------------------

        def _send_body(self, item: HubFile, *, head: bool, extra: dict[str, str]) -> None:
            start, end = 0, item.size - 1
            status = 200
            range_header = None if hub.ignore_range else self.headers.get("Range")
            if range_header:
                match = _RANGE.match(range_header.strip())
                if match is None or (not match.group(1) and not match.group(2)):
                    self._range_error(item)
                    return
                if match.group(1):
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else item.size - 1
                else:
                    start = max(item.size - int(match.group(2)), 0)
                end = min(end, item.size - 1)
                if start >= item.size or start > end:
                    self._range_error(item)
                    return
                status = 206
            length = end - start + 1 if item.size else 0
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{item.size}")
            self.end_headers()
            if head or length == 0:
                return
            drop = hub.drop_after.pop(item.path, None)
            stall = hub.stall_after.pop(item.path, None)
            limit = drop if drop is not None else stall
            to_send = length if limit is None else min(length, limit)
            self.wfile.flush()
            for chunk_start, chunk_len in _chunks(start, to_send):
                self._send_range(item, chunk_start, chunk_len)
            if stall is not None:
                hub.stalled.set()
                hub.release.wait(timeout=60)
            if limit is not None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send_range(self, item: HubFile, offset: int, count: int) -> None:
            if item.data is not None:
                self.wfile.write(item.data[offset : offset + count])
            else:
                assert item.disk_path is not None
                out = self.connection.fileno()
                with item.disk_path.open("rb") as handle:
                    sent = 0
                    while sent < count:
                        n = os.sendfile(out, handle.fileno(), offset + sent, count - sent)
                        if n == 0:
                            raise BrokenPipeError("sendfile sent nothing")
                        sent += n
            hub.add_sent(count)

        def _range_error(self, item: HubFile) -> None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{item.size}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _error(self, status: int, code: str | None, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _chunks(start: int, count: int) -> Iterator[tuple[int, int]]:
    """Split a body into pieces so a dropped or stalled transfer stops at an exact offset."""
    offset = start
    remaining = count
    while remaining > 0:
        size = min(remaining, 64 * _SEND_CHUNK)
        yield offset, size
        offset += size
        remaining -= size


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """A fresh loopback Hub for one test."""
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_env(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    """Point the steps (and huggingface_hub) at the loopback Hub, with no token anywhere.

    ``HF_HOME`` goes to a temp dir so a developer's own ``hf auth login`` token is never read.
    """
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-secret" / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("ARGO_PROGRESS_FILE", raising=False)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return hub_server
