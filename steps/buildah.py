"""Adapter for the ``buildah`` and ``skopeo`` binaries: every flag and path they need, in one place.

Why an adapter: buildah's defaults write to places a pod does not have or must not fill —
``/var/lib/containers/storage`` (storage), ``/run/containers/storage`` (run root), ``/var/tmp``
(push writes each layer to a temp file there) and ``/var/lib/containers/cache`` (the blob-info
cache). Every call made through :class:`Buildah` passes ``--root``/``--runroot``/
``--storage-driver`` explicitly, sets ``TMPDIR``, and — when we are root with ``CAP_SYS_ADMIN`` —
runs the tool in a private mount namespace where the configured cache directory is bind-mounted
over ``/var/lib/containers/cache`` (containers/image has no flag or variable for that path when
running as root; rootless, ``XDG_DATA_HOME`` moves it) and the configured temp directory over
``/var/tmp`` (buildah 1.28's layer-cache check ignores ``TMPDIR``: found by the tests). The
private namespace has a second benefit: overlay mounts buildah leaves behind after a crash
vanish with the namespace, so the storage directory can always be removed. Without
``CAP_SYS_ADMIN`` (rootless) none of this is possible and a warning says so.

Output is streamed line by line to the log (buildah prints one line per step and per blob), and
a failure becomes a :class:`~steps.errors.BuilderError` (or ``RegistryError`` for push/pull)
carrying the tool's last error line, with registered secrets masked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steps import redact
from steps.errors import BuilderError, RegistryError

log = logging.getLogger(__name__)

StorageDriver = Literal["overlay", "vfs"]
LayerFormat = Literal["gzip", "zstd", "none"]

# containers/image's fixed blob-info cache directory for root (no flag, no variable).
SYSTEM_BLOB_INFO_CACHE = Path("/var/lib/containers/cache")
SYSTEM_POLICY = Path("/etc/containers/policy.json")
_CAP_SYS_ADMIN = 21
_TAIL_LINES = 40

SYSTEM_TMP = Path("/var/tmp")

# Runs inside ``unshare --mount``: bind each configured dir over its system path, then exec the
# tool. Arguments: SRC DST [SRC DST ...] -- COMMAND... A bind that cannot be made (read-only
# /var/lib) is reported and the tool still runs.
_BIND_AND_EXEC = (
    'while [ "$1" != "--" ]; do '
    'if mkdir -p "$2" 2>/dev/null && mount --bind "$1" "$2" 2>/dev/null; then :; '
    'else echo "synesis: could not bind $1 over $2" >&2; fi; shift 2; done; '
    'shift; exec "$@"'
)


def effective_capabilities() -> int:
    """This process's effective capability bits (``CapEff`` in /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has_capability(bit: int) -> bool:
    return bool(effective_capabilities() & (1 << bit))


def can_redirect_system_paths() -> bool:
    """Root with CAP_SYS_ADMIN and ``unshare``: the tools' fixed paths can be bind-mounted."""
    return os.geteuid() == 0 and has_capability(_CAP_SYS_ADMIN) and bool(shutil.which("unshare"))


@dataclass(frozen=True)
class BuildahPaths:
    """Where buildah and skopeo may write; all of it on the work volume or an emptyDir."""

    storage_root: Path
    run_root: Path
    tmp_dir: Path
    blob_info_cache_dir: Path

    def create(self) -> None:
        for path in (self.storage_root, self.run_root, self.tmp_dir, self.blob_info_cache_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)


@dataclass(frozen=True)
class ToolOutput:
    returncode: int
    tail: tuple[str, ...]

    def last_error(self) -> str:
        """The most telling line of the tool's output, for a one-line error message."""
        for line in reversed(self.tail):
            stripped = line.strip()
            if stripped.startswith("Error:") or "level=error" in stripped:
                return stripped.removeprefix("Error:").strip()
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return f"exit status {self.returncode}"


class Buildah:
    """Runs buildah/skopeo with the configured storage, temp paths, auth file and TLS setting."""

    def __init__(
        self,
        *,
        paths: BuildahPaths,
        storage_driver: StorageDriver = "overlay",
        auth_file: Path | None = None,
        tls_verify: bool = True,
        policy_file: Path | None = None,
        buildah_bin: str = "buildah",
        skopeo_bin: str = "skopeo",
    ) -> None:
        self.paths = paths
        self.storage_driver = storage_driver
        self.auth_file = auth_file
        self.tls_verify = tls_verify
        self.policy_file = policy_file
        self.buildah_bin = buildah_bin
        self.skopeo_bin = skopeo_bin

    # -- plumbing ---------------------------------------------------------------------------

    def storage_flags(self) -> list[str]:
        return [
            "--root",
            str(self.paths.storage_root),
            "--runroot",
            str(self.paths.run_root),
            "--storage-driver",
            self.storage_driver,
        ]

    def storage_reference(self, image: str) -> str:
        """A ``containers-storage:`` reference that names our store, for skopeo."""
        return (
            f"containers-storage:[{self.storage_driver}@{self.paths.storage_root}"
            f"+{self.paths.run_root}]{image}"
        )

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.paths.tmp_dir)
        # Rootless containers/image keeps its blob-info cache under $XDG_DATA_HOME/containers.
        env["XDG_DATA_HOME"] = str(self.paths.blob_info_cache_dir)
        if self.auth_file is not None:
            env["REGISTRY_AUTH_FILE"] = str(self.auth_file)
        # Variables that would silently change what we asked for on the command line.
        for name in ("BUILDAH_LAYERS", "BUILDAH_FORMAT", "BUILDAH_ISOLATION", "STORAGE_DRIVER"):
            env.pop(name, None)
        return env

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in a private mount namespace with the cache redirected, when we can."""
        if can_redirect_system_paths():
            return [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                _BIND_AND_EXEC,
                "synesis-buildah",
                str(self.paths.blob_info_cache_dir),
                str(SYSTEM_BLOB_INFO_CACHE),
                # buildah 1.28's layer-cache check writes config blobs to /var/tmp whatever
                # TMPDIR says (containers/image without BigFilesTemporaryDir): cover it too.
                str(self.paths.tmp_dir),
                str(SYSTEM_TMP),
                "--",
                *argv,
            ]
        return list(argv)

    def run(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None] | None = None,
        quiet: bool = False,
    ) -> ToolOutput:
        """Run one tool invocation, streaming its output to the log; never raises on failure."""
        command = self.wrap(argv)
        log.debug("running %s", redact.redact(" ".join(argv)))
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                text=True,
                errors="replace",
                bufsize=1,
            )
        except FileNotFoundError as exc:
            raise BuilderError(
                f"{argv[0]}: not found on PATH; install buildah and skopeo (the steps image "
                "has them) or use --builder stream"
            ) from exc
        assert process.stdout is not None
        for raw in process.stdout:
            line = redact.redact(raw.rstrip("\n"))
            tail.append(line)
            if on_line is not None:
                on_line(line)
            if not quiet and line.strip():
                log.info("%s: %s", Path(argv[0]).name, line)
        returncode = process.wait()
        return ToolOutput(returncode=returncode, tail=tuple(tail))

    def buildah(
        self, *args: str, on_line: Callable[[str], None] | None = None, quiet: bool = False
    ) -> ToolOutput:
        return self.run(
            [self.buildah_bin, *self.storage_flags(), *args], on_line=on_line, quiet=quiet
        )

    def _policy_args(self, flag: str) -> list[str]:
        # Only when the host has no policy: an admin's policy (signature rules) always wins.
        if self.policy_file is not None and not SYSTEM_POLICY.exists():
            return [flag, str(self.policy_file)]
        return []

    def _tls(self) -> str:
        return "true" if self.tls_verify else "false"

    # -- operations -------------------------------------------------------------------------

    def info(self) -> dict[str, object]:
        output = self.run([self.buildah_bin, *self.storage_flags(), "info"], quiet=True)
        if output.returncode != 0:
            raise BuilderError(f"buildah info failed: {output.last_error()}")
        try:
            data = json.loads("\n".join(output.tail))
        except json.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def build(
        self,
        *,
        context: Path,
        containerfile: Path,
        tag: str,
        annotations: dict[str, str] | None = None,
        timestamp: int = 0,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """``buildah build --layers --timestamp``: one layer per COPY, reproducible digests."""
        output = self.buildah(
            "build",
            "--isolation",
            "chroot",
            "--layers",
            "--timestamp",
            str(timestamp),
            "--identity-label=false",
            "--format",
            "oci",
            f"--tls-verify={self._tls()}",
            *(["--authfile", str(self.auth_file)] if self.auth_file else []),
            *self._policy_args("--signature-policy"),
            *[f"--annotation={k}={v}" for k, v in sorted((annotations or {}).items())],
            "-f",
            str(containerfile),
            "-t",
            tag,
            str(context),
            on_line=on_line,
        )
        if output.returncode != 0:
            error = output.last_error()
            if _looks_remote(error):
                raise RegistryError(f"buildah build could not pull the base image: {error}")
            raise BuilderError(f"buildah build failed: {error}")

    def push(
        self,
        *,
        image: str,
        destination: str,
        compression: Literal["gzip", "zstd"],
        digest_file: Path,
    ) -> None:
        """``buildah push`` with gzip or zstd layers; ``destination`` has a transport prefix."""
        output = self.buildah(
            "push",
            "--compression-format",
            compression,
            "--format",
            "oci",
            f"--tls-verify={self._tls()}",
            "--digestfile",
            str(digest_file),
            *(["--authfile", str(self.auth_file)] if self.auth_file else []),
            *self._policy_args("--signature-policy"),
            image,
            destination,
        )
        if output.returncode != 0:
            raise RegistryError(f"buildah push to {destination} failed: {output.last_error()}")

    def skopeo_copy(
        self,
        *,
        source: str,
        destination: str,
        extra: Sequence[str] = (),
        digest_file: Path | None = None,
    ) -> None:
        """``skopeo copy`` with our temp dir, auth file and TLS setting on the registry side."""
        argv = [
            self.skopeo_bin,
            "--tmpdir",
            str(self.paths.tmp_dir),
            *self._policy_args("--policy"),
            "copy",
            "--retry-times",
            "3",
            *(["--digestfile", str(digest_file)] if digest_file else []),
        ]
        if destination.startswith("docker://"):
            argv += [f"--dest-tls-verify={self._tls()}"]
            if self.auth_file is not None:
                argv += ["--dest-authfile", str(self.auth_file)]
        argv += [*extra, source, destination]
        output = self.run(argv)
        if output.returncode != 0:
            error = output.last_error()
            if destination.startswith("docker://"):
                raise RegistryError(f"skopeo copy to {destination} failed: {error}")
            raise BuilderError(f"skopeo copy to {destination} failed: {error}")

    def remove_storage(self) -> None:
        """Delete every container and image of our store, then the store's directories.

        Runs ``buildah rm --all`` first so a container mounted outside a private namespace is
        unmounted by its owner; whatever mount is still left under the root is detached before
        the directories go.
        """
        root = self.paths.storage_root
        if root.exists():
            self.run([self.buildah_bin, *self.storage_flags(), "rm", "--all"], quiet=True)
            self.run(
                [self.buildah_bin, *self.storage_flags(), "rmi", "--all", "--force"], quiet=True
            )
            for mount_point in _mounts_under(root):
                subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
        for path in (root, self.paths.run_root):
            shutil.rmtree(path, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root.absolute())
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _looks_remote(error: str) -> bool:
    lowered = error.lower()
    return any(
        word in lowered
        for word in (
            "pinging container registry",
            "unauthorized",
            "manifest unknown",
            "initializing source",
            "connection refused",
            "no such host",
            "authentication required",
            "denied",
        )
    )
