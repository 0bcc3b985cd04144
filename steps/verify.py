"""Verify step: read a built image back and check it is a ModelCar KServe can run.

Checks, in order: every layer blob is within the registry profile's cap; the config's diff_ids
match the layers; the merged filesystem has ``sh``, ``ln``, ``sleep`` and ``ls`` (following
symlinks, as ``/bin -> usr/bin`` bases need) and a non-empty ``/models``; files are readable and
directories traversable by any UID; and every expected file is present with its size. Expected
files come from ``--src`` (re-planned) or else from the build marker of the same digest.

Only tar headers are read: uncompressed layers through HTTP range requests (a 70B model is
checked without downloading 140 GB), compressed base layers streamed (they are small). With
``--deep`` every layer is streamed in full, its digest recomputed and each model file's sha256
compared with the source files when ``--src`` is given.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import click
from pydantic import BaseModel, ConfigDict

from steps import markers
from steps.config import load_cluster, registry_profile
from steps.errors import ImageVerifyError
from steps.imageref import LayoutRef, RegistryRef, parse_ref
from steps.imagesource import ImageSource, open_source, resolve_image
from steps.layers import plan_layers
from steps.oci import LAYER_TAR, LAYER_TAR_GZIP, Descriptor, oci_layer_type

STEP = "verify"
MODELCAR_TOOLS = ("sh", "ln", "sleep", "ls")
TOOL_DIRS = ("bin", "usr/bin", "usr/local/bin", "sbin", "usr/sbin")
_WINDOW = 256 * 1024
_NO_DATA = (
    tarfile.LNKTYPE,
    tarfile.SYMTYPE,
    tarfile.DIRTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
)
log = logging.getLogger(__name__)


class VerifyResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    reference: str  # oci://HOST/REPO@sha256:... (KServe storageUri) or oci:/dir@sha256:...
    digest: str
    layers: int
    files: int  # model files found under the prefix
    model_bytes: int
    checked_against: str  # "src", "build-marker" or "none"
    deep: bool
    seconds: float
    skipped: bool = False


@dataclass
class Entry:
    kind: str  # file | dir | symlink | hardlink | other
    size: int
    mode: int
    linkname: str


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class _RangeReader:
    """Reads a blob at offsets through a cached window of range requests."""

    def __init__(self, fetch: Callable[[int, int], bytes | None]) -> None:
        self._fetch = fetch
        self._start = 0
        self._data = b""

    def read(self, offset: int, length: int) -> bytes | None:
        end = offset + length
        if not (self._start <= offset and end <= self._start + len(self._data)):
            data = self._fetch(offset, max(length, _WINDOW))
            if data is None:
                return None
            self._start, self._data = offset, data
        return self._data[offset - self._start : end - self._start]


def _pax_records(payload: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.index(b" ", pos)
        length = int(payload[pos:space])
        key, _, value = payload[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _headers_by_range(reader: _RangeReader, what: str) -> Iterator[tuple[str, Entry]] | None:
    """Entries of an uncompressed tar read header by header, skipping data; None: no ranges."""
    first = reader.read(0, 512)
    if first is None:
        return None

    def walk() -> Iterator[tuple[str, Entry]]:
        offset = 0
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = reader.read(offset, 512)
            if block is None or len(block) < 512:
                raise ImageVerifyError(f"{what}: tar ends without end-of-archive blocks")
            if block == b"\0" * 512:
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ImageVerifyError(f"{what}: invalid tar header at {offset}") from exc
            size = info.size
            payload_at = offset + 512
            padded = size + (-size % 512)
            if info.type in (
                tarfile.XHDTYPE,
                tarfile.XGLTYPE,
                tarfile.GNUTYPE_LONGNAME,
                tarfile.GNUTYPE_LONGLINK,
            ):
                payload = reader.read(payload_at, size) or b""
                if info.type == tarfile.XHDTYPE:
                    pax = _pax_records(payload)
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
                offset = payload_at + padded
                continue
            name = pax.get("path") or long_name or info.name
            linkname = pax.get("linkpath") or long_link or info.linkname
            if "size" in pax:
                size = int(pax["size"])
                padded = size + (-size % 512)
            if info.type in _NO_DATA:
                padded = 0
            yield _norm(name), Entry(_kind(info), size, info.mode, linkname)
            pax, long_name, long_link = {}, None, None
            offset = payload_at + padded

    return walk()


class _IterReader:
    """A file-like over an iterator of byte chunks (for tarfile's streaming mode)."""

    def __init__(self, chunks: Iterator[bytes], hasher: Any | None = None) -> None:
        self._chunks = chunks
        self._buf = b""
        self._hasher = hasher
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            if self._hasher is not None:
                self._hasher.update(chunk)
            self.total += len(chunk)
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _stream_entries(
    fileobj: IO[bytes] | _IterReader,
    *,
    on_file: Callable[[str, IO[bytes]], None] | None = None,
) -> Iterator[tuple[str, Entry]]:
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            name = _norm(info.name)
            if on_file is not None and info.isreg():
                handle = tar.extractfile(info)
                assert handle is not None
                on_file(name, handle)
            yield name, Entry(_kind(info), info.size, info.mode, info.linkname)


def _apply(fs: dict[str, Entry], name: str, entry: Entry) -> None:
    base = posixpath.basename(name)
    if base == ".wh..wh..opq":
        parent = posixpath.dirname(name)
        for key in [k for k in fs if k.startswith(parent + "/")]:
            del fs[key]
        return
    if base.startswith(".wh."):
        target = posixpath.join(posixpath.dirname(name), base[4:])
        for key in [k for k in fs if k == target or k.startswith(target + "/")]:
            del fs[key]
        return
    if name:
        fs[name] = entry


def _lookup(fs: dict[str, Entry], path: str) -> Entry | None:
    """Follow symlinks (in any path component) like the kernel would, 40 hops at most."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        entry = fs.get(candidate)
        if entry is None:
            return None
        if entry.kind == "symlink":
            hops += 1
            if hops > 40:
                return None
            target = entry.linkname
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        if entry.kind == "hardlink":
            entry = fs.get(_norm(entry.linkname), entry)
        resolved.append(part)
        if not parts:
            return entry
    return fs.get("/".join(resolved)) if resolved else Entry("dir", 0, 0o755, "")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _layer_entries(
    source: ImageSource,
    desc: Descriptor,
    *,
    deep: bool,
    on_file: Callable[[str, IO[bytes]], None],
) -> Iterator[tuple[str, Entry]]:
    media = oci_layer_type(desc.mediaType)
    what = f"layer {desc.digest[:19]}"
    if media == LAYER_TAR and not deep:
        reader = _RangeReader(lambda off, n: source.read_range(desc.digest, off, n))
        walked = _headers_by_range(reader, what)
        if walked is not None:
            yield from walked
            return
    if media not in (LAYER_TAR, LAYER_TAR_GZIP):
        raise ImageVerifyError(f"{what}: media type {desc.mediaType} cannot be inspected")
    hasher = hashlib.sha256()
    raw = _IterReader(iter(source.iter_blob(desc.digest)), hasher)
    stream: Any = raw
    if media == LAYER_TAR_GZIP:
        stream = gzip.GzipFile(fileobj=cast(Any, raw), mode="rb")
    yield from _stream_entries(stream, on_file=on_file if deep else None)
    if deep:
        raw.drain()
        if "sha256:" + hasher.hexdigest() != desc.digest or raw.total != desc.size:
            raise ImageVerifyError(f"{what}: content does not match its digest; push again")


def verify(
    *,
    reference: str,
    deep: bool = False,
    src: Path | None = None,
    state_dir: Path | None = None,
    profile: str | None = None,
    auth: str | None = None,
    cap_bytes: int | None = None,
    prefix: str | None = None,
) -> VerifyResult:
    """Check the image at ``reference``; write a verify marker when a state dir is known.

    Raises:
        BadInputError: malformed reference, image not found.
        ImageVerifyError: the image breaks a check (layer over cap, file missing, no shell...).
        RegistryError, AuthError: the registry failed or refused the credentials.
    """
    started = time.monotonic()
    ref = parse_ref(reference)
    cluster = load_cluster()
    profile_name = profile or cluster.registry.profile
    cap = cap_bytes or registry_profile(profile_name).layer_cap_bytes
    source = open_source(
        ref,
        auth_mode=auth or cluster.registry.auth,
        auth_file=cluster.registry.auth_file,
        insecure=cluster.registry.insecure,
    )
    image = resolve_image(ref, source)
    digest = image.digest
    pinned = ref.with_digest(digest)
    shown = pinned.oci_uri()
    state = state_dir or (markers.default_state_dir(src) if src is not None else None)

    expected: dict[str, int] | None = None
    checked_against = "none"
    sources: dict[str, Path] = {}
    src_fingerprint: dict[str, Any] | None = None
    if src is not None:
        plan = plan_layers(src, cap_bytes=cap, prefix=prefix or "models")
        prefix = plan.prefix
        expected = {f.rel_path: f.size for f in plan.files}
        sources = {f.rel_path: f.source for f in plan.files}
        src_fingerprint = plan.fingerprint_inputs()  # a changed source file re-runs verify
        checked_against = "src"
    elif state is not None:
        build = markers.read_marker(state, "build")
        if build is not None and build.outputs.get("digest") == digest:
            expected = {str(k): int(v) for k, v in (build.outputs.get("files") or {}).items()}
            prefix = prefix or str(build.outputs.get("prefix") or "models")
            checked_against = "build-marker"
    prefix = prefix or "models"

    inputs: dict[str, Any] = {
        "digest": digest,
        "reference": str(pinned),
        "deep": deep,
        "cap_bytes": cap,
        "expected": sorted(expected.items()) if expected is not None else None,
        "src": src_fingerprint,
    }
    if state is not None:
        done = markers.find_done(state, STEP, inputs)
        if done is not None:
            return VerifyResult(**{**done.outputs, "skipped": True})
        markers.invalidate(state, STEP)

    over = [d for d in image.manifest.layers if d.size > cap]
    if over:
        raise ImageVerifyError(
            f"{shown}: layer {over[0].digest} is {over[0].size} bytes, over the cap of "
            f"registry profile {profile_name!r} ({cap}); rebuild with that profile"
        )

    fs: dict[str, Entry] = {}
    hashes: dict[str, str] = {}

    def on_file(name: str, handle: IO[bytes]) -> None:
        if not name.startswith(prefix + "/"):
            return
        digest_ = hashlib.sha256()
        while chunk := handle.read(8 << 20):
            digest_.update(chunk)
        hashes[name[len(prefix) + 1 :]] = digest_.hexdigest()

    for desc in image.manifest.layers:
        for name, entry in _layer_entries(source, desc, deep=deep, on_file=on_file):
            _apply(fs, name, entry)

    missing_tools = [
        tool
        for tool in MODELCAR_TOOLS
        if not any(
            (e := _lookup(fs, f"{d}/{tool}")) is not None and e.kind in ("file", "hardlink")
            for d in TOOL_DIRS
        )
    ]
    if missing_tools:
        raise ImageVerifyError(
            f"{shown}: the image has no {', '.join(missing_tools)} (the ModelCar contract needs "
            "sh, ln, sleep, ls); use a base image with a shell, e.g. busybox or ubi-micro"
        )
    model_files = {
        name[len(prefix) + 1 :]: e
        for name, e in fs.items()
        if name.startswith(prefix + "/") and e.kind == "file"
    }
    if not model_files:
        raise ImageVerifyError(f"{shown}: /{prefix} has no files; build from the model dir")
    for name, e in fs.items():
        if not (name == prefix or name.startswith(prefix + "/")):
            continue
        need = 0o555 if e.kind == "dir" else 0o444
        if e.kind in ("dir", "file") and e.mode & need != need:
            raise ImageVerifyError(
                f"{shown}: /{name} has mode {e.mode:o}, not readable by any UID; rebuild"
            )
    if expected is not None:
        for rel, size in sorted(expected.items()):
            found = model_files.get(rel)
            if found is None:
                raise ImageVerifyError(
                    f"{shown}: /{prefix}/{rel} is missing ({checked_against}); rebuild the image"
                )
            if found.size != size:
                raise ImageVerifyError(
                    f"{shown}: /{prefix}/{rel} is {found.size} bytes, expected {size}; rebuild"
                )
    if deep and sources:
        for rel, path in sorted(sources.items()):
            if hashes.get(rel) != _sha256_file(path):
                raise ImageVerifyError(
                    f"{shown}: /{prefix}/{rel} differs from {path} (sha256); rebuild the image"
                )

    result = VerifyResult(
        reference=shown,
        digest=digest,
        layers=len(image.manifest.layers),
        files=len(model_files),
        model_bytes=sum(e.size for e in model_files.values()),
        checked_against=checked_against,
        deep=deep,
        seconds=round(time.monotonic() - started, 3),
    )
    if state is not None:
        markers.write_marker(state, STEP, inputs, result.model_dump(exclude={"skipped"}))
    else:
        log.info("no state dir (pass --src or --state-dir): verify marker not written")
    log.info("verified %s", shown)
    return result


@click.command("verify")
@click.argument("reference")
@click.option("--deep", is_flag=True, help="Stream every layer and compare sha256 of each file.")
@click.option("--src", type=click.Path(path_type=Path), default=None, help="Model dir to match.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--profile", default=None, help="Registry profile whose layer cap to check.")
@click.option(
    "--auth",
    default=None,
    type=click.Choice(["auto", "ecr", "authfile", "none"]),
    help="Registry auth mode; default config registry.auth.",
)
def verify_command(
    reference: str,
    deep: bool,
    src: Path | None,
    state_dir: Path | None,
    profile: str | None,
    auth: str | None,
) -> None:
    """Check a built ModelCar image and print its oci://...@sha256 reference."""
    from steps.cli import run_step

    run_step(
        lambda: verify(
            reference=reference,
            deep=deep,
            src=src,
            state_dir=state_dir,
            profile=profile,
            auth=auth,
        )
    )


__all__ = ["ImageVerifyError", "LayoutRef", "RegistryRef", "VerifyResult", "verify"]
