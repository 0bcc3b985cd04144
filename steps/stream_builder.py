"""The stream builder: layer tars generated on the fly straight into their destination.

Each planned layer's deterministic tar is read from the model files once and sent in chunks to a
``BlobSink`` while it is hashed — a registry upload, or an OCI layout directory. One code path
serves both sinks, so the layout written for the local runner or for ``skopeo`` holds exactly the
bytes a push would. Nothing else touches local disk, and memory is two upload chunks.

Re-runs are cheap: layer digests are cached in the state dir under the layer's fingerprint
(paths, sizes, mtimes, inodes), so an unchanged layer is found with a HEAD and never read.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from steps import markers
from steps.build_types import BuildRequest, BuiltImage
from steps.errors import RegistryError
from steps.fsutil import atomic_write_text
from steps.imagesource import ImageSource, RegistrySource
from steps.layers import open_layer
from steps.oci import (
    CONFIG,
    LAYER_TAR,
    MANIFEST,
    Descriptor,
    Layout,
    create_config,
    create_descriptor,
    create_manifest,
    oci_layer_type,
)
from steps.progress import Progress
from steps.registry import ChunkPipeline, RegistryClient, StreamFactory

log = logging.getLogger(__name__)

DIGEST_CACHE = "layer-digests.json"


class BlobSink(Protocol):
    """Where built blobs and the manifest go: a registry repository or an OCI layout."""

    def has_blob(self, digest: str, size: int) -> bool: ...

    def upload(
        self, open_stream: StreamFactory, size: int, progress: Callable[[int], None]
    ) -> str: ...

    def put_bytes(self, data: bytes) -> str: ...

    def copy_from(self, source: ImageSource, desc: Descriptor) -> int: ...

    def put_manifest(self, data: bytes, media_type: str) -> str: ...

    def has_manifest(self, digest: str) -> bool: ...

    def reference(self, digest: str) -> str: ...


class RegistrySink:
    def __init__(self, client: RegistryClient, repository: str, tag: str | None) -> None:
        self.client = client
        self.repository = repository
        self.tag = tag

    def has_blob(self, digest: str, size: int) -> bool:
        return self.client.blob_exists(self.repository, digest)

    def upload(self, open_stream: StreamFactory, size: int, progress: Callable[[int], None]) -> str:
        return self.client.upload_blob(self.repository, open_stream, size, progress=progress).digest

    def put_bytes(self, data: bytes) -> str:
        return self.client.upload_bytes(self.repository, data)

    def copy_from(self, source: ImageSource, desc: Descriptor) -> int:
        """Bytes moved (0 when present already or mounted from the same registry)."""
        if self.has_blob(desc.digest, desc.size):
            return 0
        same_registry = (
            isinstance(source, RegistrySource) and source.client.host == self.client.host
        )
        if same_registry and self.client.mount_blob(
            self.repository,
            desc.digest,
            source.repository,  # type: ignore[attr-defined]
        ):
            return 0
        self.client.upload_blob(
            self.repository,
            lambda: source.open_readable(desc.digest),
            desc.size,
            expected_digest=desc.digest,
        )
        return desc.size

    def put_manifest(self, data: bytes, media_type: str) -> str:
        digest = self.client.put_manifest(self.repository, self.tag or "latest", data, media_type)
        return digest

    def has_manifest(self, digest: str) -> bool:
        return self.client.manifest_exists(self.repository, digest)

    def reference(self, digest: str) -> str:
        return f"oci://{self.client.host}/{self.repository}@{digest}"


class LayoutSink:
    def __init__(self, layout: Layout, tag: str | None, chunk_bytes: int = 8 << 20) -> None:
        self.layout = layout
        self.tag = tag
        self.chunk_bytes = chunk_bytes
        layout.init()

    def has_blob(self, digest: str, size: int) -> bool:
        return self.layout.has_blob(digest, size)

    def upload(self, open_stream: StreamFactory, size: int, progress: Callable[[int], None]) -> str:
        fd, tmp = self.layout.open_blob_writer()
        pipeline = ChunkPipeline(open_stream(), self.chunk_bytes)
        written = 0
        try:
            for view in pipeline.chunks():
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
                    progress(n)
            digest = pipeline.digest()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        finally:
            pipeline.close()
        os.close(fd)
        if written != size:
            tmp.unlink(missing_ok=True)
            raise RegistryError(
                f"OCI layout {self.layout.path}: wrote {written} bytes, planned {size}; "
                "the source changed during the build, run it again"
            )
        self.layout.commit_blob(tmp, digest)
        return digest

    def put_bytes(self, data: bytes) -> str:
        return self.layout.write_blob(data)

    def copy_from(self, source: ImageSource, desc: Descriptor) -> int:
        if self.has_blob(desc.digest, desc.size):
            return 0
        digest = self.upload(lambda: source.open_readable(desc.digest), desc.size, lambda n: None)
        if digest != desc.digest:
            self.layout.blob_path(digest).unlink(missing_ok=True)
            raise RegistryError(f"base blob {desc.digest}: copied bytes hash to {digest}")
        return desc.size

    def put_manifest(self, data: bytes, media_type: str) -> str:
        digest = self.layout.write_blob(data)
        self.layout.tag(Descriptor(mediaType=media_type, digest=digest, size=len(data)), self.tag)
        return digest

    def has_manifest(self, digest: str) -> bool:
        return self.layout.has_blob(digest)

    def reference(self, digest: str) -> str:
        return f"oci:{self.layout.path}@{digest}"


class DigestCache:
    """Layer fingerprint → digest, kept in the state dir so unchanged layers are never re-read."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DIGEST_CACHE
        try:
            self._data: dict[str, Any] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self._data = {}

    def get(self, key: dict[str, Any], size: int) -> str | None:
        entry = self._data.get(markers.fingerprint(key))
        if isinstance(entry, dict) and entry.get("size") == size:
            return str(entry.get("digest"))
        return None

    def put(self, key: dict[str, Any], size: int, digest: str) -> None:
        self._data[markers.fingerprint(key)] = {"digest": digest, "size": size}
        atomic_write_text(self.path, json.dumps(self._data, indent=1, sort_keys=True) + "\n")


def build_image(request: BuildRequest) -> BuiltImage:
    """Copy the base, stream every planned layer, then write config and manifest."""
    started = time.monotonic()
    sink = request.sink
    base = request.base
    plan = request.plan
    moved = 0
    for desc in base.manifest.layers:
        moved += sink.copy_from(base.source, desc)

    cache = DigestCache(request.state_dir)
    layer_descs: list[Descriptor] = []
    with Progress(
        "build", total_bytes=plan.total_blob_bytes, total_items=len(plan.layers)
    ) as progress:
        for layer in plan.layers:
            key = layer.cache_key(plan.prefix)
            digest = cache.get(key, layer.blob_size)
            if digest is not None and sink.has_blob(digest, layer.blob_size):
                log.info("layer %d: %s already present, skipped", layer.index, digest[:19])
                progress.advance(layer.blob_size)
            else:
                digest = sink.upload(
                    lambda layer=layer: open_layer(layer, plan.prefix),  # type: ignore[misc]
                    layer.blob_size,
                    progress.advance,
                )
                moved += layer.blob_size
                cache.put(key, layer.blob_size, digest)
            progress.item_done()
            layer_descs.append(Descriptor(mediaType=LAYER_TAR, digest=digest, size=layer.blob_size))

    config = create_config(
        base=base.config,
        diff_ids=[d.digest for d in layer_descs],
        labels=request.labels,
        history=[f"synesis: {plan.prefix} layer {i}" for i in range(len(layer_descs))],
    )
    config_bytes = config.to_json()
    sink.put_bytes(config_bytes)
    base_layers = [
        d.model_copy(update={"mediaType": oci_layer_type(d.mediaType)})
        for d in base.manifest.layers
    ]
    manifest = create_manifest(
        config=create_descriptor(config_bytes, CONFIG),
        layers=base_layers + layer_descs,
        annotations=request.annotations,
    )
    manifest_bytes = manifest.to_json()
    digest = sink.put_manifest(manifest_bytes, MANIFEST)
    return BuiltImage(
        reference=sink.reference(digest),
        digest=digest,
        layers=[d.digest for d in layer_descs],
        base_layers=len(base_layers),
        bytes_uploaded=moved,
        seconds=time.monotonic() - started,
    )
