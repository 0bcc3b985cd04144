"""Network faults between the steps and real services, injected by a seeded loopback proxy.

``FaultProxy`` (tests/support/faults.py) forwards to a real ``docker-registry`` or to the Hub
stand-in and, per scenario, cuts bodies at random offsets, answers 500/502/503, answers 401
once (an expired token) or stalls past the client timeout (set short through
``SYNESIS_REGISTRY_TIMEOUT`` / ``SYNESIS_HTTP_TIMEOUT``). Each scenario must end exactly where a
clean run ends — the same manifest digest, the same files — and the bytes sent again are
printed and bounded. Nothing is mocked; seeds make every trial replayable.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from steps import markers
from tests.support.faults import (
    DOWNLOAD_SCENARIOS,
    PUSH_SCENARIOS,
    FaultPlan,
    FaultProxy,
    download_through,
    push_resend_bound,
    push_through,
)
from tests.support.hub_server import HubServer
from tests.support.registry import MOTO_ECR_PASSWORD, RegistryServer

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB
MODEL_ID = "acme/faulty"
REPO_ROOT = Path(__file__).resolve().parent.parent


def make_model(root: Path, *, seed: int = 11) -> dict[str, bytes]:
    """~3 MiB over a few files: several layers and chunks, small enough for the default run."""
    rng = random.Random(seed)
    files = {
        "config.json": b'{"model_type": "llama", "hidden_size": 64}',
        "tokenizer.json": json.dumps({"vocab": list(range(500))}).encode(),
        "inference/config.json": b'{"nested": true}',
        "model-00001-of-00002.safetensors": rng.randbytes(1_700_000),
        "model-00002-of-00002.safetensors": rng.randbytes(1_300_000 + 7),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture(autouse=True)
def fast_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNESIS_NO_PROGRESS", "1")
    monkeypatch.setenv("SYNESIS_REGISTRY_TIMEOUT", "1")
    monkeypatch.setenv("SYNESIS_REGISTRY_BACKOFF", "0.02")
    monkeypatch.setenv("SYNESIS_HTTP_TIMEOUT", "1")


@pytest.fixture(scope="module")
def model_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("faults") / "org--tiny" / "source"
    src.mkdir(parents=True)
    make_model(src)
    return src


def _clean_push(
    upstream: RegistryServer, src: Path, base: str, tmp: Path, **kwargs: str
) -> tuple[str, int]:
    proxy = FaultProxy(upstream.host)
    try:
        digest, _ = push_through(
            proxy,
            src=src,
            repository="clean/" + os.urandom(4).hex(),
            state_dir=tmp / "clean-state",
            base=base,
            chunk_bytes=CHUNK,
            **kwargs,
        )
        return digest, proxy.request_bytes
    finally:
        proxy.stop()


def _report(kind: str, scenario: str, proxy: FaultProxy, clean: int, sent: int) -> int:
    resent = max(0, sent - clean)
    print(
        f"\n{kind} {scenario}: faults={len(proxy.injected)} clean={clean} sent={sent} "
        f"resent={resent} ({', '.join(f'{i.kind}:{i.method}:{i.detail}' for i in proxy.injected)})"
    )
    return resent


@pytest.mark.parametrize("scenario", ["reset", "5xx", "stall"])
def test_push_survives_faults_with_the_clean_digest(
    scenario: str,
    registry: RegistryServer,
    busybox_base: str,
    model_src: Path,
    tmp_path: Path,
    isolated_auth: Path,
) -> None:
    clean_digest, clean_bytes = _clean_push(registry, model_src, busybox_base, tmp_path)
    plan = FaultPlan(seed=1000 + len(scenario), **PUSH_SCENARIOS[scenario])
    proxy = FaultProxy(registry.host, plan=plan)
    state = tmp_path / "state"
    try:
        digest, _ = push_through(
            proxy,
            src=model_src,
            repository=f"faults/{scenario}",
            state_dir=state,
            base=busybox_base,
            chunk_bytes=CHUNK,
        )
    finally:
        proxy.stop()
    resent = _report("push", scenario, proxy, clean_bytes, proxy.request_bytes)
    assert digest == clean_digest
    assert len(proxy.injected) >= 1, "the plan injected nothing: the test would prove nothing"
    # A fault costs one chunk, or one layer when a stored chunk's answer was lost: never more.
    assert resent <= push_resend_bound(proxy.injected, chunk=CHUNK, blob=2 * MiB)
    marker = markers.read_marker(state, "build")
    assert marker is not None and marker.outputs["digest"] == clean_digest
    pulled, _ = registry.client().get_manifest(f"faults/{scenario}", clean_digest)
    assert len(pulled) > 0


def _auth_file_for(path: Path, host: str, user: str, password: str) -> Path:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    return path


def test_push_survives_an_expired_registry_login(
    auth_registry: RegistryServer,
    busybox_base: str,
    model_src: Path,
    tmp_path: Path,
    isolated_auth: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """htpasswd registry behind the proxy; one 401 mid-push (the login "expired")."""
    assert auth_registry.username and auth_registry.password
    plan = FaultPlan(seed=7, **PUSH_SCENARIOS["401-once"])
    proxy = FaultProxy(auth_registry.host, plan=plan)
    clean = FaultProxy(auth_registry.host)
    auth = tmp_path / "auth.json"
    encoded = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode())
    auth.write_text(
        json.dumps({"auths": {h: {"auth": encoded.decode()} for h in (proxy.host, clean.host)}})
    )
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    try:
        clean_digest, _ = push_through(
            clean, src=model_src, repository="clean/auth", state_dir=tmp_path / "c",
            base=busybox_base, chunk_bytes=CHUNK,
        )  # fmt: skip
        digest, _ = push_through(
            proxy, src=model_src, repository="faults/auth401", state_dir=tmp_path / "s",
            base=busybox_base, chunk_bytes=CHUNK,
        )  # fmt: skip
    finally:
        proxy.stop()
        clean.stop()
    resent = _report("push", "401-once", proxy, clean.request_bytes, proxy.request_bytes)
    assert digest == clean_digest
    assert [i.kind for i in proxy.injected] == ["auth401"]
    assert resent <= CHUNK + 16 * KiB


def test_ecr_push_survives_an_expired_token(
    ecr_env: dict[str, str],
    ecr_registry: RegistryServer,
    busybox_base: str,
    model_src: Path,
    tmp_path: Path,
    isolated_auth: Path,
) -> None:
    """ECR mode: boto3 → moto token → Basic; the proxy says 401 once; the token is re-fetched."""
    plan = FaultPlan(seed=3, **{**PUSH_SCENARIOS["401-once"], "probability": 0.5})
    proxy = FaultProxy(ecr_registry.host, plan=plan)
    try:
        digest, _ = push_through(
            proxy, src=model_src, repository="team/ecr401", state_dir=tmp_path / "s",
            base=busybox_base, chunk_bytes=CHUNK, auth="ecr",
        )  # fmt: skip
    finally:
        proxy.stop()
    clean_digest, _ = _clean_push(ecr_registry, model_src, busybox_base, tmp_path, auth="ecr")
    assert digest == clean_digest
    assert [i.kind for i in proxy.injected] == ["auth401"]
    assert MOTO_ECR_PASSWORD not in (tmp_path / "s" / "build.json").read_text()


# -- downloads ----------------------------------------------------------------------------------


@pytest.fixture
def hub_repo(hub_env: HubServer, tmp_path: Path) -> dict[str, bytes]:
    model = tmp_path / "published"
    files = make_model(model, seed=5)
    hub_env.add_repo(MODEL_ID).commit(files)
    return files


def _via_proxy(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, plan: FaultPlan | None
) -> FaultProxy:
    proxy = FaultProxy(hub.url.removeprefix("http://"), plan=plan)
    monkeypatch.setenv("HF_ENDPOINT", proxy.url)
    return proxy


@pytest.mark.parametrize("scenario", ["reset", "5xx", "stall"])
def test_download_survives_faults_with_the_same_files(
    scenario: str,
    hub_env: HubServer,
    hub_repo: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean = _via_proxy(hub_env, monkeypatch, None)
    clean_digest, _ = download_through(
        clean, model_id=MODEL_ID, dest=tmp_path / "clean" / "source", state_dir=tmp_path / "cs"
    )
    clean.stop()
    plan = FaultPlan(seed=2000 + len(scenario), **DOWNLOAD_SCENARIOS[scenario])
    proxy = _via_proxy(hub_env, monkeypatch, plan)
    dest = tmp_path / "work" / "source"
    try:
        digest, _ = download_through(proxy, model_id=MODEL_ID, dest=dest, state_dir=tmp_path / "s")
    finally:
        proxy.stop()
    resent = _report("download", scenario, proxy, clean.response_bytes, proxy.response_bytes)
    assert digest == clean_digest
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} >= set(hub_repo)
    assert len(proxy.injected) >= 1
    # A cut costs at most what was in flight in socket buffers, never the file from byte 0.
    assert resent <= len(proxy.injected) * 512 * KiB
    assert markers.read_marker(tmp_path / "s", "download") is not None


def test_download_401_mid_file_fails_clearly_then_resumes(
    hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hub token does not expire mid-run, so a 401 is final: one line, exit 1, no marker;
    the next run resumes the partial files instead of starting over."""
    # Not a stall test: a 1 s read timeout on a loaded CI box would add retries (and re-sent
    # socket-buffer bytes) that have nothing to do with the 401 under test.
    monkeypatch.setenv("SYNESIS_HTTP_TIMEOUT", "30")
    token = "hf_FaultsTok_" + os.urandom(8).hex()
    files = make_model(tmp_path / "published", seed=9)
    hub_env.add_repo(MODEL_ID, gated=True, tokens={token}).commit(files)
    plan = FaultPlan(kind="auth401", seed=1, probability=1.0, max_faults=1,
                     path_contains="model-00001")  # fmt: skip
    proxy = _via_proxy(hub_env, monkeypatch, plan)
    dest = tmp_path / "work" / "source"
    env = {**os.environ, "HF_TOKEN": token}
    args = [sys.executable, "-m", "steps", "download", "--model", MODEL_ID, "--dest", str(dest),
            "--workers", "1"]  # fmt: skip
    try:
        first = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
        assert first.returncode == 1, first.stderr
        errors = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "401" in errors[0] and "HF_TOKEN" in errors[0]
        assert "Traceback" not in first.stderr and token not in first.stderr
        assert markers.read_marker(dest.parent / ".synesis", "download") is None
        before = proxy.response_bytes
        second = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
        assert second.returncode == 0, second.stderr
    finally:
        proxy.stop()
    total = sum(len(v) for v in files.values())
    # Nothing finished is fetched twice: both runs together moved the files once, plus what was
    # in flight in socket buffers when the first run stopped (under one file; loopback buffers
    # grow to MiBs on a loaded machine).
    file_bytes = sum(v for k, v in proxy.response_bytes_by_path.items() if "/resolve/" in k)
    in_flight = max(len(v) for v in files.values())
    assert before < total and total <= file_bytes < total + in_flight
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data


def test_lost_answer_to_the_final_put_does_not_resend_the_blob(fault_proxy: FaultProxy) -> None:
    """The blob was committed and only the answer got lost: a HEAD, not a second upload."""
    from steps.oci import sha256_digest
    from steps.registry import BytesReadable, RegistryClient

    client = RegistryClient(fault_proxy.host, chunk_bytes=32 * KiB, backoff=0.01)
    fault_proxy.faults["PUT"] = ["lost"]
    data = os.urandom(100 * KiB)
    opened: list[int] = []

    def factory() -> BytesReadable:
        opened.append(1)
        return BytesReadable(data)

    result = client.upload_blob("t/lostput", factory, len(data))
    assert result.restarts == 0 and len(opened) == 1
    assert client.get_blob("t/lostput", result.digest) == data
    assert result.digest == sha256_digest(data)
