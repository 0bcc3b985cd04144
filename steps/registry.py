"""OCI distribution client: blob HEAD/mount/chunked upload, manifests, ranged blob reads.

Written on ``requests`` (a well-kept HTTP library) with the upload protocol by hand, because no
Python library streams a blob of unknown digest in chunks while resuming after faults:

- ``POST /v2/<name>/blobs/uploads/`` → ``PATCH`` chunks with ``Content-Range`` → ``PUT ?digest=``.
  Chunks are a per-registry size (ECR wants ≥ 5 MiB, GHCR ≤ 4 MiB); 201 and 202 both mean
  "accepted" (ECR answers 201 to PATCH).
- A reader thread fills the next chunk (file read + sha256, both release the GIL) while the
  current one is on the wire, with two buffers in a ring: memory is two chunks, whatever the
  blob size. Chunk bodies go out as memoryviews (no copy).
- On a reset connection or a 5xx the client asks the registry how much it has (``GET`` the
  upload URL → ``Range: 0-N``) and resends the chunk when that matches; otherwise it restarts the
  blob from byte 0 with a fresh stream (the tar is deterministic, so the bytes are the same).
- Auth: anonymous first; a 401 challenge selects Basic or Bearer (token endpoint, scopes); a
  second 401 asks the authenticator to refresh (new ECR token) before giving up.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from steps import redact
from steps.errors import AuthError, BadInputError, RegistryError
from steps.imageref import is_loopback
from steps.oci import ACCEPT_ALL, sha256_digest
from steps.registry_auth import Anonymous, Authenticator

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Readable(Protocol):
    """A byte source: ``readinto`` fills the buffer unless the data ends; 0 means the end."""

    def readinto(self, buf: memoryview | bytearray) -> int: ...

    def close(self) -> None: ...


StreamFactory = Callable[[], Readable]


class BytesReadable:
    """``Readable`` over bytes in memory (configs, manifests, small test blobs)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = min(len(buf), len(self._view) - self._pos)
        memoryview(buf)[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        pass


class ResponseReadable:
    """``Readable`` over a streamed HTTP response body (copying a base blob between registries)."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        pos = 0
        while pos < len(view):
            got = self._response.raw.readinto(view[pos:])
            if not got:
                break
            pos += got
        return pos

    def close(self) -> None:
        self._response.close()


class _ConnectionFailed(RegistryError):
    """The request never got an answer (refused, reset, timed out)."""


class _RestartBlob(Exception):
    """The registry lost track of the upload: start this blob again from byte 0."""


class _ViewBody:
    """A request body over a memoryview: requests streams it without copying the chunk."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view) - self._pos

    def __iter__(self) -> Iterator[memoryview]:  # marks the body as a stream for requests
        yield self._view

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        piece = self._view[self._pos : end]
        self._pos = end
        return piece


class _BigBlockAdapter(HTTPAdapter):
    """Sends request bodies in 1 MiB writes instead of urllib3's 16 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = 1 << 20
        super().init_poolmanager(*args, **kwargs)


class ChunkPipeline:
    """Reads a stream into a ring of buffers on a thread, hashing as it goes."""

    def __init__(self, stream: Readable, chunk_bytes: int, depth: int = 2) -> None:
        self._stream = stream
        self._free: queue.Queue[bytearray | None] = queue.Queue()
        self._full: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
        for _ in range(depth):
            self._free.put(bytearray(chunk_bytes))
        self._hasher = hashlib.sha256()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blob-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                buf = self._free.get()
                if buf is None or self._stop.is_set():
                    return
                n = self._stream.readinto(buf)
                if n:
                    self._hasher.update(memoryview(buf)[:n])
                    self._full.put((buf, n))
                if n < len(buf):
                    self._full.put(None)
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._full.put(exc)

    def chunks(self) -> Iterator[memoryview]:
        """Each chunk as a view; it stays valid until the next one is requested."""
        while True:
            item = self._full.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            yield memoryview(buf)[:n]
            self._free.put(buf)

    def digest(self) -> str:
        self._thread.join()
        return "sha256:" + self._hasher.hexdigest()

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)
        self._thread.join(timeout=30)
        self._stream.close()


@dataclass(frozen=True)
class UploadResult:
    digest: str
    size: int
    restarts: int


def _registry_message(resp: requests.Response) -> str:
    """``CODE: message`` from a registry error body, else the HTTP reason."""
    try:
        errors = resp.json().get("errors") or []
        if errors:
            first = errors[0]
            return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        pass
    return resp.reason or ""


class RegistryClient:
    """One registry host; repositories are named per call so one client serves mounts too."""

    def __init__(
        self,
        host: str,
        *,
        auth: Authenticator | None = None,
        insecure: bool = False,
        chunk_bytes: int = 16 << 20,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 120.0,
    ) -> None:
        self.host = host
        self.auth: Authenticator = auth or Anonymous()
        self.scheme = "http" if insecure or is_loopback(host) else "https"
        self.chunk_bytes = chunk_bytes
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._session = requests.Session()
        adapter = _BigBlockAdapter(pool_connections=4, pool_maxsize=4)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._authz: str | None = None
        self._scopes: set[str] = set()
        self._lock = threading.Lock()

    # ---- plumbing -------------------------------------------------------------------------

    def url(self, repository: str, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{repository}/{path}"

    def _absolute(self, location: str) -> str:
        return urljoin(f"{self.scheme}://{self.host}/", location)

    def _sleep(self, attempt: int, resp: requests.Response | None = None) -> None:
        delay = self.backoff * (2**attempt)
        if resp is not None and resp.headers.get("Retry-After", "").isdigit():
            delay = max(delay, float(resp.headers["Retry-After"]))
        time.sleep(min(delay, 30.0))

    def _describe(self, method: str, url: str) -> str:
        """Method and path without the query (ECR/S3 URLs carry signatures there)."""
        return f"{method} {urlsplit(url).path}"

    def _send(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> requests.Response:
        """Send with auth challenges handled; retry connection faults and 5xx when ``retry``."""
        attempt = 0
        auth_rounds = 0
        while True:
            hdrs = dict(headers or {})
            if self._authz:
                hdrs["Authorization"] = self._authz
            try:
                resp = self._session.request(
                    method,
                    url,
                    headers=hdrs,
                    data=body() if body is not None else None,
                    stream=stream,
                    timeout=(10.0, self.timeout),
                    allow_redirects=method in ("GET", "HEAD"),
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if retry and attempt < self.retries:
                    log.warning(
                        "registry %s: %s failed (%s); retrying",
                        self.host,
                        method,
                        type(exc).__name__,
                    )
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise _ConnectionFailed(
                    f"registry {self.host}: {self._describe(method, url)} got no answer "
                    f"({type(exc).__name__}); check the registry address and that it is up"
                ) from None
            if resp.status_code == 401 and auth_rounds < 2:
                resp.close()
                self._authorize(resp, scopes, refresh=auth_rounds == 1)
                auth_rounds += 1
                continue
            if resp.status_code == 401:
                resp.close()
                raise AuthError(
                    f"registry {self.host} refused the credentials ({self.auth.describe()}) "
                    f"for {self._describe(method, url)} (HTTP 401); fix the login or password"
                )
            if resp.status_code == 403:
                resp.close()
                raise AuthError(
                    f"registry {self.host}: access denied for {self._describe(method, url)} "
                    f"(HTTP 403 {_registry_message(resp)}); grant push/pull on the repository"
                )
            if resp.status_code in RETRY_STATUS and retry and attempt < self.retries:
                log.warning(
                    "registry %s: %s answered %s; retrying", self.host, method, resp.status_code
                )
                resp.close()
                self._sleep(attempt, resp)
                attempt += 1
                continue
            return resp

    def _authorize(
        self, resp: requests.Response, scopes: tuple[str, ...], *, refresh: bool
    ) -> None:
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        creds = self.auth.credentials(refresh=refresh)
        if scheme == "basic":
            if creds is None:
                raise AuthError(
                    f"registry {self.host} requires a login and there is none "
                    f"({self.auth.describe()}); add it to the containers auth.json"
                )
            raw = f"{creds.username}:{creds.password}".encode()
            encoded = base64.b64encode(raw).decode("ascii")
            redact.register_secret(encoded)
            self._authz = f"Basic {encoded}"
            return
        if scheme == "bearer":
            params = dict(_CHALLENGE_PARAM.findall(challenge))
            realm = params.pop("realm", None)
            if not realm:
                raise AuthError(f"registry {self.host}: Bearer challenge without a realm")
            with self._lock:
                if params.get("scope"):
                    self._scopes.update(params["scope"].split(" "))
                self._scopes.update(scopes)
                wanted = sorted(self._scopes)
            query: list[tuple[str, str]] = []
            if params.get("service"):
                query.append(("service", params["service"]))
            query += [("scope", s) for s in wanted]
            basic = (creds.username, creds.password) if creds is not None else None
            try:
                answer = self._session.get(realm, params=query, auth=basic, timeout=(10.0, 60.0))
            except (requests.ConnectionError, requests.Timeout):
                raise _ConnectionFailed(
                    f"registry {self.host}: token service {urlsplit(realm).netloc} unreachable; "
                    "check the network"
                ) from None
            if answer.status_code in (401, 403):
                raise AuthError(
                    f"registry {self.host}: token service refused the credentials "
                    f"({self.auth.describe()}, HTTP {answer.status_code}); fix the login"
                )
            if answer.status_code != 200:
                raise RegistryError(
                    f"registry {self.host}: token service answered HTTP {answer.status_code}"
                )
            try:
                body = answer.json()
                token = body.get("token") or body.get("access_token")
            except ValueError:
                token = None
            if not token:
                raise RegistryError(f"registry {self.host}: token service returned no token")
            redact.register_secret(token)
            self._authz = f"Bearer {token}"
            return
        raise AuthError(
            f"registry {self.host}: unsupported auth challenge {scheme or '(none)'!r} (HTTP 401)"
        )

    @staticmethod
    def _scope(repository: str, actions: str = "pull,push") -> tuple[str, ...]:
        return (f"repository:{repository}:{actions}",)

    def _fail(self, resp: requests.Response, what: str) -> RegistryError:
        message = _registry_message(resp)
        resp.close()
        return RegistryError(
            f"registry {self.host}: {what} failed with HTTP {resp.status_code} {message}".rstrip()
        )

    # ---- checks ---------------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: reachability and auth in one request (401 challenges are answered)."""
        resp = self._send("GET", f"{self.scheme}://{self.host}/v2/", scopes=())
        if resp.status_code != 200:
            raise self._fail(resp, "GET /v2/")
        resp.close()

    def blob_exists(self, repository: str, digest: str) -> bool:
        resp = self._send(
            "HEAD", self.url(repository, f"blobs/{digest}"), scopes=self._scope(repository)
        )
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"HEAD blob {digest[:19]}")

    def manifest_exists(self, repository: str, reference: str) -> bool:
        resp = self._send(
            "HEAD",
            self.url(repository, f"manifests/{reference}"),
            scopes=self._scope(repository, "pull"),
            headers={"Accept": ACCEPT_ALL},
        )
        resp.close()
        if resp.status_code in (200, 404):
            return resp.status_code == 200
        raise self._fail(resp, f"HEAD manifest {reference}")

    # ---- manifests -------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The manifest (or index) bytes and media type; a missing image is a bad input."""
        resp = self._send(
            "GET",
            self.url(repository, f"manifests/{reference}"),
            scopes=self._scope(repository, "pull"),
            headers={"Accept": ACCEPT_ALL},
        )
        if resp.status_code == 404:
            resp.close()
            raise BadInputError(
                f"image {self.host}/{repository}:{reference} not found; check the name and tag"
            )
        if resp.status_code != 200:
            raise self._fail(resp, f"GET manifest {reference}")
        data = resp.content
        if reference.startswith("sha256:") and sha256_digest(data) != reference:
            raise RegistryError(
                f"registry {self.host}: manifest {reference} content does not match its digest"
            )
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return data, media_type

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        resp = self._send(
            "PUT",
            self.url(repository, f"manifests/{reference}"),
            scopes=self._scope(repository),
            headers={"Content-Type": media_type},
            body=lambda: data,
        )
        if resp.status_code not in (200, 201, 202):
            raise self._fail(resp, f"PUT manifest {reference}")
        resp.close()
        digest = sha256_digest(data)
        reported = resp.headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise RegistryError(
                f"registry {self.host}: stored manifest digest {reported} differs from {digest}"
            )
        return digest

    # ---- blob reads ------------------------------------------------------------------------

    def get_blob(self, repository: str, digest: str) -> bytes:
        resp = self.open_blob(repository, digest)
        try:
            data = resp.content
        finally:
            resp.close()
        if sha256_digest(data) != digest:
            raise RegistryError(f"registry {self.host}: blob {digest} content does not match")
        return data

    def open_blob(self, repository: str, digest: str) -> requests.Response:
        """A streamed GET of a blob (redirects to storage are followed without our auth)."""
        resp = self._send(
            "GET",
            self.url(repository, f"blobs/{digest}"),
            scopes=self._scope(repository, "pull"),
            stream=True,
        )
        if resp.status_code == 404:
            resp.close()
            raise RegistryError(
                f"registry {self.host}: blob {digest} of {repository} is missing; push again"
            )
        if resp.status_code != 200:
            raise self._fail(resp, f"GET blob {digest[:19]}")
        return resp

    def read_range(self, repository: str, digest: str, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of a blob, or None when ranges are unsupported."""
        resp = self._send(
            "GET",
            self.url(repository, f"blobs/{digest}"),
            scopes=self._scope(repository, "pull"),
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            stream=True,
        )
        try:
            if resp.status_code == 206:
                return resp.content
            if resp.status_code == 416:
                return b""
            if resp.status_code == 200:
                return None
            raise self._fail(resp, f"GET blob range {digest[:19]}")
        finally:
            resp.close()

    # ---- blob writes -----------------------------------------------------------------------

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount; True when the registry linked the blob without an upload."""
        query = urlencode({"mount": digest, "from": from_repository})
        resp = self._send(
            "POST",
            self.url(repository, f"blobs/uploads/?{query}"),
            scopes=(*self._scope(repository), *self._scope(from_repository, "pull")),
        )
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202 and resp.headers.get("Location"):
            cancel = self._send(
                "DELETE", self._absolute(resp.headers["Location"]), scopes=self._scope(repository)
            )
            cancel.close()
            return False
        if resp.status_code in (202, 404, 405):
            return False
        raise self._fail(resp, f"mount blob {digest[:19]}")

    def _start_upload(self, repository: str) -> str:
        resp = self._send(
            "POST", self.url(repository, "blobs/uploads/"), scopes=self._scope(repository)
        )
        resp.close()
        if resp.status_code not in (201, 202) or not resp.headers.get("Location"):
            if resp.status_code == 404:
                raise RegistryError(
                    f"registry {self.host}: repository {repository} does not exist and the "
                    "registry does not create it on push; create it (registry.create_repository)"
                )
            raise self._fail(resp, "start blob upload")
        return self._absolute(resp.headers["Location"])

    def _upload_offset(self, repository: str, location: str) -> tuple[int, str] | None:
        """How many bytes the registry holds for this upload (and its current URL), or None."""
        try:
            resp = self._send("GET", location, scopes=self._scope(repository))
        except _ConnectionFailed:
            return None
        resp.close()
        if resp.status_code not in (200, 204):
            return None
        match = re.match(r"^(?:bytes=)?0-(\d+)$", resp.headers.get("Range", ""))
        reported = int(match.group(1)) + 1 if match else 0
        return reported, self._absolute(resp.headers.get("Location") or location)

    def _patch(self, repository: str, location: str, view: memoryview, start: int) -> str:
        end = start + len(view)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{end - 1}",
        }
        for attempt in range(self.retries + 1):
            resp: requests.Response | None
            try:
                resp = self._send(
                    "PATCH",
                    location,
                    scopes=self._scope(repository),
                    headers=headers,
                    body=lambda: _ViewBody(view),
                    retry=False,
                )
            except _ConnectionFailed:
                resp = None
            if resp is not None:
                resp.close()
                if resp.status_code in (201, 202, 204):
                    return self._absolute(resp.headers.get("Location") or location)
                if resp.status_code == 416:
                    raise _RestartBlob("registry rejected the chunk range (416)")
                if resp.status_code == 404:
                    raise _RestartBlob("registry forgot the upload session (404)")
                if resp.status_code not in RETRY_STATUS:
                    raise self._fail(resp, f"PATCH chunk {start}-{end - 1}")
            self._sleep(attempt, resp)
            state = self._upload_offset(repository, location)
            if state is None:
                continue  # registry unreachable or upload unknown: try the same chunk again
            reported, location = state
            if reported == end:
                return location  # the chunk landed; the answer was lost
            if reported != start:
                raise _RestartBlob(f"registry holds {reported} bytes, expected {start} or {end}")
            log.info("registry %s: resending chunk at offset %d", self.host, start)
        raise _RestartBlob(f"chunk at {start} failed {self.retries + 1} times")

    def _finish_upload(self, repository: str, location: str, digest: str) -> None:
        parts = urlsplit(location)
        query = urlencode([*parse_qsl(parts.query), ("digest", digest)])
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
        resp = self._send(
            "PUT", url, scopes=self._scope(repository), headers={"Content-Length": "0"}, retry=False
        )
        resp.close()
        if resp.status_code in (201, 204):
            return
        if resp.status_code in RETRY_STATUS or resp.status_code in (404, 416):
            raise _RestartBlob(f"finishing the upload answered {resp.status_code}")
        raise self._fail(resp, f"PUT blob {digest[:19]}")

    def upload_blob(
        self,
        repository: str,
        open_stream: StreamFactory,
        size: int,
        *,
        progress: Callable[[int], None] | None = None,
        expected_digest: str | None = None,
    ) -> UploadResult:
        """Upload ``size`` bytes from ``open_stream()`` as one blob; return its digest.

        ``open_stream`` is called again when the blob must restart from byte 0.
        """
        restarts = 0
        while True:
            try:
                digest = self._upload_once(repository, open_stream, size, progress)
            except (_RestartBlob, _ConnectionFailed) as exc:
                if restarts >= self.retries:
                    raise RegistryError(
                        f"registry {self.host}: blob upload to {repository} failed after "
                        f"{restarts + 1} attempts ({exc}); check the registry and retry the step"
                    ) from None
                log.warning("registry %s: restarting blob upload (%s)", self.host, exc)
                self._sleep(restarts)
                restarts += 1
                continue
            if expected_digest and digest != expected_digest:
                raise RegistryError(
                    f"blob for {repository}: got {digest}, expected {expected_digest}; "
                    "the source changed during the copy"
                )
            return UploadResult(digest=digest, size=size, restarts=restarts)

    def _upload_once(
        self,
        repository: str,
        open_stream: StreamFactory,
        size: int,
        progress: Callable[[int], None] | None,
    ) -> str:
        location = self._start_upload(repository)
        pipeline = ChunkPipeline(open_stream(), self.chunk_bytes)
        offset = 0
        try:
            for view in pipeline.chunks():
                location = self._patch(repository, location, view, offset)
                offset += len(view)
                if progress is not None:
                    progress(len(view))
            digest = pipeline.digest()
        finally:
            pipeline.close()
        if offset != size:
            raise RegistryError(
                f"blob for {repository}: stream gave {offset} bytes, planned {size}; "
                "the source changed during the build, run it again"
            )
        try:
            self._finish_upload(repository, location, digest)
        except (_RestartBlob, _ConnectionFailed):
            # The PUT may have landed and only its answer got lost (a reset, a stall, a 5xx from
            # a proxy after the commit): ask before sending the whole blob again.
            if self._blob_landed(repository, digest):
                log.info("registry %s: blob %s landed; its answer was lost", self.host, digest)
                return digest
            raise
        return digest

    def _blob_landed(self, repository: str, digest: str) -> bool:
        try:
            return self.blob_exists(repository, digest)
        except RegistryError:
            return False

    def upload_bytes(self, repository: str, data: bytes) -> str:
        """Upload a small blob (config) unless it is already there; return its digest."""
        digest = sha256_digest(data)
        if not self.blob_exists(repository, digest):
            self.upload_blob(repository, lambda: BytesReadable(data), len(data))
        return digest
