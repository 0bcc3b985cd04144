"""The OCI documents we read and write: media types, descriptor, manifest, image config, index,
and the on-disk image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``).

One module for the data model (as containers/olot does), so the builder, verify and the tests
agree on every field. Documents are serialised canonically (fixed key order, no whitespace) so
the same content always has the same digest. Docker schema-2 documents of base images are
accepted on read and their media types mapped to the OCI equivalents on write.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from steps.errors import BadInputError
from steps.fsutil import atomic_write_bytes, fsync_dir

# Media types
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (INDEX, DOCKER_LIST)
ACCEPT_ALL = ", ".join((MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST))

# Docker layer types mapped to OCI (the bytes and so the digests are the same).
_LAYER_TO_OCI = {
    DOCKER_LAYER_GZIP: LAYER_TAR_GZIP,
    DOCKER_LAYER_TAR: LAYER_TAR,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": LAYER_TAR_GZIP,
}

# Annotation and label keys
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_TITLE = "org.opencontainers.image.title"
ANN_SOURCE = "org.opencontainers.image.source"
ANN_REVISION = "org.opencontainers.image.revision"
ANN_BASE_NAME = "org.opencontainers.image.base.name"
ANN_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANN_MODEL_ID = "io.synesis.model.id"
ANN_MODEL_REVISION = "io.synesis.model.revision"
ANN_QUANTIZATION = "io.synesis.model.quantization"
ANN_LAYER_FILES = "io.synesis.layer.files"

LAYOUT_VERSION = "1.0.0"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    def to_json(self) -> bytes:
        """Canonical bytes: field order as declared, no whitespace, None fields dropped."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Platform(_Doc):
    architecture: str
    os: str
    variant: str | None = None


class Descriptor(_Doc):
    mediaType: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None


class Manifest(_Doc):
    schemaVersion: int = 2
    mediaType: str = MANIFEST
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] | None = None


class Index(_Doc):
    schemaVersion: int = 2
    mediaType: str = INDEX
    manifests: list[Descriptor]
    annotations: dict[str, str] | None = None


class ContainerConfig(_Doc):
    User: str | None = None
    Env: list[str] | None = None
    Entrypoint: list[str] | None = None
    Cmd: list[str] | None = None
    WorkingDir: str | None = None
    Labels: dict[str, str] | None = None


class RootFS(_Doc):
    type: str = "layers"
    diff_ids: list[str]


class History(_Doc):
    created: str | None = None
    created_by: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


class ImageConfig(_Doc):
    created: str | None = None
    architecture: str = "amd64"
    os: str = "linux"
    config: ContainerConfig = Field(default_factory=ContainerConfig)
    rootfs: RootFS
    history: list[History] | None = None


class LayoutMarker(_Doc):
    imageLayoutVersion: str = LAYOUT_VERSION


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def create_descriptor(
    data: bytes, media_type: str, annotations: dict[str, str] | None = None
) -> Descriptor:
    return Descriptor(
        mediaType=media_type, digest=sha256_digest(data), size=len(data), annotations=annotations
    )


def create_manifest(
    *, config: Descriptor, layers: list[Descriptor], annotations: dict[str, str] | None = None
) -> Manifest:
    return Manifest(config=config, layers=layers, annotations=annotations or None)


def create_index(manifests: list[Descriptor]) -> Index:
    return Index(manifests=manifests)


def oci_layer_type(media_type: str) -> str:
    """OCI media type for a base image layer (Docker names mapped, OCI ones kept)."""
    return _LAYER_TO_OCI.get(media_type, media_type)


def create_config(
    *,
    base: ImageConfig | None,
    diff_ids: list[str],
    labels: dict[str, str],
    user: str = "1001",
    history: list[str] | None = None,
) -> ImageConfig:
    """Our image config: the base's settings with our layers, labels and a non-root user.

    ``created`` is left out on purpose: a timestamp would change the digest on every build.
    """
    base_cc = base.config if base is not None else ContainerConfig()
    env = list(base_cc.Env or [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    cmd = base_cc.Cmd if (base_cc.Cmd or base_cc.Entrypoint) else ["sh"]
    merged_labels = {**(base_cc.Labels or {}), **labels}
    base_diff_ids = list(base.rootfs.diff_ids) if base is not None else []
    old_history = list(base.history or []) if base is not None else []
    new_history = [History(created_by=h, created="1970-01-01T00:00:00Z") for h in (history or [])]
    return ImageConfig(
        architecture=base.architecture if base is not None else "amd64",
        os=base.os if base is not None else "linux",
        config=ContainerConfig(
            User=user,
            Env=env,
            Entrypoint=base_cc.Entrypoint,
            Cmd=cmd,
            WorkingDir=base_cc.WorkingDir,
            Labels=merged_labels,
        ),
        rootfs=RootFS(diff_ids=base_diff_ids + diff_ids),
        history=(old_history + new_history) or None,
    )


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise BadInputError(f"{what}: not valid JSON; is it an OCI image?") from exc
    if not isinstance(value, dict):
        raise BadInputError(f"{what}: expected a JSON object")
    return value


class Layout:
    """An OCI image layout directory: content-addressed blobs plus ``index.json`` naming tags.

    Blobs are written to a temp name and renamed once complete and verified, so a killed
    build never leaves a blob whose name lies about its content.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def blobs(self) -> Path:
        return self.path / "blobs" / "sha256"

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise BadInputError(f"digest {digest!r}: only sha256 digests are supported")
        return self.blobs / hexpart

    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def init(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not (self.path / "oci-layout").exists():
            atomic_write_bytes(self.path / "oci-layout", LayoutMarker().to_json())
        if not (self.path / "index.json").exists():
            atomic_write_bytes(self.path / "index.json", create_index([]).to_json())

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def write_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has_blob(digest, len(data)):
            atomic_write_bytes(self.blob_path(digest), data)
        return digest

    def open_blob_writer(self) -> tuple[int, Path]:
        """A temp file in the blob dir to stream into; commit with ``commit_blob``."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs / f".upload-{os.getpid()}-{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        return fd, tmp

    def commit_blob(self, tmp: Path, digest: str) -> None:
        os.replace(tmp, self.blob_path(digest))
        fsync_dir(self.blobs)

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise BadInputError(
                f"OCI layout {self.path}: blob {digest} is missing; rebuild the layout"
            ) from exc

    def iter_blob(self, digest: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with open(self.blob_path(digest), "rb") as handle:
            while data := handle.read(chunk):
                yield data

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        with open(self.blob_path(digest), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def index(self) -> Index:
        try:
            return Index.model_validate_json((self.path / "index.json").read_bytes())
        except FileNotFoundError as exc:
            raise BadInputError(
                f"{self.path}: not an OCI image layout (no index.json); build it first"
            ) from exc

    def resolve(self, tag: str | None) -> Descriptor:
        """The manifest descriptor for ``tag`` (or the only one when no tag is given)."""
        manifests = self.index().manifests
        if tag is None:
            if len(manifests) == 1:
                return manifests[0]
            raise BadInputError(
                f"OCI layout {self.path}: holds {len(manifests)} images; name one as oci:DIR:TAG"
            )
        for desc in manifests:
            if (desc.annotations or {}).get(ANN_REF_NAME) == tag:
                return desc
        raise BadInputError(f"OCI layout {self.path}: no image tagged {tag!r}; check the tag")

    def tag(self, desc: Descriptor, tag: str | None) -> None:
        """Point ``tag`` at ``desc`` in index.json (replacing an older image with that tag)."""
        annotations = dict(desc.annotations or {})
        if tag:
            annotations[ANN_REF_NAME] = tag
        entry = desc.model_copy(update={"annotations": annotations or None})
        kept = [
            d
            for d in self.index().manifests
            if not (tag and (d.annotations or {}).get(ANN_REF_NAME) == tag)
            and not (not tag and d.digest == desc.digest)
        ]
        atomic_write_bytes(self.path / "index.json", create_index([*kept, entry]).to_json())
