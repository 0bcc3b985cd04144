"""Deterministic tar, produced as a stream: the image layer bytes without a temp file.

Every header field that could vary between machines is fixed (mtime 0, uid/gid 0, empty user and
group names, mode 0644 for files and 0755 for dirs, no xattrs), so the same files always give the
same bytes and so the same digest. Headers come from ``tarfile`` in PAX format (long or non-ASCII
names get a PAX record); file data is copied straight from the source file into the caller's
buffer, so memory stays one buffer whatever the model size.

The archive ends with two zero blocks and no record padding (as Go's ``archive/tar`` writes it),
which keeps the size a pure function of the entries: ``layers.layer_blob_size`` predicts it.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from steps.errors import BadInputError

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK
FILE_MODE = 0o644
DIR_MODE = 0o755


def _header(name: str, *, size: int, is_dir: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = DIR_MODE if is_dir else FILE_MODE
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


@lru_cache(maxsize=4096)
def dir_header(name: str) -> bytes:
    """Header of a directory entry ``name`` (given without the trailing slash)."""
    return _header(name, size=0, is_dir=True)


def file_header(name: str, size: int) -> bytes:
    return _header(name, size=size, is_dir=False)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


@dataclass(frozen=True)
class TarEntry:
    """One entry: a directory (``source`` None) or a regular file read from ``source``."""

    name: str
    source: Path | None = None
    size: int = 0


def entries_size(entries: list[TarEntry]) -> int:
    total = END_OF_ARCHIVE
    for e in entries:
        if e.source is None:
            total += len(dir_header(e.name))
        else:
            total += len(file_header(e.name, e.size)) + e.size + len(padding(e.size))
    return total


class TarStream:
    """A readable, deterministic tar of ``entries``: call ``readinto`` until it returns 0.

    Files are opened one at a time and read straight into the caller's buffer. A file whose
    size differs from the plan (changed during the build) is an error, never a silent
    truncation, because the layer digest would no longer match the plan.
    """

    def __init__(self, entries: list[TarEntry]) -> None:
        self._entries = iter(entries)
        self._pending = b""  # header/padding bytes still to emit
        self._file: io.FileIO | None = None
        self._entry: TarEntry | None = None
        self._file_left = 0
        self._ended = False
        self.bytes_out = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _advance(self) -> bool:
        """Load the next entry's header into pending; False at the very end."""
        entry = next(self._entries, None)
        if entry is None:
            if self._ended:
                return False
            self._ended = True
            self._pending = b"\0" * END_OF_ARCHIVE
            return True
        if entry.source is None:
            self._pending = dir_header(entry.name)
            return True
        self._pending = file_header(entry.name, entry.size)
        self._entry = entry
        self._file_left = entry.size
        try:
            self._file = io.FileIO(entry.source, "rb")
        except OSError as exc:
            raise BadInputError(
                f"{entry.source}: cannot read ({exc.strerror}); check the model directory"
            ) from exc
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return True

    def _finish_file(self) -> None:
        assert self._file is not None and self._entry is not None
        actual = os.fstat(self._file.fileno()).st_size
        self._file.close()
        self._file = None
        if actual != self._entry.size:
            raise BadInputError(
                f"{self._entry.source}: size changed from {self._entry.size} to {actual} bytes "
                "during the build; let the writer finish, then build again"
            )
        self._pending = padding(self._entry.size)
        self._entry = None

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` completely unless the archive ends first; return bytes written."""
        view = memoryview(buf)
        pos = 0
        total = len(view)
        while pos < total:
            if self._pending:
                n = min(len(self._pending), total - pos)
                view[pos : pos + n] = self._pending[:n]
                self._pending = self._pending[n:]
                pos += n
                continue
            if self._file is not None:
                if self._file_left == 0:
                    self._finish_file()
                    continue
                want = min(self._file_left, total - pos)
                got = self._file.readinto(view[pos : pos + want])
                if not got:
                    assert self._entry is not None
                    raise BadInputError(
                        f"{self._entry.source}: file ended early (shrank during the build); "
                        "let the writer finish, then build again"
                    )
                pos += got
                self._file_left -= got
                continue
            if not self._advance():
                break
        self.bytes_out += pos
        return pos

    def read_all(self, chunk: int = 1 << 20) -> bytes:
        """The whole archive as bytes: for tests and tiny layers only."""
        out = bytearray()
        buf = bytearray(chunk)
        while n := self.readinto(buf):
            out += buf[:n]
        return bytes(out)
