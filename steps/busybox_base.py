"""A minimal ModelCar base image made from Debian's ``busybox-static``, with no registry.

The ModelCar contract needs ``sh``, ``ln``, ``sleep`` and ``ls`` in the image. Offline (the local
runner's default, and the tests' loopback registry) there is no ubi-micro to pull, so this builds
a FROM-scratch image of one static busybox and its applet links. It is deterministic (PAX tar,
mtime 0, uid/gid 0, fixed order), so the same busybox gives the same digest and build markers
stay valid between runs.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from steps.errors import BadInputError
from steps.imagesource import host_platform
from steps.oci import (
    CONFIG,
    LAYER_TAR,
    LAYER_TAR_GZIP,
    create_descriptor,
    create_manifest,
    sha256_digest,
)

BUSYBOX = Path("/bin/busybox")
APPLET_LINKS = ("sh", "ln", "sleep", "ls", "cat", "sha256sum")


@dataclass(frozen=True)
class BaseImage:
    """The three blobs of the image: one layer, its config and its manifest."""

    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def _layer_tar(busybox: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(busybox), 0o755
        tar.addfile(info, io.BytesIO(busybox))
        for link in APPLET_LINKS:
            info = tarfile.TarInfo(f"bin/{link}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    return raw.getvalue()


def busybox_image(*, compress: bool = False) -> BaseImage:
    """Build the image; ``compress`` gzips the layer (as a registry base usually is).

    Raises:
        BadInputError: ``/bin/busybox`` is missing (install Debian's ``busybox-static``).
    """
    if not BUSYBOX.is_file():
        raise BadInputError(
            f"no {BUSYBOX} for the built-in offline base; install busybox-static, or pass "
            "--base REF (e.g. registry.access.redhat.com/ubi9/ubi-micro:latest, needs network)"
        )
    layer_tar = _layer_tar(BUSYBOX.read_bytes())
    layer = gzip.compress(layer_tar, mtime=0) if compress else layer_tar
    os_name, arch = host_platform()
    config = json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]},
            "history": [{"created_by": "synesis built-in base: busybox-static"}],
        },
        separators=(",", ":"),
    ).encode()
    manifest = create_manifest(
        config=create_descriptor(config, CONFIG),
        layers=[create_descriptor(layer, LAYER_TAR_GZIP if compress else LAYER_TAR)],
    ).to_json()
    return BaseImage(layer=layer, config=config, manifest=manifest)


def write_layout(path: Path, tag: str, *, compress: bool = False) -> str:
    """Write the image into an OCI layout at ``path`` (once); returns ``oci:PATH:TAG``."""
    from steps.oci import MANIFEST, Descriptor, Layout

    image = busybox_image(compress=compress)
    layout = Layout(path)
    if not (layout.exists() and layout.has_blob(image.digest, len(image.manifest))):
        layout.init()
        for blob in (image.layer, image.config, image.manifest):
            layout.write_blob(blob)
        descriptor = Descriptor(mediaType=MANIFEST, digest=image.digest, size=len(image.manifest))
        layout.tag(descriptor, tag)
    return f"oci:{path}:{tag}"
