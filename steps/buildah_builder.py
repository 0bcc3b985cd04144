"""The buildah builder: the stream builder's layer plan, built and pushed with Red Hat's tools.

Why it looks like this (buildah 1.28 facts, measured here):

* **One ``COPY`` per planned layer** with ``buildah build --layers`` gives exactly one image
  layer per planned layer (``LABEL``/``USER`` add history entries, not layers).
  ``--timestamp 0`` fixes every mtime and the config's dates, so the same input gives the same
  layer and manifest digests.
* **A staged context**: ``context/layer-NNN/<rel_path>``, made of hard links to the model files
  (reflinks, then copies, when the context is on another filesystem). One ``COPY layer-NNN/
  /models/`` then keeps nested paths (``inference/config.json`` never clobbers
  ``config.json``), and the Hugging Face cache's symlinks into ``blobs/`` are replaced by links
  to the real files, so buildah never ``lstat``\\ s a ``../../blobs/...`` target outside the
  context.
* **Modes for an arbitrary UID** (OpenShift): files 0644 and directories 0755, as the stream
  builder writes them. ``COPY --chmod`` takes only octal and applies to directories too (a
  nested directory would become 0644, untraversable), so it is used for layers whose files sit
  directly under ``/models`` (the weight shards); a layer with nested directories is copied
  without ``--chmod`` from a context whose directories we created 0755 and whose files are
  0644 (linked when the source already is, copied otherwise).
* **Layer format on push**: ``gzip`` and ``zstd`` through ``buildah push
  --compression-format``; ``none`` (uncompressed, what weights want: they do not compress)
  through ``skopeo copy --dest-oci-accept-uncompressed-layers`` into an ``oci:`` layout, then
  ``skopeo copy --preserve-digests`` to the registry, because buildah 1.28 ignores
  ``--disable-compression`` on push.
* **Preflight** before any byte is written: the free space each scratch volume needs for the
  chosen storage driver (``vfs`` copies the whole root filesystem for every layer, so its disk
  use grows with the square of the layer count and it is refused beyond two model layers), and
  a real ``buildah from scratch`` + ``mount`` in the configured store, whose failure is mapped
  to one line naming the missing capability and the fix.
* **Scratch** lives under configured directories (``config/cluster.yaml`` ``build:``), in a
  subdirectory named after the build's fingerprint: a retry after a failed push reuses the
  built image; a successful push removes it.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from steps import markers, redact
from steps.build_types import BuildRequest, BuiltImage
from steps.buildah import (
    SYSTEM_BLOB_INFO_CACHE,
    SYSTEM_TMP,
    Buildah,
    BuildahPaths,
    LayerFormat,
    StorageDriver,
    can_redirect_system_paths,
    effective_capabilities,
)
from steps.config import BuildConfig, load_cluster
from steps.errors import BadInputError, BuilderError, ConfigError
from steps.fsutil import free_bytes, human_bytes, nearest_existing
from steps.imageref import ImageRef, LayoutRef, RegistryRef, is_loopback
from steps.imagesource import ResolvedImage, registry_client
from steps.layers import LayerPlan, PlannedFile, PlannedLayer
from steps.oci import Layout, Manifest, parse_json
from steps.progress import Progress
from steps.registry_auth import Authenticator, make_authenticator

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755
IMAGE_USER = "1001"
VFS_MAX_MODEL_LAYERS = 2
# Base image, buildah metadata and filesystem slack on top of the layer bytes.
STORAGE_HEADROOM = 512 * 1024 * 1024
# containers/image copies up to this many layers at once, each through a temp file.
PARALLEL_LAYER_COPIES = 6
_FICLONE = 0x40049409
_CAP_SYS_ADMIN = 21
_STEP_LINE = re.compile(r"^STEP (\d+)/(\d+): COPY ")
_INSECURE_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


# -- paths ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScratchLayout:
    """Every directory one buildah build writes to, each named after the build's key."""

    context: Path  # staged build context (hard links to the model files)
    work: Path  # Containerfile, digest file, auth dir, the uncompressed oci layout, TMPDIR
    paths: BuildahPaths

    @property
    def oci_layout(self) -> Path:
        return self.work / "oci"

    @property
    def auth_dir(self) -> Path:
        return self.work / "auth"

    @property
    def removable(self) -> tuple[Path, ...]:
        """What a successful push deletes (a configured blob-info cache dir stays)."""
        return (self.context, self.work, self.paths.storage_root, self.paths.run_root)


def scratch_layout(config: BuildConfig, *, work_area: Path, key: str) -> ScratchLayout:
    """Resolve the configured scratch directories for one build (``key``: fingerprint prefix).

    Defaults sit under ``<work_area>/.buildah`` (``work_area``: the directory holding the model
    dir and its ``.synesis`` markers): the work volume, so the staged context can hard-link the
    model files and nothing lands on the node's disk.
    """
    base = config.scratch_dir or (work_area.absolute() / ".buildah")
    name = f"synesis-{key}"

    def pick(configured: Path | None, role: str) -> Path:
        return (configured or base / role) / name

    work = pick(config.tmp_dir, "tmp")
    return ScratchLayout(
        context=pick(config.context_dir, "context"),
        work=work,
        paths=BuildahPaths(
            storage_root=pick(config.storage_root, "storage"),
            run_root=pick(config.run_root, "run"),
            tmp_dir=work / "tmp",
            # Per build by default: a shared cache lets push reuse blobs of any compression
            # already in the registry (buildah 1.28 then ignores the asked layer format).
            blob_info_cache_dir=config.blob_info_cache_dir or work / "cache",
        ),
    )


# -- Containerfile --------------------------------------------------------------------------


def layer_dir_name(layer: PlannedLayer) -> str:
    return f"layer-{layer.index:03d}"


def is_flat(layer: PlannedLayer) -> bool:
    """True when every file of the layer sits directly under the prefix (no subdirectories)."""
    return all("/" not in f.rel_path for f in layer.files)


def _label_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise BadInputError(f"image label value {value!r} has a line break; remove it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _label_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", key):
        raise BadInputError(f"image label key {key!r}: use letters, digits, '.', '-', '_', '/'")
    return key


def containerfile(
    plan: LayerPlan, *, base_image: str, labels: dict[str, str], user: str = IMAGE_USER
) -> str:
    """The Containerfile for ``plan``: ``FROM``, one ``COPY`` per layer, labels, ``USER``.

    Labels come after the copies so they never change a layer, and are sorted so the config
    (and the manifest digest) does not depend on dict order.
    """
    if not base_image or any(c.isspace() for c in base_image):
        raise BadInputError(f"base image {base_image!r}: give a full reference without spaces")
    dest = "/" + plan.prefix.strip("/") + "/"
    lines = [f"FROM {base_image}"]
    for layer in plan.layers:
        chmod = f"--chmod={FILE_MODE:04o} " if is_flat(layer) else ""
        lines.append(f"COPY {chmod}{layer_dir_name(layer)}/ {dest}")
    if labels:
        pairs = " \\\n      ".join(
            f"{_label_key(k)}={_label_value(v)}" for k, v in sorted(labels.items())
        )
        lines.append(f"LABEL {pairs}")
    lines.append(f"USER {user}")
    return "\n".join(lines) + "\n"


# -- staging --------------------------------------------------------------------------------


@dataclass
class StagingReport:
    """How the context was made; ``copied_bytes`` is the extra disk the staging cost."""

    linked: int = 0
    reflinked: int = 0
    copied: int = 0
    copied_bytes: int = 0
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)


def _reflink(source: Path, dest: Path) -> bool:
    try:
        with source.open("rb") as src, dest.open("wb") as dst:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return True
    except OSError:
        dest.unlink(missing_ok=True)
        return False


def _place(source: Path, dest: Path, *, must_own_inode: bool, report: StagingReport) -> None:
    """Put ``source``'s bytes at ``dest``: hard link, else reflink, else copy."""
    if not must_own_inode:
        try:
            os.link(source, dest)
            report.linked += 1
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                raise
            reason = f"hard link impossible ({errno.errorcode.get(exc.errno, exc.errno)})"
            if reason not in report.reasons:
                report.reasons.append(reason)
    if _reflink(source, dest):
        report.reflinked += 1
    else:
        shutil.copyfile(source, dest)
        report.copied += 1
        report.copied_bytes += dest.stat().st_size
    os.chmod(dest, FILE_MODE)


def stage_context(plan: LayerPlan, context: Path) -> StagingReport:
    """Build ``context/layer-NNN/<rel_path>`` for every planned file (see module doc).

    A file gets its own inode (reflink/copy) when a nested layer needs mode 0644 and the
    source has another mode, or when the same inode already appears in the layer (buildah
    would store the second one as a tar hard link, which the stream builder never writes).

    Raises:
        BadInputError: a planned file vanished or changed size since the plan was made.
    """
    started = time.monotonic()
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True, mode=DIR_MODE)
    os.chmod(context, DIR_MODE)
    report = StagingReport()
    for layer in plan.layers:
        root = context / layer_dir_name(layer)
        root.mkdir(mode=DIR_MODE)
        os.chmod(root, DIR_MODE)
        flat = is_flat(layer)
        seen: set[tuple[int, int]] = set()
        for planned in layer.files:
            source = _checked_source(planned)
            st = source.stat()
            dest = root / PurePosixPath(planned.rel_path)
            _make_dirs(root, dest.parent)
            identity = (st.st_dev, st.st_ino)
            needs_copy = identity in seen or (not flat and stat.S_IMODE(st.st_mode) != FILE_MODE)
            if needs_copy and identity not in seen:
                report.reasons.append(f"{planned.rel_path}: mode {stat.S_IMODE(st.st_mode):04o}")
            seen.add(identity)
            _place(source, dest, must_own_inode=needs_copy, report=report)
    report.seconds = time.monotonic() - started
    return report


def _checked_source(planned: PlannedFile) -> Path:
    # The plan already resolved Hub-cache symlinks; resolve again in case the model dir was
    # re-linked since, so we always link the real file and never a symlink.
    source = planned.source.resolve()
    try:
        size = source.stat().st_size
    except FileNotFoundError as exc:
        raise BadInputError(
            f"{planned.source}: model file vanished since the layer plan; re-run the build"
        ) from exc
    if size != planned.size:
        raise BadInputError(
            f"{planned.source}: size changed from {planned.size} to {size} bytes during the "
            "build; let the download/quantize step finish, then re-run the build"
        )
    return source


def _make_dirs(root: Path, directory: Path) -> None:
    missing: list[Path] = []
    current = directory
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # not subject to the umask


def same_filesystem(plan: LayerPlan, context: Path) -> bool:
    devices = {f.source.stat().st_dev for f in plan.files}
    return devices == {nearest_existing(context).stat().st_dev}


# -- preflight ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceNeed:
    path: Path
    role: str
    bytes: int


def storage_bytes(plan: LayerPlan, driver: StorageDriver) -> int:
    """Peak bytes the store holds while building ``plan`` (see DESIGN.md, Builders).

    overlay: each COPY writes the layer into the step's container, and the commit stores it
    again as an image layer -> 2x the model, plus intermediate images; 2.5x is what we reserve
    (bench/bench_builders.py on 2 GiB: peak scratch 3.4x the model with the push temp files).
    vfs: every step copies the whole root filesystem so far, so layer ``i`` costs the sum of
    layers ``0..i`` (quadratic).
    """
    sizes = [layer.blob_size for layer in plan.layers]
    if driver == "overlay":
        return 5 * sum(sizes) // 2 + STORAGE_HEADROOM
    cumulative, total = 0, 0
    for size in sizes:
        cumulative += size
        total += cumulative
    return total + cumulative + STORAGE_HEADROOM


def push_temp_bytes(plan: LayerPlan) -> int:
    """Push writes each layer to a temp file; up to six layers are in flight at once."""
    largest = sorted((layer.blob_size for layer in plan.layers), reverse=True)
    return sum(largest[:PARALLEL_LAYER_COPIES])


def space_needs(
    plan: LayerPlan,
    layout: ScratchLayout,
    *,
    driver: StorageDriver,
    layer_format: LayerFormat,
    staging_copies_bytes: int,
) -> list[SpaceNeed]:
    needs = [
        SpaceNeed(layout.paths.storage_root, "storage", storage_bytes(plan, driver)),
        SpaceNeed(layout.paths.tmp_dir, "push temp files", push_temp_bytes(plan)),
    ]
    if layer_format == "none":
        needs.append(SpaceNeed(layout.oci_layout, "uncompressed oci layout", plan.total_blob_bytes))
    if staging_copies_bytes:
        needs.append(SpaceNeed(layout.context, "context copies", staging_copies_bytes))
    return needs


def check_space(needs: list[SpaceNeed], *, driver: StorageDriver) -> None:
    """Group the needs by filesystem and fail when one cannot hold its share.

    Raises:
        InsufficientSpaceError: names the volume, what it must hold and the ways out.
    """
    from steps.errors import InsufficientSpaceError

    by_device: dict[int, list[SpaceNeed]] = {}
    for need in needs:
        device = nearest_existing(need.path).stat().st_dev
        by_device.setdefault(device, []).append(need)
    for group in by_device.values():
        total = sum(n.bytes for n in group)
        free = free_bytes(group[0].path)
        if free < total:
            parts = ", ".join(f"{n.role} {human_bytes(n.bytes)}" for n in group)
            raise InsufficientSpaceError(
                f"{nearest_existing(group[0].path)}: a buildah {driver} build needs "
                f"{human_bytes(total)} ({parts}) but the volume has {human_bytes(free)} free; "
                "point build.storage_root/tmp_dir at a bigger volume, free space, or use "
                "--builder stream (no scratch space)"
            )


def staging_copy_estimate(plan: LayerPlan, context: Path) -> int:
    """Bytes the staged context will cost: 0 when hard links work, the model when not."""
    if same_filesystem(plan, context):
        return sum(
            f.size
            for layer in plan.layers
            if not is_flat(layer)
            for f in layer.files
            if stat.S_IMODE(f.source.stat().st_mode) != FILE_MODE
        )
    return plan.total_blob_bytes


def check_driver(plan: LayerPlan, driver: StorageDriver) -> None:
    if driver != "vfs":
        return
    count = len(plan.layers)
    if count > VFS_MAX_MODEL_LAYERS:
        raise ConfigError(
            f"build.storage_driver vfs with {count} model layers: vfs copies the whole image "
            f"for every layer ({human_bytes(storage_bytes(plan, 'vfs'))} of scratch here); "
            "use storage_driver overlay or --builder stream"
        )
    if count > 1:
        log.warning(
            "vfs storage copies the image for every layer: %s of scratch for %d layers; "
            "overlay needs about half",
            human_bytes(storage_bytes(plan, "vfs")),
            count,
        )


def explain_probe_failure(error: str, *, driver: StorageDriver) -> str:
    """One line naming what buildah lacks here and how to grant it."""
    lowered = error.lower()
    caps = effective_capabilities()
    uid = os.geteuid()
    stream = "or use --builder stream (no privileges needed)"
    if any(w in lowered for w in ("newuidmap", "newgidmap", "subuid", "subgid", "setfcap")) or (
        "user namespace" in lowered
    ):
        return (
            f"buildah needs user namespaces as uid {uid} and cannot set them up ({error}): "
            "newuidmap/newgidmap need CAP_SETFCAP and /etc/subuid, /etc/subgid ranges; "
            f"grant SETFCAP (an anyuid-like SCC) or run the build as root, {stream}"
        )
    if "operation not permitted" in lowered and "mount" in lowered:
        if uid == 0 and not caps & (1 << _CAP_SYS_ADMIN):
            return (
                f"buildah cannot mount {driver} storage: this container lacks CAP_SYS_ADMIN "
                f"({error}); run the build pod privileged or add SYS_ADMIN, {stream}"
            )
        return (
            f"buildah cannot mount {driver} storage as uid {uid} ({error}); run as root with "
            f"CAP_SYS_ADMIN, or rootless with user namespaces (SETFCAP) and fuse-overlayfs, "
            f"{stream}"
        )
    if "not found on path" in lowered:
        return error
    return (
        f"buildah cannot run here ({error}); it needs root with CAP_SYS_ADMIN, or user "
        f"namespaces with CAP_SETFCAP, {stream}"
    )


def probe(tool: Buildah, *, driver: StorageDriver) -> None:
    """A real ``from scratch`` + ``mount`` in the configured store: proves buildah can work.

    Raises:
        BuilderError: one line naming the missing capability and the fix.
    """
    name = f"synesis-probe-{os.getpid()}"
    created = tool.buildah("from", "--name", name, "scratch", quiet=True)
    try:
        if created.returncode != 0:
            raise BuilderError(explain_probe_failure(created.last_error(), driver=driver))
        mounted = tool.buildah("mount", name, quiet=True)
        if mounted.returncode != 0:
            raise BuilderError(explain_probe_failure(mounted.last_error(), driver=driver))
        tool.buildah("umount", name, quiet=True)
    finally:
        if created.returncode == 0:
            tool.buildah("rm", name, quiet=True)


# -- build and push -------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildahOutcome:
    """What one buildah build and push did."""

    digest: str  # manifest digest, sha256:...
    layers: int  # image layers added (== planned layers)
    staging: StagingReport
    build_seconds: float
    push_seconds: float


def write_policy(directory: Path) -> Path:
    """A permissive signature policy for hosts without /etc/containers/policy.json."""
    path = directory / "policy.json"
    path.write_text(json.dumps(_INSECURE_POLICY))
    return path


def write_auth_file(directory: Path, auths: dict[str, Authenticator]) -> Path | None:
    """A containers auth.json for ``auths`` (host -> credentials) in a fresh 0600 file.

    Asked just before each buildah/skopeo call, so an ECR token is never older than the call
    that uses it. None when no host has credentials (anonymous registries).
    """
    entries: dict[str, dict[str, str]] = {}
    for host, authenticator in sorted(auths.items()):
        creds = authenticator.credentials()
        if creds is None:
            continue
        encoded = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        redact.register_secret(encoded)
        entries[host] = {"auth": encoded}
    if not entries:
        return None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / "auth.json"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"auths": entries}, handle)
    return path


def build_and_push(
    *,
    plan: LayerPlan,
    work_area: Path,
    base_image: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    destination: str,
    config: BuildConfig,
    key: str,
    auths: dict[str, Authenticator] | None = None,
    tls_verify: bool = True,
) -> BuildahOutcome:
    """Build ``plan`` on ``base_image`` with buildah and push it to ``destination``.

    Args:
        plan: the layer plan (the same one the stream builder uses).
        work_area: the model's work directory (scratch defaults go in ``.buildah`` there).
        base_image: a full reference of the base (``FROM``), pinned by digest by the caller.
        labels: image config labels; annotations: manifest annotations.
        destination: ``docker://HOST/REPO:TAG`` or ``oci:DIR:TAG``.
        config: the cluster config's ``build`` section (driver, layer format, scratch paths).
        key: a short fingerprint naming this build's scratch (a retry reuses it).
        auths: registry host -> authenticator, for the base pull and the push.
        tls_verify: False for plain-HTTP (loopback test) registries.

    Raises:
        ConfigError: vfs for a model with many layers.
        InsufficientSpaceError: a scratch volume is too small for the chosen driver.
        BuilderError: buildah cannot run here, or the build failed.
        RegistryError: the base pull or the push failed.
    """
    driver: StorageDriver = config.storage_driver
    layer_format: LayerFormat = config.layer_format
    layout = scratch_layout(config, work_area=work_area, key=key)
    check_driver(plan, driver)
    for binary in ("buildah", *(("skopeo",) if layer_format == "none" else ())):
        if shutil.which(binary) is None:
            raise BuilderError(
                f"{binary}: not found on PATH; install buildah and skopeo (the steps image has "
                "them) or use --builder stream"
            )
    check_space(
        space_needs(
            plan,
            layout,
            driver=driver,
            layer_format=layer_format,
            staging_copies_bytes=staging_copy_estimate(plan, layout.context),
        ),
        driver=driver,
    )
    layout.paths.create()
    tool = Buildah(
        paths=layout.paths,
        storage_driver=driver,
        tls_verify=tls_verify,
        policy_file=write_policy(layout.work),
    )
    probe(tool, driver=driver)
    if not can_redirect_system_paths():
        log.warning(
            "not root with CAP_SYS_ADMIN: buildah may still write small temp files to %s and "
            "its blob-info cache to %s (only a private mount namespace can move them)",
            SYSTEM_TMP,
            SYSTEM_BLOB_INFO_CACHE,
        )

    staging = stage_context(plan, layout.context)
    log.info(
        "staged %d files in %.1f s: %d hard links, %d reflinks, %d copies (%s copied)%s",
        len(plan.files),
        staging.seconds,
        staging.linked,
        staging.reflinked,
        staging.copied,
        human_bytes(staging.copied_bytes),
        f" [{'; '.join(staging.reasons[:3])}]" if staging.reasons else "",
    )
    recipe = layout.work / "Containerfile"
    recipe.write_text(containerfile(plan, base_image=base_image, labels=labels))
    tag = f"localhost/synesis-build:{key}"
    auths = auths or {}

    started = time.monotonic()
    try:
        tool.auth_file = write_auth_file(layout.auth_dir, auths)
        _run_build(tool, plan, layout, recipe, tag, annotations or {})
        build_seconds = time.monotonic() - started
        started = time.monotonic()
        tool.auth_file = write_auth_file(layout.auth_dir, auths)  # fresh ECR token
        digest = _push(tool, tag, destination, layout, layer_format, key)
    finally:
        shutil.rmtree(layout.auth_dir, ignore_errors=True)
        tool.auth_file = None
    push_seconds = time.monotonic() - started
    log.info(
        "buildah build %.1f s, %s push %.1f s (%s model)",
        build_seconds,
        layer_format,
        push_seconds,
        human_bytes(plan.total_blob_bytes),
    )

    # The image is in the registry: the store and every scratch directory go.
    tool.remove_storage()
    for path in layout.removable:
        shutil.rmtree(path, ignore_errors=True)
    return BuildahOutcome(
        digest=digest,
        layers=len(plan.layers),
        staging=staging,
        build_seconds=build_seconds,
        push_seconds=push_seconds,
    )


def _run_build(
    tool: Buildah,
    plan: LayerPlan,
    layout: ScratchLayout,
    recipe: Path,
    tag: str,
    annotations: dict[str, str],
) -> None:
    """``buildah build``, reporting each finished COPY (one planned layer) as progress."""
    layers_by_step = {i + 2: layer for i, layer in enumerate(plan.layers)}  # STEP 1 is FROM
    with Progress(
        "buildah build", total_bytes=plan.total_blob_bytes, total_items=len(plan.layers)
    ) as progress:
        pending: list[PlannedLayer] = []

        def finish_pending() -> None:
            while pending:
                progress.advance(pending.pop().blob_size)
                progress.item_done()

        def on_line(line: str) -> None:
            match = _STEP_LINE.match(line)
            if match is None:
                return
            finish_pending()  # the previous COPY is done when the next step starts
            layer = layers_by_step.get(int(match.group(1)))
            if layer is not None:
                pending.append(layer)

        tool.build(
            context=layout.context,
            containerfile=recipe,
            tag=tag,
            annotations=annotations,
            on_line=on_line,
        )
        finish_pending()


def _push(
    tool: Buildah, tag: str, destination: str, layout: ScratchLayout, layer_format: str, key: str
) -> str:
    """Push (or write) the built image in ``layer_format``; return the manifest digest."""
    digest_file = layout.work / "digest"
    if layer_format in ("gzip", "zstd"):
        tool.push(
            image=tag,
            destination=destination,
            compression="zstd" if layer_format == "zstd" else "gzip",
            digest_file=digest_file,
        )
        return digest_file.read_text().strip()
    # none: containers/image compresses for docker:// whatever push is told, so go through an
    # oci: layout that accepts uncompressed layers, then copy it byte for byte.
    uncompressed = ["--dest-oci-accept-uncompressed-layers"]
    if destination.startswith("oci:"):
        tool.skopeo_copy(
            source=tool.storage_reference(tag),
            destination=destination,
            extra=uncompressed,
            digest_file=digest_file,
        )
        return digest_file.read_text().strip()
    staged = f"oci:{layout.oci_layout}:{key}"
    shutil.rmtree(layout.oci_layout, ignore_errors=True)
    tool.skopeo_copy(
        source=tool.storage_reference(tag),
        destination=staged,
        extra=uncompressed,
        digest_file=digest_file,
    )
    tool.skopeo_copy(
        source=staged,
        destination=destination,
        extra=["--preserve-digests"],
        digest_file=digest_file,
    )
    return digest_file.read_text().strip()


# -- the build step's seam ------------------------------------------------------------------


def _destination(target: ImageRef) -> str:
    if isinstance(target, LayoutRef):
        return f"oci:{target.path}" + (f":{target.tag}" if target.tag else "")
    return f"docker://{target.host}/{target.repository}:{target.tag or 'latest'}"


def _from_reference(base: ResolvedImage) -> str:
    """The base pinned by digest, so a moving tag cannot change a rebuild's layers."""
    ref = base.ref
    if isinstance(ref, LayoutRef):
        return f"oci:{ref.path}" + (f":{ref.tag}" if ref.tag else "")
    return f"{ref.host}/{ref.repository}@{base.digest}"


def _pushed_manifest(request: BuildRequest, digest: str) -> Manifest:
    target = request.target
    if isinstance(target, LayoutRef):
        data = Layout(target.path).read_blob(digest)
    else:
        client = registry_client(
            target.host,
            target.repository,
            auth_mode=request.auth_mode,
            auth_file=request.auth_file,
            insecure=request.insecure,
        )
        data, _media_type = client.get_manifest(target.repository, digest)
    return Manifest.model_validate(parse_json(data, f"manifest {digest}"))


def build_image(request: BuildRequest) -> BuiltImage:
    """The build step's ``buildah`` builder: same plan, labels and annotations as ``stream``.

    Scratch paths, storage driver and layer format come from the cluster config's ``build``
    section. The pushed manifest is read back to report the layer digests and to check that
    buildah made exactly one layer per planned layer.
    """
    started = time.monotonic()
    config = load_cluster().build
    plan = request.plan
    target = request.target
    key = markers.fingerprint(
        {
            "plan": plan.fingerprint_inputs(),
            "labels": request.labels,
            "annotations": request.annotations,
            "base": request.base.digest,
            "target": str(target),
            "driver": config.storage_driver,
            "format": config.layer_format,
        }
    ).removeprefix("sha256:")[:16]
    auths: dict[str, Authenticator] = {}
    hosts_loopback: list[bool] = []
    base_ref = request.base.ref
    if isinstance(base_ref, RegistryRef):
        auths[base_ref.host] = make_authenticator(
            base_ref.host, base_ref.repository, mode="auto", auth_file=request.auth_file
        )
        hosts_loopback.append(is_loopback(base_ref.host))
    if isinstance(target, RegistryRef):
        auths[target.host] = make_authenticator(
            target.host, target.repository, mode=request.auth_mode, auth_file=request.auth_file
        )
        hosts_loopback.append(is_loopback(target.host))
    outcome = build_and_push(
        plan=plan,
        work_area=request.state_dir.parent,
        base_image=_from_reference(request.base),
        labels=request.labels,
        annotations=request.annotations,
        destination=_destination(target),
        config=config,
        key=key,
        auths=auths,
        tls_verify=not (request.insecure or any(hosts_loopback)),
    )
    manifest = _pushed_manifest(request, outcome.digest)
    model_layers = manifest.layers[len(manifest.layers) - len(plan.layers) :]
    base_layers = len(manifest.layers) - len(plan.layers)
    if base_layers != len(request.base.manifest.layers):
        raise BuilderError(
            f"buildah made {len(manifest.layers)} layers for {len(plan.layers)} planned layers "
            f"on a {len(request.base.manifest.layers)}-layer base; report this with the build log"
        )
    return BuiltImage(
        reference=target.with_digest(outcome.digest).oci_uri(),
        digest=outcome.digest,
        layers=[d.digest for d in model_layers],
        base_layers=base_layers,
        # buildah does not say which blobs the registry already had: this is what the
        # manifest's model layers weigh as pushed (compressed for gzip/zstd).
        bytes_uploaded=sum(d.size for d in model_layers),
        seconds=time.monotonic() - started,
    )


__all__ = [
    "build_image",
    "SYSTEM_BLOB_INFO_CACHE",
    "BuildahOutcome",
    "ScratchLayout",
    "StagingReport",
    "build_and_push",
    "check_driver",
    "check_space",
    "containerfile",
    "explain_probe_failure",
    "probe",
    "scratch_layout",
    "space_needs",
    "stage_context",
    "storage_bytes",
    "write_auth_file",
]
