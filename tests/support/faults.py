"""A loopback fault-injecting HTTP proxy, and the scenarios the reliability tests and bench run.

``FaultProxy`` sits between a step and a real upstream (``docker-registry`` or the Hub
stand-in) on 127.0.0.1 and forwards every request it does not fault; it is not a mock of
either. Two ways to drive it:

- ``faults``: per-method queues of scripted actions consumed one per request (``"pass"``,
  ``"500"``, ``"drop"`` = close without forwarding, ``"lost"`` = forward, then close without
  answering), for tests that need one exact fault at one exact request;
- ``plan``: a seeded ``FaultPlan`` that picks requests at random and, per scenario, resets the
  connection mid-body at a random offset (request bodies on upload, response bodies on
  download), answers 500/502/503 (before or after forwarding), answers 401 once (an expired
  token) or stalls past the client's timeout.

``bearer=True`` makes it a Bearer-token front (token endpoint at ``/token``) for an upstream
without auth. ``rate`` throttles bodies (bytes/s) so a kill can land mid-transfer. It counts
the body bytes clients sent and received, so a test can say how many bytes a fault cost.

The scenario runners at the bottom (push, download) are shared by tests/test_faults.py and
bench/reliability.py, so the bench measures exactly what the tests assert.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.loopback import LoopbackHTTPServer
from tests.support.registry import RegistryServer

PIECE = 64 * 1024
STATUS_FAULTS = (500, 502, 503)
HOP_BY_HOP = {
    "content-length",
    "transfer-encoding",
    "connection",
    "content-encoding",
    "keep-alive",
}


@dataclass
class FaultPlan:
    """What to inject, chosen with a seeded RNG so a failing trial can be replayed.

    Args:
        kind: ``reset`` (cut a body at a random offset), ``status`` (500/502/503),
            ``auth401`` (401 with a Basic challenge: the token expired), ``stall`` (hold the
            request past the client's timeout; mid-body for downloads) or ``none``.
        seed: the RNG seed.
        probability: chance that an eligible request is faulted.
        max_faults: faults injected at most (``auth401`` uses 1: "once").
        methods: methods eligible; None means any.
        path_contains: only paths with this substring are eligible (e.g. ``/resolve/``).
        min_body: resets need a body of at least this many bytes to cut.
        stall_seconds: how long a stall holds the connection (longer than the client timeout).
        per_target: faults at most per (method, path), so one request is never failed forever.
    """

    kind: str
    seed: int = 0
    probability: float = 0.3
    max_faults: int = 6
    methods: frozenset[str] | None = None
    path_contains: str | None = None
    min_body: int = 1
    stall_seconds: float = 3.0
    per_target: int = 2
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass(frozen=True)
class Injected:
    kind: str
    method: str
    path: str
    detail: str


class FaultProxy:
    """A loopback HTTP proxy in front of ``upstream`` (``host:port``) that injects faults."""

    def __init__(
        self,
        upstream: str,
        *,
        bearer: bool = False,
        user: str = "tokenuser",
        password: str = "",
        plan: FaultPlan | None = None,
        rate: float | None = None,
        forward_auth: bool | None = None,
    ) -> None:
        self.upstream = upstream
        self.bearer = bearer
        self.user = user
        self.password = password or "tok-pw-" + secrets.token_hex(8)
        self.forward_auth = (not bearer) if forward_auth is None else forward_auth
        self.faults: dict[str, list[str]] = {}
        self.plan = plan
        self.rate = rate
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.log: list[tuple[str, str, int]] = []
        self.injected: list[Injected] = []
        self.request_bytes = 0  # body bytes read from clients (cut bodies count what arrived)
        self.response_bytes = 0  # body bytes written to clients
        self.response_bytes_by_path: dict[str, int] = {}
        self._per_target: dict[tuple[str, str], int] = {}
        self._pending = 0  # faults picked but not yet injected (requests in flight)
        self._lock = threading.Lock()
        self._released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                try:
                    proxy.handle(self)
                except (TimeoutError, BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = LoopbackHTTPServer(Handler, quiet=True)  # resets are on purpose
        self.host = self._server.host
        self.url = self._server.url
        self._server.start()

    # -- life cycle and counters --------------------------------------------------------------

    def stop(self) -> None:
        self._released.set()
        self._server.stop()

    def reset_counters(self) -> None:
        with self._lock:
            self.request_bytes = self.response_bytes = 0
            self.response_bytes_by_path.clear()
            self.injected.clear()
            self.log.clear()
            self._per_target.clear()

    @property
    def body_bytes(self) -> int:
        return self.request_bytes + self.response_bytes

    def _count(self, *, request: int = 0, response: int = 0) -> None:
        with self._lock:
            self.request_bytes += request
            self.response_bytes += response

    def _throttle(self, count: int) -> None:
        if self.rate:
            time.sleep(count / self.rate)

    def _note(self, kind: str, method: str, path: str, detail: str = "") -> None:
        with self._lock:
            self.injected.append(Injected(kind, method, path, detail))

    # -- the seeded plan ----------------------------------------------------------------------

    def _pick(self, method: str, path: str, body_size: int | None) -> str | None:
        """The plan's fault for this request, or None (thread-safe, seeded)."""
        plan = self.plan
        if plan is None or plan.kind == "none":
            return None
        if plan.methods is not None and method not in plan.methods:
            return None
        if plan.path_contains and plan.path_contains not in path:
            return None
        if plan.kind == "reset" and body_size is not None and body_size < plan.min_body:
            return None
        target = (method, path.split("?", 1)[0])
        with self._lock:
            if len(self.injected) + self._pending >= plan.max_faults:
                return None
            if self._per_target.get(target, 0) >= plan.per_target:
                return None
            if plan.rng.random() >= plan.probability:
                return None
            self._per_target[target] = self._per_target.get(target, 0) + 1
            self._pending += 1
        return plan.kind

    def _done_pending(self) -> None:
        with self._lock:
            self._pending -= 1

    def _offset(self, size: int) -> int:
        assert self.plan is not None
        with self._lock:
            return self.plan.rng.randrange(0, max(size, 1))

    # -- request handling ---------------------------------------------------------------------

    def _reply(
        self, h: Any, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _cut(self, h: Any) -> None:
        """Drop the connection hard (RST where the kernel can), mid-body or mid-request."""
        h.close_connection = True
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self, h: Any, length: int, limit: int | None = None) -> bytes:
        """Read the request body (``limit`` bytes only, for a cut upload), throttled, counted."""
        want = length if limit is None else min(limit, length)
        parts: list[bytes] = []
        got = 0
        while got < want:
            piece = h.rfile.read(min(PIECE, want - got))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
            self._count(request=len(piece))
            self._throttle(len(piece))
        return b"".join(parts)

    def _stall(self, h: Any, method: str, path: str, detail: str) -> None:
        assert self.plan is not None
        self._note("stall", method, path, detail)
        self._released.wait(self.plan.stall_seconds)
        self._cut(h)

    def _token_endpoint(self, h: Any) -> None:
        self.token_requests += 1
        auth = h.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if auth != expected:
            self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return
        token = "tok-" + secrets.token_hex(16)
        self.tokens = {token}  # older tokens expire when a new one is issued
        self._reply(
            h, 200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"}
        )

    def handle(self, h: Any) -> None:
        method, path = h.command, h.path
        length = int(h.headers.get("Content-Length") or 0)
        if path.startswith("/token"):
            self._read_body(h, length)
            self._token_endpoint(h)
            return
        if self.bearer:
            auth = h.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                self._read_body(h, length)
                challenge = (
                    f'Bearer realm="http://{self.host}/token",service="synesis-test",'
                    'scope="repository:x:pull"'
                )
                self._reply(
                    h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge}
                )
                self.log.append((method, path, 401))
                return
        queue_ = self.faults.get(method) or []
        action = queue_.pop(0) if queue_ else None
        fault = None
        if action is None:
            fault = self._pick(method, path, length if length else None)
            action = "pass"
        try:
            self._serve(h, method, path, length, action, fault)
        finally:
            if fault is not None:
                self._done_pending()

    def _serve(
        self, h: Any, method: str, path: str, length: int, action: str, fault: str | None
    ) -> None:
        # Faults decided before anything is forwarded.
        if fault == "reset" and length:
            offset = self._offset(length)
            self._read_body(h, length, limit=offset)
            self._note("reset", method, path, f"request body cut at {offset}/{length}")
            self.log.append((method, path, 0))
            self._cut(h)
            return
        body = self._read_body(h, length) if length else b""
        forward_first = False
        if fault in ("status", "stall") and self.plan is not None:
            with self._lock:
                forward_first = self.plan.rng.random() < 0.5
        if action == "500" or (fault == "status" and not forward_first):
            status = 500 if action == "500" else self._status()
            self._note("status", method, path, f"{status} before forwarding")
            self.log.append((method, path, status))
            self._reply(h, status, b'{"errors":[{"code":"UNKNOWN","message":"injected"}]}')
            return
        if fault == "auth401":
            self._note("auth401", method, path, "401: token expired")
            self.log.append((method, path, 401))
            self._reply(
                h,
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}',
                {"WWW-Authenticate": 'Basic realm="synesis-test"'},
            )
            return
        if action == "drop":
            self.log.append((method, path, 0))
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "stall" and not forward_first and method != "GET":
            self._stall(h, method, path, "held before forwarding")
            return
        answer = self._forward(h, method, path, body)
        with answer:
            self.log.append((method, path, answer.status_code))
            if action == "lost":
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "status":
                status = self._status()
                self._note("status", method, path, f"{status} after forwarding")
                self._reply(h, status, b'{"errors":[{"code":"UNKNOWN","message":"injected"}]}')
                return
            self._answer(h, method, path, answer, fault)

    def _min_body(self) -> int:
        return self.plan.min_body if self.plan is not None else 1

    def _status(self) -> int:
        assert self.plan is not None
        with self._lock:
            return self.plan.rng.choice(STATUS_FAULTS)

    def _forward(self, h: Any, method: str, path: str, body: bytes) -> requests.Response:
        skip = {"host", "content-length"} | ({"authorization"} if not self.forward_auth else set())
        headers = {k: v for k, v in h.headers.items() if k.lower() not in skip}
        headers["Host"] = self.host
        return requests.request(
            method,
            f"http://{self.upstream}{path}",
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            stream=True,
            timeout=60,
        )

    def _answer(
        self, h: Any, method: str, path: str, answer: requests.Response, fault: str | None
    ) -> None:
        """Relay the upstream answer; a planned reset or stall cuts its body at a random offset."""
        passthrough = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        declared = answer.headers.get("Content-Length")
        if fault == "stall" and (method == "HEAD" or int(declared or 0) < self._min_body()):
            self._stall(h, method, path, "held instead of answering")
            return
        if method == "HEAD":
            h.send_response(answer.status_code)
            for key, value in passthrough.items():
                h.send_header(key, value)
            h.send_header("Content-Length", declared or "0")
            h.end_headers()
            return
        if declared is None:
            body = answer.content
            size = len(body)
        else:
            body = None
            size = int(declared)
        cut_at: int | None = None
        if fault in ("reset", "stall") and size >= self._min_body():
            cut_at = self._offset(size)
        h.send_response(answer.status_code)
        for key, value in passthrough.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(size))
        h.end_headers()
        sent = 0
        source = (
            iter([body]) if body is not None else answer.raw.stream(PIECE, decode_content=False)
        )
        for piece in source:
            if cut_at is not None and sent + len(piece) > cut_at:
                piece = piece[: cut_at - sent]
            if piece:
                h.wfile.write(piece)
                h.wfile.flush()
                sent += len(piece)
                self._count(response=len(piece))
                with self._lock:
                    key = path.split("?", 1)[0]
                    self.response_bytes_by_path[key] = self.response_bytes_by_path.get(
                        key, 0
                    ) + len(piece)
                self._throttle(len(piece))
            if cut_at is not None and sent >= cut_at:
                break
        if cut_at is not None:
            if fault == "stall":
                self._stall(h, method, path, f"response held at {cut_at}/{size}")
            else:
                self._note("reset", method, path, f"response body cut at {cut_at}/{size}")
                self._cut(h)


@pytest.fixture
def fault_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry.host)
    yield proxy
    proxy.stop()


@pytest.fixture
def bearer_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry.host, bearer=True)
    yield proxy
    proxy.stop()


# -- scenarios shared by tests/test_faults.py and bench/reliability.py ---------------------------

# Network scenarios: name -> (plan kind, plan keywords for a push, for a download).
PUSH_SCENARIOS: dict[str, dict[str, Any]] = {
    "reset": dict(kind="reset", methods=frozenset({"PATCH", "PUT"}), min_body=1, max_faults=5),
    "5xx": dict(kind="status", max_faults=6, probability=0.25),
    "401-once": dict(kind="auth401", max_faults=1, probability=0.2),
    "stall": dict(kind="stall", methods=frozenset({"PATCH", "PUT", "HEAD"}), max_faults=2),
}
DOWNLOAD_SCENARIOS: dict[str, dict[str, Any]] = {
    "reset": dict(kind="reset", path_contains="/resolve/", min_body=1024, max_faults=5),
    "5xx": dict(kind="status", max_faults=6, probability=0.3),
    "stall": dict(kind="stall", path_contains="/resolve/", min_body=1024, max_faults=2),
}


@dataclass(frozen=True)
class Outcome:
    """One scenario trial: what was injected, what it cost, what came out."""

    scenario: str
    seed: int
    faults: int
    bytes_clean: int
    bytes_sent: int
    digest: str  # manifest digest (push) or sha256 of the file set (download)
    seconds: float
    ok: bool

    @property
    def resent(self) -> int:
        return max(0, self.bytes_sent - self.bytes_clean)


def push_resend_bound(injected: list[Injected], *, chunk: int, blob: int) -> int:
    """Most bytes a push may send again for these faults.

    A fault the registry never saw (a cut or a 5xx/stall before forwarding) costs one chunk. A
    PATCH the registry stored whose answer was lost costs the blob: docker-registry signs the
    upload offset into the upload URL (``_state``), so the old URL is dead and the upload must
    restart (other layers are not re-sent: they are found with a HEAD).
    """
    total = 0
    for item in injected:
        landed = "after forwarding" in item.detail or "instead of answering" in item.detail
        total += blob if landed and item.method == "PATCH" else chunk + 16 * 1024
    return total


def file_set_digest(root: Path, *, skip_top: tuple[str, ...] = (".cache",)) -> str:
    """sha256 over (path, content) of every file under ``root``: equal means the same files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in skip_top:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def push_through(
    proxy: FaultProxy,
    *,
    src: Path,
    repository: str,
    state_dir: Path,
    base: str,
    chunk_bytes: int,
    auth: str = "auto",
) -> tuple[str, float]:
    """Build+push ``src`` (stream builder) to ``proxy.host/repository:v1``; (digest, seconds)."""
    from steps.build import build

    started = time.monotonic()
    result = build(
        src=src,
        target=f"{proxy.host}/{repository}:v1",
        model_id="org/tiny",
        revision="f" * 40,
        builder="stream",
        state_dir=state_dir,
        base=base,
        auth=auth,
        chunk_bytes=chunk_bytes,
    )
    return result.digest, time.monotonic() - started


def download_through(
    proxy: FaultProxy, *, model_id: str, dest: Path, state_dir: Path
) -> tuple[str, float]:
    """Download ``model_id`` with ``HF_ENDPOINT`` at the proxy; (file-set digest, seconds)."""
    from steps.download import download

    started = time.monotonic()
    download(model_id=model_id, dest=dest, state_dir=state_dir, workers=2)
    return file_set_digest(dest), time.monotonic() - started


def hub_host(url: str) -> str:
    return urlsplit(url).netloc
