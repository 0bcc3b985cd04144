"""Deterministic streaming tar: fixed metadata, exact sizes, readable by GNU tar."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from steps.errors import BadInputError
from steps.layers import open_layer, plan_layers
from steps.tarstream import TarEntry, TarStream, entries_size

MiB = 1024 * 1024


def _model(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"a": 1}',
        "deep/er/nested.txt": b"x" * 1000,
        ("n" * 120) + "/" + ("long" * 40) + ".json": b"long name",
        "unicodé/ß.json": b"{}",
        "weights.safetensors": os.urandom(300_000),
        "empty.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_fixed_metadata_and_round_trip(tmp_path: Path) -> None:
    files = _model(tmp_path / "m")
    plan = plan_layers(tmp_path / "m", cap_bytes=4 * MiB)
    seen: dict[str, bytes] = {}
    for layer in plan.layers:
        data = open_layer(layer, plan.prefix).read_all()
        assert len(data) == layer.blob_size
        assert data == open_layer(layer, plan.prefix).read_all(chunk=777)  # any buffer size
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = [m.name for m in tar.getmembers()]
            assert names[0] == "models"
            for member in tar.getmembers():
                assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
                assert (member.uname, member.gname) == ("", "")
                assert member.mode == (0o755 if member.isdir() else 0o644)
                assert member.name.startswith("models")
                assert not member.pax_headers.keys() - {"path"}
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    seen[member.name.removeprefix("models/")] = handle.read()
            # Parents precede children, so extraction never needs implicit directories.
            for name in names:
                parent = name.rsplit("/", 1)[0]
                if "/" in name:
                    assert names.index(parent) < names.index(name)
    assert seen == files


def test_gnu_tar_extracts_byte_for_byte(tmp_path: Path) -> None:
    files = _model(tmp_path / "m")
    plan = plan_layers(tmp_path / "m", cap_bytes=4 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    for layer in plan.layers:
        blob = tmp_path / f"layer{layer.index}.tar"
        blob.write_bytes(open_layer(layer, plan.prefix).read_all())
        subprocess.run(["tar", "-xf", str(blob), "-C", str(out)], check=True)
    for rel, data in files.items():
        assert (out / "models" / rel).read_bytes() == data


def test_same_files_same_bytes_across_copies(tmp_path: Path) -> None:
    """Different mtimes, inodes and owners on disk do not change the tar bytes."""
    _model(tmp_path / "a")
    _model(tmp_path / "b")
    for rel in ("weights.safetensors",):
        (tmp_path / "b" / rel).write_bytes((tmp_path / "a" / rel).read_bytes())
    os.utime(tmp_path / "b" / "config.json", (1, 1))
    a = plan_layers(tmp_path / "a", cap_bytes=4 * MiB)
    b = plan_layers(tmp_path / "b", cap_bytes=4 * MiB)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert open_layer(la, "models").read_all() == open_layer(lb, "models").read_all()


def test_file_changed_during_stream_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "w.bin"
    source.write_bytes(b"a" * 10_000)
    entries = [TarEntry("models"), TarEntry("models/w.bin", source, 10_000)]
    assert entries_size(entries) == 512 + 512 + 10_240 + 1024
    source.write_bytes(b"a" * 5_000)
    with pytest.raises(BadInputError, match="shrank"):
        TarStream(entries).read_all()
    source.write_bytes(b"a" * 20_000)
    with pytest.raises(BadInputError, match="size changed"):
        TarStream(entries).read_all()
