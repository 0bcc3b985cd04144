"""Small filesystem helpers: atomic writes and free-space checks shared by every step."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from steps.errors import InsufficientSpaceError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part.

    Temp file in the same directory, fsync, rename, fsync the directory: a kill or power loss at
    any point leaves either nothing or the complete file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: Any = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk, without waiting.

    Long writers call this every few MiB so the final fsync finds little left to flush: disk
    writes overlap the network instead of following it (Linux ``sync_file_range`` with
    ``SYNC_FILE_RANGE_WRITE``; a no-op where that is missing). Durability still comes only
    from the fsync.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            _libc.sync_file_range.argtypes = [
                ctypes.c_int,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_uint,
            ]
        except (OSError, AttributeError, TypeError):
            _libc = False
    if _libc:
        _libc.sync_file_range(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


def nearest_existing(path: Path) -> Path:
    """The path itself or its closest existing ancestor (what statvfs can be asked about)."""
    current = path.absolute()
    while not current.exists():
        current = current.parent
    return current


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(nearest_existing(path)).free


def ensure_free_space(path: Path, needed: int, *, what: str) -> None:
    """Fail before writing anything when ``path``'s volume has less than ``needed`` bytes free."""
    available = free_bytes(path)
    if available < needed:
        raise InsufficientSpaceError(
            f"{path}: {what} needs {human_bytes(needed)} but the volume has "
            f"{human_bytes(available)} free; free space or use a larger volume/PVC"
        )


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
