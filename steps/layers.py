"""Layer plan: which model files go into which image layer, decided before any byte is read.

The plan is a pure function of the directory listing (names, sizes) and the registry's layer cap,
so the same files always give the same layers, and the exact size of every layer's tar blob is
known up front (the stream builder needs it for upload checks, verify for the cap check).

Rules, and why:
- Sizes count the tar overhead exactly (headers, PAX records for long names, 512-byte padding,
  parent directory entries, the two end-of-archive blocks): registries cap the blob, not the data.
- Small non-weight files (configs, tokenizer, templates) go first, in their own layer(s), so a
  weights-only change reuses that layer and KServe finds ``config.json`` early.
- Weight files are grouped first-fit in sorted order: deterministic and close to the fewest layers.
- A file that cannot fit a layer on its own is an error naming the file and the fix.

Symlink policy (documented because the Hugging Face cache is made of symlinks): a link inside the
model directory is followed only when its resolved target is a regular file inside the model
directory, or — when the model directory is a Hub cache snapshot (``<repo>/snapshots/<rev>``) —
inside that same repo's ``blobs/`` directory. Any other target is an error and is never read.
Symlinked directories, devices, FIFOs and sockets are errors too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from steps.errors import BadInputError
from steps.tarstream import (
    BLOCK,
    END_OF_ARCHIVE,
    TarEntry,
    TarStream,
    dir_header,
    file_header,
    padding,
)

# Directories huggingface_hub and Synesis keep inside a model dir; never part of the image.
SKIP_TOP_LEVEL = frozenset({".cache", ".synesis"})
WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx", ".npz"}
)
# Non-weight files up to this size count as "small" (tokenizer.json files reach ~35 MiB).
SMALL_FILE_BYTES = 64 * 1024 * 1024
TAR_FORMAT_VERSION = 1  # bump when the tar bytes change, so markers and digest caches expire


@dataclass(frozen=True)
class PlannedFile:
    """One file of the model: its path in the image (under the prefix) and where to read it."""

    rel_path: str  # posix, relative to the model dir
    source: Path  # real path of the bytes (a symlink's resolved target)
    size: int
    mtime_ns: int = 0
    inode: int = 0


@dataclass(frozen=True)
class PlannedLayer:
    index: int
    files: tuple[PlannedFile, ...]
    blob_size: int  # exact bytes of the uncompressed tar blob

    @property
    def data_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def cache_key(self, prefix: str) -> dict[str, Any]:
        """What identifies this layer's bytes without reading them (for the digest cache)."""
        return {
            "tar": TAR_FORMAT_VERSION,
            "prefix": prefix,
            "files": [[f.rel_path, f.size, f.mtime_ns, f.inode] for f in self.files],
        }


@dataclass(frozen=True)
class LayerPlan:
    layers: tuple[PlannedLayer, ...]
    cap_bytes: int
    prefix: str

    @property
    def files(self) -> tuple[PlannedFile, ...]:
        return tuple(f for layer in self.layers for f in layer.files)

    @property
    def total_blob_bytes(self) -> int:
        return sum(layer.blob_size for layer in self.layers)

    def fingerprint_inputs(self) -> dict[str, Any]:
        """Non-secret inputs that decide the layers' bytes, for step markers."""
        return {
            "tar": TAR_FORMAT_VERSION,
            "prefix": self.prefix,
            "cap_bytes": self.cap_bytes,
            "files": sorted([f.rel_path, f.size, f.mtime_ns] for f in self.files),
        }


def entry_names(prefix: str, files: tuple[PlannedFile, ...] | list[PlannedFile]) -> list[str]:
    """Directory names (no trailing slash) a layer holding ``files`` must contain."""
    dirs = {prefix}
    for f in files:
        parent = PurePosixPath(f.rel_path).parent
        while str(parent) != ".":
            dirs.add(f"{prefix}/{parent}")
            parent = parent.parent
    return sorted(dirs, key=lambda name: name.split("/"))


def layer_entries(layer: PlannedLayer, prefix: str) -> list[TarEntry]:
    """The tar entries of a layer in archive order: parents before children, sorted by path."""
    entries = [TarEntry(name=d) for d in entry_names(prefix, layer.files)]
    entries += [TarEntry(f"{prefix}/{f.rel_path}", f.source, f.size) for f in layer.files]
    entries.sort(key=lambda e: e.name.split("/"))
    return entries


def open_layer(layer: PlannedLayer, prefix: str) -> TarStream:
    """A fresh deterministic tar stream of ``layer`` (call again to restart from byte 0)."""
    return TarStream(layer_entries(layer, prefix))


def file_entry_bytes(prefix: str, f: PlannedFile) -> int:
    return len(file_header(f"{prefix}/{f.rel_path}", f.size)) + f.size + len(padding(f.size))


def _dir_entry_bytes(name: str) -> int:
    return len(dir_header(name))


def layer_blob_size(prefix: str, files: tuple[PlannedFile, ...] | list[PlannedFile]) -> int:
    dirs = sum(_dir_entry_bytes(d) for d in entry_names(prefix, files))
    return dirs + sum(file_entry_bytes(prefix, f) for f in files) + END_OF_ARCHIVE


class _Bin:
    """A layer being filled: tracks its exact size as files are added."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.files: list[PlannedFile] = []
        self.dirs: set[str] = {prefix}
        self.size = _dir_entry_bytes(prefix) + END_OF_ARCHIVE

    def cost(self, f: PlannedFile) -> tuple[int, set[str]]:
        new_dirs = set(entry_names(self.prefix, [f])) - self.dirs
        return file_entry_bytes(self.prefix, f) + sum(map(_dir_entry_bytes, new_dirs)), new_dirs

    def add(self, f: PlannedFile, cost: int, new_dirs: set[str]) -> None:
        self.files.append(f)
        self.dirs |= new_dirs
        self.size += cost


def _is_small(f: PlannedFile) -> bool:
    suffix = PurePosixPath(f.rel_path).suffix.lower()
    return suffix not in WEIGHT_SUFFIXES and f.size <= SMALL_FILE_BYTES


def plan_layers(
    model_dir: Path, *, cap_bytes: int, prefix: str = "models", profile_hint: str = ""
) -> LayerPlan:
    """Group the files of ``model_dir`` into layers whose tar blobs are each ≤ ``cap_bytes``.

    Args:
        model_dir: the downloaded (or quantized) model directory.
        cap_bytes: largest blob a layer may be, tar overhead included (the registry profile's cap).
        prefix: directory in the image the files go under (KServe wants ``models``).
        profile_hint: registry profile name, only used to make the over-cap error precise.

    Raises:
        BadInputError: missing or empty directory, a file over the cap, an unsafe symlink,
            a special file or a name that cannot be put in a tar safely.
    """
    if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
        raise BadInputError(f"layer prefix {prefix!r}: use a relative path such as 'models'")
    files = scan_model_dir(model_dir)
    small = [f for f in files if _is_small(f)]
    big = [f for f in files if not _is_small(f)]

    def too_big(f: PlannedFile) -> BadInputError:
        alone = layer_blob_size(prefix, [f])
        where = f" of registry profile {profile_hint!r}" if profile_hint else ""
        return BadInputError(
            f"{model_dir / f.rel_path}: {alone} bytes as a layer is over the layer cap{where} "
            f"({cap_bytes} bytes); re-shard the model into smaller files or choose a registry "
            "profile with a larger cap"
        )

    bins: list[_Bin] = []
    # Small files: next-fit in sorted order, so they stay together in the first layer(s).
    current: _Bin | None = None
    for f in small:
        if current is not None:
            cost, new_dirs = current.cost(f)
            if current.size + cost <= cap_bytes:
                current.add(f, cost, new_dirs)
                continue
        current = _Bin(prefix)
        cost, new_dirs = current.cost(f)
        if current.size + cost > cap_bytes:
            raise too_big(f)
        current.add(f, cost, new_dirs)
        bins.append(current)
    # Weights: first-fit in sorted order.
    big_bins: list[_Bin] = []
    for f in big:
        for candidate in big_bins:
            cost, new_dirs = candidate.cost(f)
            if candidate.size + cost <= cap_bytes:
                candidate.add(f, cost, new_dirs)
                break
        else:
            fresh = _Bin(prefix)
            cost, new_dirs = fresh.cost(f)
            if fresh.size + cost > cap_bytes:
                raise too_big(f)
            fresh.add(f, cost, new_dirs)
            big_bins.append(fresh)
    bins.extend(big_bins)
    layers = tuple(
        PlannedLayer(index=i, files=tuple(b.files), blob_size=b.size) for i, b in enumerate(bins)
    )
    return LayerPlan(layers=layers, cap_bytes=cap_bytes, prefix=prefix)


def _check_name(model_dir: Path, rel: str) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
        raise BadInputError(f"{model_dir}: file name {rel!r} is unsafe in an image; rename it")
    try:
        rel.encode("utf-8", "strict")
    except UnicodeEncodeError as exc:
        raise BadInputError(
            f"{model_dir}: file name {rel!r} is not valid UTF-8; rename it"
        ) from exc


def _allowed_roots(root: Path) -> list[Path]:
    roots = [root]
    blobs = root.parent.parent / "blobs"
    if root.parent.name == "snapshots" and blobs.is_dir():
        roots.append(blobs.resolve())
    return roots


def scan_model_dir(model_dir: Path) -> list[PlannedFile]:
    """Every file of the model, sorted by path, with symlinks resolved under the safety policy."""
    try:
        root = model_dir.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise BadInputError(
            f"model directory {model_dir} does not exist; run the download step first "
            "or pass the right --src"
        ) from exc
    if not root.is_dir():
        raise BadInputError(f"model directory {model_dir} is not a directory; pass the model dir")
    roots = _allowed_roots(root)
    found: list[PlannedFile] = []

    def walk(directory: Path, rel_dir: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not rel_dir and entry.name in SKIP_TOP_LEVEL:
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            _check_name(model_dir, rel)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(entry.path))
                if not any(target.is_relative_to(r) for r in roots):
                    raise BadInputError(
                        f"{model_dir / rel}: symlink points outside the model directory "
                        f"({os.readlink(entry.path)}); copy the file in or remove the link"
                    )
                try:
                    st = target.stat()
                except FileNotFoundError as exc:
                    raise BadInputError(
                        f"{model_dir / rel}: broken symlink; re-run the download step"
                    ) from exc
                except OSError as exc:  # a loop (ELOOP), a target we may not stat
                    raise BadInputError(
                        f"{model_dir / rel}: symlink cannot be followed ({exc.strerror}); "
                        "replace it with the real file"
                    ) from exc
                if not stat.S_ISREG(st.st_mode):
                    raise BadInputError(
                        f"{model_dir / rel}: symlink to a directory or special file; "
                        "replace it with the real files"
                    )
                found.append(_planned(rel, target, st))
            elif stat.S_ISDIR(st.st_mode):
                walk(Path(entry.path), rel)
            elif stat.S_ISREG(st.st_mode):
                found.append(_planned(rel, Path(entry.path), st))
            else:
                raise BadInputError(
                    f"{model_dir / rel}: not a regular file (device, FIFO or socket); remove it"
                )

    walk(root, "")
    if not found:
        raise BadInputError(
            f"model directory {model_dir} has no files; run the download step first"
        )
    found.sort(key=lambda f: f.rel_path.split("/"))
    return found


def _planned(rel: str, source: Path, st: os.stat_result) -> PlannedFile:
    return PlannedFile(
        rel_path=rel, source=source, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino
    )


__all__ = [
    "BLOCK",
    "LayerPlan",
    "PlannedFile",
    "PlannedLayer",
    "entry_names",
    "layer_blob_size",
    "layer_entries",
    "open_layer",
    "plan_layers",
    "scan_model_dir",
]
