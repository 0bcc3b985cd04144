"""Full disks: the download and the buildah build onto a small tmpfs the test mounts.

Real filesystems, real ENOSPC: each test mounts a tmpfs of a few MiB in its temp dir (we run as
root; the test skips, saying why, where mounting is refused). A step that cannot fit must fail
with exit 1, one ``error:`` line naming the volume and the fix, and no marker; after space is
freed (a filler file deleted, or the tmpfs remounted bigger) the same command resumes and
completes, without fetching finished bytes again.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from steps import markers
from tests.support.faults import FaultProxy, file_set_digest
from tests.support.hub_server import HubServer
from tests.support.registry import RegistryServer
from tests.test_faults import make_model

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "acme/bigger-than-disk"
MiB = 1024 * 1024


def _mount(path: Path, size_mib: int, *, remount: bool = False) -> None:
    options = f"size={size_mib}m" + (",remount" if remount else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root + CAP_SYS_ADMIN"
        )


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    volume = tmp_path / "volume"
    volume.mkdir()
    _mount(volume, 2)
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _download_cmd(dest: Path) -> list[str]:
    return [sys.executable, "-m", "steps", "download", "--model", MODEL_ID, "--dest", str(dest),
            "--workers", "2"]  # fmt: skip


@pytest.fixture
def published(hub_env: HubServer, tmp_path: Path) -> dict[str, bytes]:
    files = make_model(tmp_path / "published", seed=31)  # ~3 MiB
    hub_env.add_repo(MODEL_ID).commit(files)
    return files


def test_download_too_big_for_the_volume_fails_before_writing_then_resumes(
    small_volume: Path, published: dict[str, bytes], hub_env: HubServer
) -> None:
    dest = small_volume / "m" / "source"
    env = {**os.environ, "SYNESIS_NO_PROGRESS": "1"}
    first = subprocess.run(_download_cmd(dest), env=env, capture_output=True, text=True,
                           cwd=REPO_ROOT)  # fmt: skip
    line = _one_error_line(first, 1)
    assert str(dest) in line and "free space" in line
    assert hub_env.file_requests() == []  # refused before any byte
    assert markers.read_marker(small_volume / "m" / ".synesis", "download") is None

    _mount(small_volume, 16, remount=True)
    again = subprocess.run(_download_cmd(dest), env=env, capture_output=True, text=True,
                           cwd=REPO_ROOT)  # fmt: skip
    assert again.returncode == 0, again.stderr
    for rel, data in published.items():
        assert (dest / rel).read_bytes() == data


def test_volume_filling_up_mid_download_fails_clearly_then_resumes(
    small_volume: Path, published: dict[str, bytes], hub_env: HubServer
) -> None:
    """Someone else fills the volume while we download: ENOSPC mid-file, not a traceback."""
    _mount(small_volume, 8, remount=True)
    proxy = FaultProxy(hub_env.url.removeprefix("http://"), rate=1.5 * MiB)
    dest = small_volume / "m" / "source"
    env = {**os.environ, "SYNESIS_NO_PROGRESS": "1", "HF_ENDPOINT": proxy.url}
    filler = small_volume / "filler"
    try:
        process = subprocess.Popen(_download_cmd(dest), env=env, cwd=REPO_ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert process.stderr is not None
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert process.stderr is not None
            for text in process.stderr:
                lines.put(text)

        threading.Thread(target=read, daemon=True).start()
        seen = ""
        while "fetching" not in seen:
            seen = lines.get(timeout=60)
        time.sleep(0.3)
        with filler.open("wb") as handle:  # take every byte left
            try:
                while True:
                    handle.write(b"\0" * (256 * 1024))
                    handle.flush()
            except OSError:
                pass
        process.wait(timeout=60)
        stderr = "".join(iter_queue(lines))
        first = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
        line = _one_error_line(first, 1)
        assert "filled up" in line and "run again to resume" in line
        assert markers.read_marker(small_volume / "m" / ".synesis", "download") is None
        partial_bytes = proxy.response_bytes

        filler.unlink()
        again = subprocess.run(_download_cmd(dest), env=env, capture_output=True, text=True,
                               cwd=REPO_ROOT)  # fmt: skip
        assert again.returncode == 0, again.stderr
    finally:
        proxy.stop()
    total = sum(len(v) for v in published.values())
    resent = proxy.response_bytes - total
    print(f"\nfull disk mid-download: first run moved {partial_bytes}, re-sent {resent} bytes")
    assert partial_bytes > 0 and resent <= 2 * MiB  # partial files were kept, not restarted
    for rel, data in published.items():
        assert (dest / rel).read_bytes() == data


def iter_queue(lines: queue.Queue[str]) -> Iterator[str]:
    while True:
        try:
            yield lines.get(timeout=1)
        except queue.Empty:
            return


# -- buildah ---------------------------------------------------------------------------------


@pytest.mark.buildah
@pytest.mark.skipif(
    shutil.which("buildah") is None or shutil.which("skopeo") is None, reason="needs buildah"
)
def test_buildah_scratch_too_small_fails_clearly_then_resumes(
    small_volume: Path, registry: RegistryServer, busybox_base: str, tmp_path: Path,
    isolated_auth: Path,
) -> None:  # fmt: skip
    src = tmp_path / "work" / "org--tiny" / "source"
    src.mkdir(parents=True)
    files = make_model(src, seed=41)
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    cluster = yaml.safe_load((config / "cluster.yaml").read_text())
    cluster["build"].update(
        builder="buildah", layer_format="none", storage_driver="overlay",
        scratch_dir=str(small_volume / "scratch"),
    )  # fmt: skip
    (config / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    env = {**os.environ, "SYNESIS_CONFIG_DIR": str(config), "SYNESIS_NO_PROGRESS": "1",
           "HOME": str(isolated_auth)}  # fmt: skip
    cmd = [sys.executable, "-m", "steps", "build", "--builder", "buildah", "--src", str(src),
           "--target", f"{registry.host}/full/disk:v1", "--model", "org/tiny",
           "--revision", "e" * 40, "--base", busybox_base]  # fmt: skip
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                           timeout=300)  # fmt: skip
    line = _one_error_line(first, 1)
    assert str(small_volume) in line and ("free" in line or "space" in line), line
    assert markers.read_marker(src.parent / ".synesis", "build") is None

    _mount(small_volume, 640, remount=True)  # the overlay preflight reserves ~512 MiB
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    marker = markers.read_marker(src.parent / ".synesis", "build")
    assert marker is not None
    manifest, _ = registry.client().get_manifest("full/disk", marker.outputs["digest"])
    assert manifest and file_set_digest(src) and len(files) == 5
