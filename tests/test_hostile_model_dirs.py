"""Hostile model directories: each is rejected with one clear line or packaged safely.

Every case runs the real build step CLI (stream builder → OCI layout, busybox base) as a
subprocess on a model directory with one hostile entry. A canary file sits *outside* the model
directory; its content must never appear in any blob the build writes, whatever the outcome.
Special files (FIFO, device, socket) must be refused without opening them (a FIFO would hang a
reader), and a sparse file far over the layer cap must be refused without reading it (the test
would time out if it were read).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.registry import write_busybox_layout

REPO_ROOT = Path(__file__).resolve().parent.parent
CANARY = b"CANARY-outside-the-model-dir-7f3a9c1e"

Setup = Callable[[Path, Path], None]  # (model dir, canary path)


def _link(name: str, target: Callable[[Path, Path], str]) -> Setup:
    def setup(model: Path, canary: Path) -> None:
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target(model, canary), model / name)

    return setup


def _fifo(model: Path, canary: Path) -> None:
    os.mkfifo(model / "pipe.json")


def _device(model: Path, canary: Path) -> None:
    os.mknod(model / "null.json", stat.S_IFCHR | 0o644, os.makedev(1, 3))


def _socket(model: Path, canary: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(model / "sock.json"))
    sock.close()


def _sparse(model: Path, canary: Path) -> None:
    with (model / "huge.safetensors").open("wb") as handle:
        handle.truncate(20 * 1024**3)  # 20 GiB of holes; the default cap is 9,500 MiB


def _non_utf8(model: Path, canary: Path) -> None:
    with open(os.path.join(os.fsencode(model), b"bad-\xff.json"), "wb") as handle:
        handle.write(b"{}")


def _hard_links(model: Path, canary: Path) -> None:
    os.link(model / "model.safetensors", model / "copy.safetensors")
    (model / "sub").mkdir()
    os.link(model / "config.json", model / "sub" / "config.json")


def _dot_names(model: Path, canary: Path) -> None:
    (model / "..json").write_bytes(b'{"dots": 2}')
    (model / "...").write_bytes(b"three dots")
    (model / "a..b.safetensors").write_bytes(b"\x00" * 64)


def _loop(model: Path, canary: Path) -> None:
    os.symlink("loop-b.json", model / "loop-a.json")
    os.symlink("loop-a.json", model / "loop-b.json")


# name -> (setup, expected exit code, text the error must contain, or files the image must hold)
CASES: dict[str, tuple[Setup, int, str | dict[str, bytes | None]]] = {
    "symlink-escaping-relative": (
        _link("evil.json", lambda m, c: os.path.relpath(c, m)),
        2,
        "outside the model directory",
    ),
    "symlink-escaping-absolute": (_link("evil.json", lambda m, c: str(c)), 2, "outside"),
    "symlink-named-dots-escaping": (_link("...", lambda m, c: "../../canary.txt"), 2, "outside"),
    "symlink-dir-escaping": (_link("d", lambda m, c: str(c.parent)), 2, "outside"),
    "symlink-dir-inside": (_link("d", lambda m, c: str(m / "sub0")), 2, "directory"),
    "symlink-broken": (_link("gone.json", lambda m, c: "nowhere.json"), 2, "broken symlink"),
    "symlink-loop": (_loop, 2, "loop-a.json"),
    "fifo": (_fifo, 2, "not a regular file"),
    "char-device": (_device, 2, "not a regular file"),
    "unix-socket": (_socket, 2, "not a regular file"),
    "sparse-over-cap": (_sparse, 2, "re-shard"),
    "non-utf8-name": (_non_utf8, 2, "UTF-8"),
    "symlink-absolute-inside": (
        _link("alias.json", lambda m, c: str(m / "config.json")),
        0,
        {"alias.json": b'{"model_type": "llama"}'},
    ),
    "symlink-dotdot-inside": (
        _link("sub0/up.json", lambda m, c: "../config.json"),
        0,
        {"sub0/up.json": b'{"model_type": "llama"}'},
    ),
    "hard-links": (
        _hard_links,
        0,
        {"copy.safetensors": None, "sub/config.json": b'{"model_type": "llama"}'},
    ),
    "dot-names": (
        _dot_names,
        0,
        {"..json": b'{"dots": 2}', "...": b"three dots", "a..b.safetensors": b"\x00" * 64},
    ),
}


def _model(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True)
    canary = root / "canary.txt"
    canary.write_bytes(CANARY)
    model = root / "m" / "source"
    (model / "sub0").mkdir(parents=True)
    (model / "config.json").write_bytes(b'{"model_type": "llama"}')
    (model / "sub0" / "tokenizer.json").write_bytes(b'{"v": 1}')
    (model / "model.safetensors").write_bytes(os.urandom(200_000))
    return model, canary


def _layout_files(out: Path) -> dict[str, bytes]:
    """Files of the image's model layers (``/models/...``), read from the OCI layout."""
    import io
    import tarfile

    from steps.oci import Layout

    layout = Layout(out)
    manifest = json.loads(layout.read_blob(layout.resolve("t").digest))
    found: dict[str, bytes] = {}
    for desc in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(layout.read_blob(desc["digest"]))) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("models/"):
                    data = tar.extractfile(member)
                    assert data is not None
                    found[member.name.removeprefix("models/")] = data.read()
                    assert member.mode & 0o777 == 0o644 and member.uid == 0
    return found


def _run(name: str, root: Path, base: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
    model, canary = _model(root)
    CASES[name][0](model, canary)
    out = root / "out"
    cmd = [sys.executable, "-m", "steps", "build", "--builder", "stream", "--src", str(model),
           "--target", f"oci:{out}:t", "--model", "org/hostile", "--revision", "a" * 40,
           "--base", base]  # fmt: skip
    env = {**os.environ, "SYNESIS_NO_PROGRESS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    return name, done, out


def test_hostile_model_directories(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes need root (mknod)")
    base = write_busybox_layout(tmp_path / "base")
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda n: _run(n, tmp_path / n, base), CASES))
    failures = []
    for name, done, out in runs:
        _setup, code, expect = CASES[name]
        try:
            assert done.returncode == code, done.stderr
            assert "Traceback" not in done.stderr, done.stderr
            for blob in (out / "blobs" / "sha256").glob("*") if out.exists() else []:
                assert CANARY not in blob.read_bytes(), "canary leaked into a blob"
            marker = tmp_path / name / "m" / ".synesis" / "build.json"
            if code:
                errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
                assert len(errors) == 1, done.stderr
                assert isinstance(expect, str) and expect in errors[0], errors[0]
                assert not marker.exists()
            else:
                assert isinstance(expect, dict) and marker.exists()
                files = _layout_files(out)
                model = tmp_path / name / "m" / "source"
                for rel, data in expect.items():
                    wanted = data if data is not None else (model / rel).read_bytes()
                    assert files[rel] == wanted, rel
                assert files["model.safetensors"] == (model / "model.safetensors").read_bytes()
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
