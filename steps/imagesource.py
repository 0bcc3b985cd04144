"""Reading images from a registry or an OCI layout through one interface.

The build step reads its base image and the verify step reads the built image this way, so
both work the same for ``HOST/REPO:TAG`` and ``oci:DIR:TAG``. Multi-platform indexes are
resolved to this machine's platform (``linux/amd64`` on the cluster nodes).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from steps import settings
from steps.errors import BadInputError, RegistryError
from steps.imageref import ImageRef, LayoutRef, RegistryRef
from steps.oci import (
    INDEX_TYPES,
    MANIFEST,
    MANIFEST_TYPES,
    ImageConfig,
    Index,
    Layout,
    Manifest,
    parse_json,
    sha256_digest,
)
from steps.registry import BytesReadable, Readable, RegistryClient, ResponseReadable
from steps.registry_auth import make_authenticator


class ImageSource(Protocol):
    """Where an image's documents and blobs are read from."""

    def describe(self) -> str: ...

    def manifest(self, reference: str) -> tuple[bytes, str]: ...

    def blob(self, digest: str) -> bytes: ...

    def open_readable(self, digest: str) -> Readable: ...

    def iter_blob(self, digest: str, chunk: int = 1 << 20) -> Iterator[bytes]: ...

    def read_range(self, digest: str, offset: int, length: int) -> bytes | None: ...


class RegistrySource:
    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository

    def describe(self) -> str:
        return f"{self.client.host}/{self.repository}"

    def manifest(self, reference: str) -> tuple[bytes, str]:
        return self.client.get_manifest(self.repository, reference)

    def blob(self, digest: str) -> bytes:
        return self.client.get_blob(self.repository, digest)

    def open_readable(self, digest: str) -> Readable:
        return ResponseReadable(self.client.open_blob(self.repository, digest))

    def iter_blob(self, digest: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        resp = self.client.open_blob(self.repository, digest)
        try:
            yield from resp.iter_content(chunk)
        finally:
            resp.close()

    def read_range(self, digest: str, offset: int, length: int) -> bytes | None:
        return self.client.read_range(self.repository, digest, offset, length)


class LayoutSource:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def describe(self) -> str:
        return f"oci:{self.layout.path}"

    def manifest(self, reference: str) -> tuple[bytes, str]:
        if reference.startswith("sha256:"):
            data = self.layout.read_blob(reference)
            media_type = parse_json(data, f"manifest {reference}").get("mediaType", MANIFEST)
            return data, str(media_type)
        desc = self.layout.resolve(reference or None)
        return self.layout.read_blob(desc.digest), desc.mediaType

    def blob(self, digest: str) -> bytes:
        data = self.layout.read_blob(digest)
        if sha256_digest(data) != digest:
            raise BadInputError(f"OCI layout {self.layout.path}: blob {digest} is corrupt")
        return data

    def open_readable(self, digest: str) -> Readable:
        return _FileReadable(self.layout.blob_path(digest))

    def iter_blob(self, digest: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        return self.layout.iter_blob(digest, chunk)

    def read_range(self, digest: str, offset: int, length: int) -> bytes | None:
        return self.layout.read_range(digest, offset, length)


class _FileReadable:
    def __init__(self, path: Path) -> None:
        self._handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        pos = 0
        while pos < len(view):
            got = self._handle.readinto(view[pos:])
            if not got:
                break
            pos += got
        return pos

    def close(self) -> None:
        self._handle.close()


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's image: its manifest, config and where it came from."""

    ref: ImageRef
    source: ImageSource
    manifest: Manifest
    manifest_bytes: bytes
    manifest_media_type: str
    digest: str
    config: ImageConfig


def registry_client(
    host: str,
    repository: str | None,
    *,
    auth_mode: str = "auto",
    auth_file: Path | None = None,
    insecure: bool = False,
    chunk_bytes: int = 16 << 20,
) -> RegistryClient:
    auth = make_authenticator(host, repository, mode=auth_mode, auth_file=auth_file)
    return RegistryClient(
        host,
        auth=auth,
        insecure=insecure,
        chunk_bytes=chunk_bytes,
        timeout=settings.registry_timeout_seconds(),
        backoff=settings.registry_backoff_seconds(),
    )


def open_source(
    ref: ImageRef,
    *,
    auth_mode: str = "auto",
    auth_file: Path | None = None,
    insecure: bool = False,
    client: RegistryClient | None = None,
) -> ImageSource:
    if isinstance(ref, LayoutRef):
        layout = Layout(ref.path)
        if not layout.exists():
            raise BadInputError(f"{ref}: not an OCI image layout (no oci-layout file); check it")
        return LayoutSource(layout)
    if client is None or client.host != ref.host:
        client = registry_client(
            ref.host, ref.repository, auth_mode=auth_mode, auth_file=auth_file, insecure=insecure
        )
    return RegistrySource(client, ref.repository)


def host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return "linux", arch


def _reference(ref: ImageRef) -> str:
    if ref.digest:
        return ref.digest
    if isinstance(ref, RegistryRef):
        return ref.tag or "latest"
    return ref.tag or ""


def resolve_image(ref: ImageRef, source: ImageSource) -> ResolvedImage:
    """Fetch manifest and config of ``ref``, picking this platform from an index."""
    data, media_type = source.manifest(_reference(ref))
    doc = parse_json(data, f"manifest of {ref}")
    media_type = media_type or str(doc.get("mediaType", ""))
    if media_type in INDEX_TYPES or "manifests" in doc:
        index = Index.model_validate(doc)
        want_os, want_arch = host_platform()
        chosen = next(
            (
                d
                for d in index.manifests
                if d.platform is not None
                and d.platform.os == want_os
                and d.platform.architecture == want_arch
            ),
            None,
        )
        if chosen is None:
            raise BadInputError(
                f"image {ref}: no {want_os}/{want_arch} variant in its index; pick another base"
            )
        data, media_type = source.manifest(chosen.digest)
        doc = parse_json(data, f"manifest of {ref}")
    known = media_type in MANIFEST_TYPES or doc.get("mediaType") in MANIFEST_TYPES
    if not known and "layers" not in doc:
        raise BadInputError(f"image {ref}: unsupported manifest type {media_type!r}")
    manifest = Manifest.model_validate(doc)
    digest = sha256_digest(data)
    config_bytes = source.blob(manifest.config.digest)
    try:
        config = ImageConfig.model_validate(parse_json(config_bytes, f"config of {ref}"))
    except ValueError as exc:
        raise RegistryError(f"image {ref}: its config is not an image config") from exc
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise RegistryError(
            f"image {ref}: config lists {len(config.rootfs.diff_ids)} layers, manifest "
            f"{len(manifest.layers)}; the image is corrupt"
        )
    return ResolvedImage(
        ref=ref,
        source=source,
        manifest=manifest,
        manifest_bytes=data,
        manifest_media_type=media_type or manifest.mediaType,
        digest=digest,
        config=config,
    )


__all__ = ["BytesReadable", "ImageSource", "ResolvedImage", "open_source", "resolve_image"]
