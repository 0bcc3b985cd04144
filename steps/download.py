"""Download step: one Hub revision, pinned to its commit sha, into a plain directory.

Why not ``snapshot_download``/``hf_hub_download``: huggingface_hub 1.33 writes each file to a
process-unique ``.incomplete`` name and deletes it on failure, so a killed pod starts every file
over; its HTTP client (httpx) also moved bytes at about half of curl's rate on loopback here. So
huggingface_hub does what it is good at (the model-info call, id validation, request headers,
error classes) and this module streams the files itself with ``requests``:

* the revision is resolved once to a commit sha and every file URL is pinned to that sha;
* each file goes to ``<dest>/.cache/synesis/download/partial/<key>.incomplete`` and resumes with
  ``Range`` after a dropped connection (in this run) or a killed process (next run); the key
  binds the path to the file's content id (LFS sha256 or git blob id), so a partial file of an
  older revision is never continued;
* a finished file is fsynced, renamed to ``<dest>/<path>`` and gets a small "done" record, so a
  re-run after a crash skips it without a single request;
* the step marker is written last; its hit makes a repeated run request nothing at all when the
  revision is a full sha (one model-info call otherwise, to resolve a branch or tag).

Everything this step keeps besides the model files lives under ``<dest>/.cache/`` — the build
must not package that directory (see ``CACHE_DIR``), or better, package the marker's file list.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import quote

import click
import requests
import urllib3
from pydantic import BaseModel, ConfigDict

from steps import fsutil, markers, redact, settings
from steps.errors import (
    AuthError,
    BadInputError,
    HubError,
    InsufficientSpaceError,
    SynesisError,
)
from steps.progress import Progress

STEP = "download"

# Weights as safetensors, configs, tokenizers and chat templates: what a server needs.
DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.json",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "vocab*",
    "merges.txt",
    "*.jinja",
    "chat_template*",
)
# Duplicate weight formats that would double the image: pickles, GGUF, Meta's originals.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    "*.bin",
    "*.pth",
    "*.pt",
    "*.gguf",
    "original/**",
    "consolidated*",
)

# Relative to dest. Holds partial files and done records; never part of the model.
CACHE_DIR = ".cache"
_WORK_DIR = Path(CACHE_DIR) / "synesis" / "download"

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_CHUNK_BYTES = 1 << 20
_WRITEBACK_BYTES = 32 << 20  # start disk writes this often so the final fsync is short
_MAX_FRUITLESS_ATTEMPTS = 5
_INFO_ATTEMPTS = 3
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}

log = logging.getLogger(__name__)

# huggingface_hub reads this once, at import: without it every header build may fetch an
# "agent harness" registry from the endpoint and report library versions. A pipeline pod has
# no use for either, and air-gapped mirrors would log a failed request per run.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class DownloadResult(BaseModel):
    """What the step did; printed as the JSON line Argo reads as outputs."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    revision: str
    commit_sha: str
    files: int
    bytes: int
    seconds: float
    skipped: bool
    dest: str


@dataclass(frozen=True)
class RemoteFile:
    """A file of the pinned commit: repo path, size and content id (LFS sha256 or blob id)."""

    path: str
    size: int
    etag: str


# -- file selection -------------------------------------------------------------------------


def _matches(path: str, pattern: str) -> bool:
    """Hub-style glob on the whole path; a pattern without ``/`` also matches the base name.

    So ``tokenizer*`` keeps ``inference/tokenizer.json`` too, and ``original/`` means the folder.
    """
    if pattern.endswith("/"):
        pattern += "*"
    if fnmatchcase(path, pattern):
        return True
    return "/" not in pattern and fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def select_files(paths: Iterable[str], allow: Sequence[str], ignore: Sequence[str]) -> list[str]:
    """Paths kept by ``allow`` and not dropped by ``ignore`` (ignore wins), sorted."""
    return sorted(
        p
        for p in paths
        if any(_matches(p, a) for a in allow) and not any(_matches(p, i) for i in ignore)
    )


def _safe_relpath(path: str, model_id: str) -> str:
    """Refuse repo paths that would escape dest (a hostile or broken listing)."""
    pure = PurePosixPath(path)
    if (
        not path
        or pure.is_absolute()
        or any(part in ("..", ".", "") for part in path.split("/"))
        or "\\" in path
        or "\x00" in path
    ):
        raise HubError(f"{model_id}: the Hub listed an unsafe file path {path!r}; refusing it")
    return path


# -- validation and Hub errors --------------------------------------------------------------


def _validate_inputs(model_id: str, revision: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError as exc:
        raise BadInputError(
            f"model id {model_id!r} is not a Hub repo id; use 'namespace/name' with letters, "
            "digits, '-', '_' or '.'"
        ) from exc
    if not revision or any(ch.isspace() or ord(ch) < 32 for ch in revision):
        raise BadInputError(
            f"revision {revision!r} of {model_id} is not valid; use a branch, tag or commit sha"
        )


def _token_hint() -> str:
    return "set HF_TOKEN or mount the hf-hub-secret (file at HF_TOKEN_PATH)"


def _gated_error(model_id: str, endpoint: str, token: str | None) -> BadInputError | AuthError:
    if not token:
        return BadInputError(
            f"{model_id} is a gated model and no Hub token was found; accept its terms on "
            f"{endpoint}/{model_id}, then {_token_hint()}"
        )
    return AuthError(
        f"the Hub token has no access to gated model {model_id}; accept its terms on "
        f"{endpoint}/{model_id} with the token's account, or use another token"
    )


def _map_info_error(
    exc: Exception, *, model_id: str, revision: str, endpoint: str, token: str | None
) -> Exception:
    """huggingface_hub/httpx exceptions of the model-info call -> one-line Synesis errors."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return _gated_error(model_id, endpoint, token)
    if isinstance(exc, RevisionNotFoundError):
        return BadInputError(
            f"revision {revision!r} of {model_id} does not exist on {endpoint}; use an existing "
            "branch, tag or full commit sha"
        )
    if isinstance(exc, RepositoryNotFoundError):
        detail = (
            "check the id (and that the token can read it if it is private)"
            if token
            else f"check the id; if it is private, {_token_hint()}"
        )
        return BadInputError(f"model {model_id} not found on {endpoint}; {detail}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            return AuthError(
                f"the Hub refused the token for {model_id} (HTTP 401); check HF_TOKEN or the "
                "hf-hub-secret"
            )
        return HubError(
            f"Hub model info for {model_id}@{revision} failed with HTTP {status}; retry later "
            "or check HF_ENDPOINT"
        )
    if isinstance(exc, (httpx.HTTPError, OSError)):
        return HubError(
            f"cannot reach the Hub at {endpoint} for {model_id}@{revision} "
            f"({type(exc).__name__}); check the network, proxy settings or HF_ENDPOINT"
        )
    return exc


def _is_transient_info_error(exc: Exception) -> bool:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        response = exc.response
        return response is not None and response.status_code in _TRANSIENT_STATUS
    return isinstance(exc, (httpx.TransportError, ConnectionError))


@dataclass(frozen=True)
class _Resolved:
    commit_sha: str
    files: list[RemoteFile]
    gated: bool


def _resolve(*, endpoint: str, model_id: str, revision: str, token: str | None) -> _Resolved:
    """One model-info call: the commit sha of ``revision`` and every file with size and id."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, library_name="synesis-pipelines")
    for attempt in range(1, _INFO_ATTEMPTS + 1):
        try:
            info = api.model_info(
                model_id,
                revision=revision,
                files_metadata=True,
                token=token or False,
                timeout=settings.http_timeout_seconds(),
            )
            break
        except Exception as exc:
            if attempt < _INFO_ATTEMPTS and _is_transient_info_error(exc):
                log.warning("model info for %s failed (%s); retrying", model_id, exc)
                time.sleep(attempt)
                continue
            mapped = _map_info_error(
                exc, model_id=model_id, revision=revision, endpoint=endpoint, token=token
            )
            if mapped is exc:
                raise
            raise mapped from exc
    if not info.sha or not _FULL_SHA.match(info.sha):
        raise HubError(
            f"the Hub at {endpoint} returned no commit sha for {model_id}@{revision}; check that "
            "HF_ENDPOINT points at a Hugging Face Hub"
        )
    files: list[RemoteFile] = []
    for sibling in info.siblings or []:
        size = sibling.lfs.size if sibling.lfs else sibling.size
        etag = sibling.lfs.sha256 if sibling.lfs else sibling.blob_id
        if size is None or not etag:
            raise HubError(
                f"the Hub listed {sibling.rfilename} of {model_id} without size or id; retry, "
                "or check that HF_ENDPOINT is a Hugging Face Hub"
            )
        path = _safe_relpath(sibling.rfilename, model_id)
        if PurePosixPath(path).parts[0] == CACHE_DIR:
            log.warning(
                "skipping %s of %s: %s/ is this step's own directory", path, model_id, CACHE_DIR
            )
            continue
        files.append(RemoteFile(path, int(size), etag))
    return _Resolved(commit_sha=info.sha, files=files, gated=bool(info.gated))


# -- local state: partial files and done records --------------------------------------------


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


class _LocalState:
    """Partial files and per-file done records under ``<dest>/.cache/synesis/download``."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.work = dest / _WORK_DIR
        self.partial_dir = self.work / "partial"
        self.done_dir = self.work / "done"

    def partial(self, item: RemoteFile) -> Path:
        return self.partial_dir / f"{_key(item.path, item.etag)}.incomplete"

    def partial_size(self, item: RemoteFile) -> int:
        try:
            return self.partial(item).stat().st_size
        except FileNotFoundError:
            return 0

    def _record(self, path: str) -> Path:
        return self.done_dir / f"{_key(path)}.json"

    def is_complete(self, item: RemoteFile) -> bool:
        """True when ``dest/path`` is this exact file: right size and a matching done record."""
        try:
            if (self.dest / item.path).stat().st_size != item.size:
                return False
            record = _DoneRecord.model_validate_json(self._record(item.path).read_text())
        except (OSError, ValueError):
            return False
        return record.etag == item.etag and record.size == item.size

    def forget(self, path: str) -> None:
        """Drop a done record before its file is replaced, so it never vouches for new bytes."""
        self._record(path).unlink(missing_ok=True)

    def mark_complete(self, item: RemoteFile) -> None:
        record = _DoneRecord(path=item.path, size=item.size, etag=item.etag)
        fsutil.atomic_write_text(self._record(item.path), record.model_dump_json())

    def remove_stale(self, keep: set[str]) -> list[str]:
        """Delete files an earlier run of this step wrote that the current selection lacks.

        Only paths with a done record are touched, so nothing the step did not write goes.
        """
        removed: list[str] = []
        if not self.done_dir.is_dir():
            return removed
        for record_path in sorted(self.done_dir.glob("*.json")):
            try:
                record = _DoneRecord.model_validate_json(record_path.read_text())
                path = _safe_relpath(record.path, "previous download")
            except (OSError, ValueError, HubError):
                record_path.unlink(missing_ok=True)
                continue
            if path in keep:
                continue
            target = self.dest / path
            target.unlink(missing_ok=True)
            record_path.unlink(missing_ok=True)
            removed.append(path)
            parent = target.parent
            while parent != self.dest and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        return removed

    def drop_partials(self) -> None:
        shutil.rmtree(self.partial_dir, ignore_errors=True)


class _DoneRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    size: int
    etag: str


# -- fetching one file ----------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying with Range (dropped connection, timeout, 5xx)."""


class _Cancelled(Exception):
    """Another file failed; stop this one quickly (its partial stays for the next run)."""


_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
)


class _Fetcher:
    """Streams files of one pinned commit to their partial files and renames them into place."""

    def __init__(
        self,
        *,
        endpoint: str,
        model_id: str,
        commit_sha: str,
        token: str | None,
        state: _LocalState,
        on_bytes: Callable[[int], None],
        stop: threading.Event,
    ) -> None:
        from huggingface_hub.utils import build_hf_headers

        self._endpoint = endpoint
        self._model_id = model_id
        self._commit_sha = commit_sha
        self._token = token
        self._state = state
        self._on_bytes = on_bytes
        self._stop = stop
        self._timeout = settings.http_timeout_seconds()
        headers = build_hf_headers(token=token or False, library_name="synesis-pipelines")
        headers["Accept-Encoding"] = "identity"  # sizes and Range offsets are of the raw file
        self._headers = headers
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def url(self, item: RemoteFile) -> str:
        return f"{self._endpoint}/{self._model_id}/resolve/{self._commit_sha}/{quote(item.path)}"

    def fetch(self, item: RemoteFile) -> None:
        """Bring ``item`` to ``dest/path``: resume, retry transient failures, rename, record."""
        partial = self._state.partial(item)
        partial.parent.mkdir(parents=True, exist_ok=True)
        fruitless = 0
        while True:
            if self._stop.is_set():  # another file failed: don't open a transfer to drop it
                raise _Cancelled()
            have = self._state.partial_size(item)
            if have > item.size:
                partial.unlink()
                have = 0
            if have == item.size:
                break
            try:
                self._transfer(item, partial, have)
            except _Transient as exc:
                progressed = self._state.partial_size(item) > have
                fruitless = 0 if progressed else fruitless + 1
                if fruitless >= _MAX_FRUITLESS_ATTEMPTS:
                    raise HubError(
                        f"{item.path} of {self._model_id}@{self._commit_sha[:12]} kept failing "
                        f"({exc}); run the step again to resume, or check the network"
                    ) from exc
                wait_s = min(0.5 * 2**fruitless, 8.0)
                log.warning("%s: %s; resuming in %.1f s", item.path, exc, wait_s)
                if self._stop.wait(wait_s):
                    raise _Cancelled() from exc
        if item.size == 0:
            partial.touch()
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        final = self._state.dest / item.path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(partial, 0o644)
        self._state.forget(item.path)
        os.replace(partial, final)
        fsutil.fsync_dir(final.parent)
        self._state.mark_complete(item)

    def _transfer(self, item: RemoteFile, partial: Path, have: int) -> None:
        headers = dict(self._headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            response = self._session().get(
                self.url(item),
                headers=headers,
                stream=True,
                timeout=(min(self._timeout, 30.0), self._timeout),
                allow_redirects=True,
            )
        except _TRANSIENT_EXCEPTIONS as exc:
            raise _Transient(type(exc).__name__) from exc
        with response:
            status = response.status_code
            if status == 416:
                partial.unlink(missing_ok=True)
                raise _Transient("the server refused the resume offset; starting the file over")
            if status in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {status}")
            if status not in (200, 206):
                self._raise_for_file(item, response)
            if have and status == 200:
                have = 0  # the server ignored Range: start the file over
            elif status == 206 and not response.headers.get("Content-Range", "").startswith(
                f"bytes {have}-"
            ):
                partial.unlink(missing_ok=True)
                raise _Transient("the server answered another range; starting the file over")
            self._stream(item, response, partial, append=bool(have))

    def _stream(
        self, item: RemoteFile, response: requests.Response, partial: Path, *, append: bool
    ) -> None:
        written = partial.stat().st_size if append else 0
        flushed = written
        # Unbuffered, and read1 (what one recv gives, up to 1 MiB): every byte that arrived is on
        # disk before the next read, so a reset connection loses nothing a resume would need.
        with partial.open("ab" if append else "wb", buffering=0) as handle:
            raw = response.raw
            while True:
                if self._stop.is_set():
                    raise _Cancelled()
                try:
                    chunk = raw.read1(_CHUNK_BYTES, decode_content=True)
                except _TRANSIENT_EXCEPTIONS as exc:
                    raise _Transient(f"connection lost after {written} bytes") from exc
                if not chunk:
                    break
                written += len(chunk)
                if written > item.size:
                    raise HubError(
                        f"{item.path} of {self._model_id} is bigger than the {item.size} bytes "
                        "the Hub listed; retry later"
                    )
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise _disk_error(exc, partial) from exc
                self._on_bytes(len(chunk))
                if written - flushed >= _WRITEBACK_BYTES:
                    fsutil.start_writeback(handle.fileno(), flushed, written - flushed)
                    flushed = written
        if written < item.size:
            raise _Transient(f"connection closed after {written} of {item.size} bytes")

    def _raise_for_file(self, item: RemoteFile, response: requests.Response) -> NoReturn:
        status = response.status_code
        code = response.headers.get("X-Error-Code")
        if code == "GatedRepo":
            raise _gated_error(self._model_id, self._endpoint, self._token)
        if status == 401:
            if self._token:
                raise AuthError(
                    f"the Hub refused the token for {self._model_id} (HTTP 401); check HF_TOKEN "
                    "or the hf-hub-secret"
                )
            raise BadInputError(f"the Hub wants a token for {self._model_id}; {_token_hint()}")
        if status == 403:
            raise AuthError(
                f"the Hub refused {item.path} of {self._model_id} (HTTP 403); check that the "
                "token can read this repo"
            )
        raise HubError(
            f"{item.path} of {self._model_id}@{self._commit_sha[:12]} could not be fetched "
            f"(HTTP {status}{', ' + code if code else ''}); retry later"
        )


def _disk_error(exc: OSError, where: Path) -> Exception:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            f"{where.parent}: the volume filled up during the download; free space or use a "
            "larger volume/PVC, then run again to resume"
        )
    return exc


@contextmanager
def _exclusive(state: _LocalState) -> Iterator[None]:
    """Hold an exclusive lock on dest for this process, so two runs never append to one file.

    An ``argo retry`` while the old pod still runs, or two workflows for one model, would
    otherwise both resume the same partial files. flock is released by the kernel when the
    process dies, so a killed run never leaves a stale lock.
    """
    state.work.mkdir(parents=True, exist_ok=True)
    with (state.work / "lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SynesisError(
                f"{state.dest}: another download is writing there; wait for it to finish or "
                "stop it, then run again"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- the step -------------------------------------------------------------------------------


def _fingerprint_inputs(
    *, model_id: str, commit_sha: str, dest: Path, allow: Sequence[str], ignore: Sequence[str]
) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "commit_sha": commit_sha,
        "dest": str(dest),
        "allow_patterns": list(allow),
        "ignore_patterns": list(ignore),
    }


def _marker_still_true(marker: markers.Marker, dest: Path) -> bool:
    """A marker only counts while its files are still there with their sizes (stat, no I/O)."""
    try:
        for entry in marker.outputs["files"]:
            if (dest / entry["path"]).stat().st_size != entry["size"]:
                return False
    except (KeyError, TypeError, OSError):
        return False
    return True


def _find_done(state_dir: Path, inputs: dict[str, Any], dest: Path) -> markers.Marker | None:
    marker = markers.find_done(state_dir, STEP, inputs)
    if marker is None:
        return None
    if not _marker_still_true(marker, dest):
        log.warning("download marker matches but files in %s changed; downloading again", dest)
        return None
    return marker


def _skipped(
    marker: markers.Marker, *, model_id: str, revision: str, dest: Path, started: float
) -> DownloadResult:
    log.info("%s@%s already downloaded to %s; nothing to fetch", model_id, revision, dest)
    return DownloadResult(
        model_id=model_id,
        revision=revision,
        commit_sha=marker.outputs["commit_sha"],
        files=len(marker.outputs["files"]),
        bytes=marker.outputs["bytes"],
        seconds=round(time.monotonic() - started, 3),
        skipped=True,
        dest=str(dest),
    )


def download(
    *,
    model_id: str,
    revision: str = "main",
    dest: Path,
    state_dir: Path | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    token: str | None = None,
    workers: int | None = None,
) -> DownloadResult:
    """Download the selected files of ``model_id`` at ``revision`` (pinned to its sha) into dest.

    Args:
        model_id: Hub repo id, ``namespace/name``.
        revision: branch, tag or commit sha; resolved once, then every file is fetched at the sha.
        dest: directory that receives the files at their repo paths (created if missing).
        state_dir: where the step marker goes; default ``<dest parent>/.synesis``.
        allow_patterns / ignore_patterns: globs replacing the defaults (ignore wins).
        token: Hub token; default ``HF_TOKEN`` or the mounted secret file. Never logged.
        workers: files fetched at once; default ``SYNESIS_DOWNLOAD_WORKERS`` (4).

    Returns:
        A ``DownloadResult``; ``skipped`` is True when the marker showed the work was done.

    Raises:
        BadInputError: bad id/revision, unknown repo or revision, gated repo without a token,
            nothing selected (exit 2).
        InsufficientSpaceError: dest's volume cannot hold the files (checked before writing).
        AuthError / HubError: the Hub refused the token or failed (exit 1).
    """
    started = time.monotonic()
    _validate_inputs(model_id, revision)
    allow = list(allow_patterns) if allow_patterns else list(DEFAULT_ALLOW_PATTERNS)
    ignore = list(ignore_patterns) if ignore_patterns is not None else list(DEFAULT_IGNORE_PATTERNS)
    dest = dest.absolute()
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"--dest {dest} is a file; give a directory")
    state_dir = (state_dir or markers.default_state_dir(dest)).absolute()
    token = token or settings.hf_token()
    redact.register_secret(token)
    endpoint = settings.hf_endpoint()
    # Read every setting now, so a bad one fails before any request (exit 2, names the variable).
    workers = workers or settings.download_workers()
    settings.http_timeout_seconds()
    settings.progress_interval_seconds()
    settings.progress_disabled()

    if _FULL_SHA.match(revision):
        # A pinned sha cannot move: the marker alone decides, without asking the Hub.
        inputs = _fingerprint_inputs(
            model_id=model_id, commit_sha=revision, dest=dest, allow=allow, ignore=ignore
        )
        if marker := _find_done(state_dir, inputs, dest):
            return _skipped(
                marker, model_id=model_id, revision=revision, dest=dest, started=started
            )

    resolved = _resolve(endpoint=endpoint, model_id=model_id, revision=revision, token=token)
    sha = resolved.commit_sha
    log.info("%s@%s is commit %s", model_id, revision, sha)
    inputs = _fingerprint_inputs(
        model_id=model_id, commit_sha=sha, dest=dest, allow=allow, ignore=ignore
    )
    if marker := _find_done(state_dir, inputs, dest):
        return _skipped(marker, model_id=model_id, revision=revision, dest=dest, started=started)

    if resolved.gated and not token:
        raise _gated_error(model_id, endpoint, token)
    by_path = {f.path: f for f in resolved.files}
    selected = [by_path[p] for p in select_files(by_path, allow, ignore)]
    if not selected:
        raise BadInputError(
            f"no file of {model_id}@{sha[:12]} matches --allow {allow} minus --ignore {ignore}; "
            "adjust the patterns"
        )
    if allow_patterns is None and not any(f.path.endswith(".safetensors") for f in selected):
        raise BadInputError(
            f"{model_id}@{sha[:12]} has no *.safetensors weights; pick a revision with "
            "safetensors, or pass --allow/--ignore to take other formats on purpose"
        )

    state = _LocalState(dest)
    with _exclusive(state):
        todo = [f for f in selected if not state.is_complete(f)]
        total_bytes = sum(f.size for f in selected)
        needed = sum(f.size - min(state.partial_size(f), f.size) for f in todo)
        fsutil.ensure_free_space(
            dest, needed, what=f"download of {model_id}@{sha[:12]} ({len(todo)} files)"
        )

        markers.invalidate(state_dir, STEP)
        removed = state.remove_stale({f.path for f in selected})
        if removed:
            log.info(
                "removed %d files of an earlier revision: %s", len(removed), ", ".join(removed)
            )
        log.info(
            "fetching %d of %d files (%s) of %s@%s into %s",
            len(todo),
            len(selected),
            fsutil.human_bytes(needed),
            model_id,
            sha[:12],
            dest,
        )
        _fetch_all(
            todo,
            selected_count=len(selected),
            needed=needed,
            endpoint=endpoint,
            model_id=model_id,
            sha=sha,
            token=token,
            state=state,
            workers=workers,
        )
        state.drop_partials()
        markers.write_marker(
            state_dir,
            STEP,
            inputs,
            {
                "commit_sha": sha,
                "revision": revision,
                "dest": str(dest),
                "bytes": total_bytes,
                "files": [{"path": f.path, "size": f.size, "etag": f.etag} for f in selected],
            },
        )
        return DownloadResult(
            model_id=model_id,
            revision=revision,
            commit_sha=sha,
            files=len(selected),
            bytes=total_bytes,
            seconds=round(time.monotonic() - started, 3),
            skipped=False,
            dest=str(dest),
        )


def _fetch_all(
    todo: list[RemoteFile],
    *,
    selected_count: int,
    needed: int,
    endpoint: str,
    model_id: str,
    sha: str,
    token: str | None,
    state: _LocalState,
    workers: int,
) -> None:
    """Fetch ``todo`` with a few threads, biggest first; the first failure stops the rest."""
    stop = threading.Event()
    with Progress(
        f"download {model_id}", total_bytes=needed, total_items=selected_count
    ) as progress:
        progress.item_done(selected_count - len(todo))
        fetcher = _Fetcher(
            endpoint=endpoint,
            model_id=model_id,
            commit_sha=sha,
            token=token,
            state=state,
            on_bytes=progress.advance,
            stop=stop,
        )

        def one(item: RemoteFile) -> None:
            fetcher.fetch(item)
            progress.item_done()

        ordered = sorted(todo, key=lambda f: (-f.size, f.path))
        pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(ordered) or 1)))
        futures: list[Future[None]] = []
        try:
            futures = [pool.submit(one, item) for item in ordered]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            stop.set()  # a no-op when every file finished; else running transfers stop
            pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            if error is not None and not isinstance(error, _Cancelled):
                raise error


# -- CLI ------------------------------------------------------------------------------------


@click.command("download")
@click.option("--model", "model_id", required=True, help="Hub repo id, e.g. Qwen/Qwen2.5-0.5B.")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit sha.")
@click.option(
    "--dest",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for the files (usually <volume>/<model-slug>/source).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Marker directory [default: <dest parent>/.synesis].",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    help="Glob of files to take; repeat; replaces the defaults (safetensors, json, tokenizer…).",
)
@click.option(
    "--ignore",
    "ignore",
    multiple=True,
    help="Glob of files to skip; repeat; replaces the defaults (*.bin, *.pth, original/**…).",
)
@click.option("--workers", type=click.IntRange(1, 64), help="Files fetched at once [default: 4].")
def command(
    model_id: str,
    revision: str,
    dest: Path,
    state_dir: Path | None,
    allow: tuple[str, ...],
    ignore: tuple[str, ...],
    workers: int | None,
) -> None:
    """Download a Hub model revision (pinned to its commit sha) into DEST; resumable."""
    from steps.cli import run_step

    run_step(
        lambda: download(
            model_id=model_id,
            revision=revision,
            dest=dest,
            state_dir=state_dir,
            allow_patterns=list(allow) or None,
            ignore_patterns=list(ignore) or None,
            workers=workers,
        )
    )
