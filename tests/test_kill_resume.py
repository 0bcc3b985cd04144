"""``kill -9`` at seeded random points of each step, then ``--resume``.

The local runner (``workflows/submit.py manager --local``) runs as a subprocess against the Hub
stand-in and a real ``docker-registry``, each behind a throttled ``FaultProxy`` so a transfer
takes about a second and a kill can land mid-file or mid-layer. For each trial the test waits
for ``[i/n] <step>: starting``, sleeps a seeded random fraction of that step's clean duration
and sends SIGKILL. Then:

- every marker on disk must tell the truth (files with the Hub's bytes, a manifest and its blobs
  in the registry, a verify for that digest, a removed source dir) — no marker ever claims an
  unfinished step;
- ``--resume`` must finish with the clean run's image digest, skip every step whose marker
  survived (and fetch no file again once the download marker exists).

Quantize is killed through its own step CLI (``python -m steps quantize``), with the tiny Llama.
Default run: 2 trials per step; ``-m slow``: 10 per step.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from steps import markers
from steps.check_markers import WorkLayout
from tests.support.faults import FaultProxy, file_set_digest
from tests.support.hub_server import HubServer
from tests.support.registry import RegistryServer
from tests.test_faults import make_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBMIT = str(REPO_ROOT / "workflows" / "submit.py")
MODEL_ID = "org/killme"
STEPS = ("download", "build", "verify", "cleanup")
RATE = 3 * 1024 * 1024  # bytes/s through each proxy: ~1 s per transfer
DEFAULT_TRIALS = 2
SLOW_TRIALS = 10


@dataclass
class Rig:
    hub: HubServer
    hub_proxy: FaultProxy
    reg_proxy: FaultProxy
    registry: RegistryServer
    base: str
    files: dict[str, bytes]
    clean: dict[str, Any]
    durations: dict[str, float]
    root: Path


def _command(work: Path, target: str, base: str, *extra: str) -> list[str]:
    return [
        sys.executable, SUBMIT, "manager", "--local", "--model", MODEL_ID, "--tag", "t",
        "--work", str(work), "--target", target, "--base", base, *extra,
    ]  # fmt: skip


def _env(hub_proxy: FaultProxy) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_ENDPOINT=hub_proxy.url, SYNESIS_NO_PROGRESS="1", SYNESIS_REGISTRY_BACKOFF="0.05")
    for name in ("SYNESIS_BASE_IMAGE", "ECR_URI", "SYNESIS_BUILDER", "ARGO_PROGRESS_FILE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, busybox_base: str
) -> Any:
    import _pytest.monkeypatch

    root = tmp_path_factory.mktemp("kill")
    mp = _pytest.monkeypatch.MonkeyPatch()
    hub = HubServer().start()
    mp.setenv("HF_HOME", str(root / "hf-home"))
    mp.setenv("HF_HUB_DISABLE_XET", "1")
    mp.setenv("HF_TOKEN_PATH", str(root / "no-token"))
    mp.delenv("HF_TOKEN", raising=False)
    files = make_model(root / "published", seed=21)
    hub.add_repo(MODEL_ID).commit(files)
    hub_proxy = FaultProxy(hub.url.removeprefix("http://"), rate=RATE)
    reg_proxy = FaultProxy(registry.host, rate=RATE)
    work = root / "clean-work"
    done = subprocess.run(
        _command(work, f"{reg_proxy.host}/kill/clean:t", busybox_base),
        env=_env(hub_proxy), capture_output=True, text=True, timeout=120, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    clean = json.loads(done.stdout.strip().splitlines()[-1])
    durations = {s["step"]: max(float(s["seconds"]), 0.2) for s in clean["steps"]}
    yield Rig(hub, hub_proxy, reg_proxy, registry, busybox_base, files, clean, durations, root)
    hub_proxy.stop()
    reg_proxy.stop()
    hub.stop()
    mp.undo()


def _reader(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def kill_during(cmd: list[str], env: dict[str, str], cwd: Path, step: str, delay: float) -> str:
    """Start ``cmd``; SIGKILL it ``delay`` s after ``step: starting``; return where it was."""
    process = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(process.stderr, lines), daemon=True).start()
    current = "startup"
    deadline = time.monotonic() + 120
    kill_at: float | None = None
    while time.monotonic() < deadline:
        timeout = 0.05 if kill_at is None else max(0.0, kill_at - time.monotonic())
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if line is None:
            break  # the run ended before the kill point
        if ": starting" in line:
            current = line.split("]", 1)[1].split(":", 1)[0].strip()
            if current == step and kill_at is None:
                kill_at = time.monotonic() + delay
        if kill_at is not None and time.monotonic() >= kill_at:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    return current if process.returncode == -signal.SIGKILL else "finished"


def check_markers_tell_the_truth(layout: WorkLayout, rig: Rig) -> dict[str, bool]:
    """Every marker present must match what is on disk and in the registry."""
    state = layout.state_dir
    found = {s: markers.read_marker(state, s) is not None for s in STEPS}
    download = markers.read_marker(state, "download")
    build = markers.read_marker(state, "build")
    verify = markers.read_marker(state, "verify")
    cleanup = markers.read_marker(state, "cleanup")
    # Cleanup renames the source away in one step before deleting it, so after a verify the
    # source is either whole or gone (a cleanup killed before its marker); both are truthful.
    cleaning = verify is not None and not layout.source.exists()
    if download is not None and cleanup is None and not cleaning:
        listed = {e["path"]: e["size"] for e in download.outputs["files"]}
        assert set(listed) == set(rig.files)
        for rel, data in rig.files.items():
            assert (layout.source / rel).read_bytes() == data, f"download marker lies: {rel}"
    if build is not None:
        repository = build.outputs["target"].split("/", 1)[1].rsplit(":", 1)[0]
        client = rig.registry.client()
        manifest, _ = client.get_manifest(repository, build.outputs["digest"])
        for layer in json.loads(manifest)["layers"]:
            assert client.blob_exists(repository, layer["digest"]), "build marker lies"
    if verify is not None:
        assert build is not None and verify.outputs["digest"] == build.outputs["digest"]
    if cleanup is not None:
        assert verify is not None and not layout.source.exists(), "cleanup marker lies"
    return found


def run_trial(rig: Rig, step: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    delay = rng.uniform(0, rig.durations[step] * 1.1)
    work = rig.root / f"w-{step}-{seed}"
    target = f"{rig.reg_proxy.host}/kill/{step}-{seed}:t"
    env = _env(rig.hub_proxy)
    layout = WorkLayout.of(work, MODEL_ID)
    where = kill_during(_command(work, target, rig.base), env, rig.root, step, delay)
    before = check_markers_tell_the_truth(layout, rig)
    fetched = rig.hub_proxy.response_bytes
    resumed = subprocess.run(
        _command(work, target, rig.base, "--resume"),
        env=env, capture_output=True, text=True, timeout=120, cwd=rig.root,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert result["digest"] == rig.clean["digest"]
    # A step whose marker survived (with every step before it) is skipped, never re-run.
    for index, name in enumerate(STEPS):
        if all(before[s] for s in STEPS[: index + 1]):
            assert statuses[name] in ("done", "skipped"), (name, statuses, before)
    if before["download"]:
        assert rig.hub_proxy.response_bytes == fetched, "files fetched again after the marker"
    after = check_markers_tell_the_truth(layout, rig)
    assert all(after.values()) and not layout.source.exists()
    return {"step": step, "seed": seed, "killed_in": where, "markers": before}


def _trials(count: int) -> list[tuple[str, int]]:
    return [(step, 100 * i + n) for i, step in enumerate(STEPS, 1) for n in range(count)]


@pytest.mark.parametrize(("step", "seed"), _trials(DEFAULT_TRIALS))
def test_kill_9_then_resume(rig: Rig, step: str, seed: int) -> None:
    outcome = run_trial(rig, step, seed)
    print(f"\nkill {outcome}")


@pytest.mark.slow
@pytest.mark.parametrize(("step", "seed"), _trials(SLOW_TRIALS))
def test_kill_9_then_resume_many(rig: Rig, step: str, seed: int) -> None:
    run_trial(rig, step, 10_000 + seed)


# -- quantize, through its own step CLI ------------------------------------------------------


def _quantize_cmd(src: Path, dest: Path, recipe: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "steps", "quantize", "--src", str(src), "--dest", str(dest),
            "--recipe", str(recipe), "--state-dir", str(state)]  # fmt: skip


def _quantize_trials(seeds: range, tmp_path: Path, tiny_llama_dir: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("scheme: NVFP4A16\nquality:\n  held_out_samples: 2\n  max_tokens: 32\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNESIS_NO_PROGRESS": "1"}
    clean_dest, clean_state = tmp_path / "clean" / "quantized", tmp_path / "clean" / ".synesis"
    started = time.monotonic()
    done = subprocess.run(
        _quantize_cmd(tiny_llama_dir, clean_dest, recipe, clean_state),
        env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    clean_seconds = time.monotonic() - started
    clean_digest = file_set_digest(clean_dest)
    for seed in seeds:
        rng = random.Random(seed)
        dest, state = tmp_path / f"q{seed}" / "quantized", tmp_path / f"q{seed}" / ".synesis"
        cmd = _quantize_cmd(tiny_llama_dir, dest, recipe, state)
        process = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.5, clean_seconds))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        marker = markers.read_marker(state, "quantize")
        if marker is not None:  # finished before the kill: it must be whole
            assert file_set_digest(dest) == clean_digest
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                               timeout=300)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == (marker is not None)
        assert file_set_digest(dest) == clean_digest


@pytest.mark.quantize
def test_kill_9_quantize_then_rerun(tmp_path: Path, tiny_llama_dir: Path) -> None:
    _quantize_trials(range(1, 2), tmp_path, tiny_llama_dir)  # ~5 s a run: one by default


@pytest.mark.slow
@pytest.mark.quantize
def test_kill_9_quantize_then_rerun_many(tmp_path: Path, tiny_llama_dir: Path) -> None:
    _quantize_trials(range(100, 100 + SLOW_TRIALS), tmp_path, tiny_llama_dir)
