"""Secret hygiene across the whole local pipeline, with distinctive secret values.

Real processes against loopback services: the local runner downloads a gated repo from the Hub
stand-in with a Hub token, builds and pushes to an htpasswd ``docker-registry`` with a password
and verifies; the build step pushes again in ECR mode with moto's token; ``submit.py`` renders
(``--dry-run``), registers the catalog and submits against the Argo stand-in with an Argo token.
All of it runs with ``-v`` (debug logs). The test then scans every stdout and stderr, every file
the runs left on the work volume (markers, outputs, progress, logs), the rendered YAML, what the
Argo stand-in received, and each pushed image's manifest, config, labels and annotations pulled
back from the registry — for each secret, raw and base64-encoded as it travels in headers.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.argo_server import ArgoServer
from tests.support.hub_server import HubServer
from tests.support.registry import MOTO_ECR_PASSWORD, RegistryServer, start_registry
from tests.test_faults import make_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBMIT = str(REPO_ROOT / "workflows" / "submit.py")
HF_SECRET = "hf_SECRETHUB_4f1d8a2b9c7e6d5a"
REGISTRY_SECRET = "SECRETREG-pw-8e2c4a6b1d3f"
ARGO_SECRET = "SECRETARGO-tok-5b7d9f1a3c2e"
MODEL_ID = "acme/gated-secret"


def _forms(user: str, secret: str) -> list[str]:
    return [secret, base64.b64encode(f"{user}:{secret}".encode()).decode()]


SECRETS = (
    [HF_SECRET, ARGO_SECRET] + _forms("synesis", REGISTRY_SECRET) + _forms("AWS", MOTO_ECR_PASSWORD)
)


@pytest.fixture
def secret_registry(tmp_path: Path) -> RegistryServer:
    server = start_registry(tmp_path / "reg", username="synesis", password=REGISTRY_SECRET)
    yield server  # type: ignore[misc]
    server.stop()


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done


def _image_texts(registry: RegistryServer, repository: str, digest: str) -> list[str]:
    """Manifest (annotations) and config (labels, env, history) as pulled from the registry."""
    client = registry.client()
    manifest, _ = client.get_manifest(repository, digest)
    doc = json.loads(manifest)
    config = client.get_blob(repository, doc["config"]["digest"])
    labels = json.loads(config).get("config", {}).get("Labels", {})
    assert labels.get("io.synesis.model.id") == MODEL_ID  # we really read the image's labels
    return [manifest.decode(), config.decode(), json.dumps(doc.get("annotations", {}))]


def test_no_secret_anywhere(
    hub_env: HubServer,
    secret_registry: RegistryServer,
    ecr_registry: RegistryServer,
    ecr_env: dict[str, str],
    busybox_base: str,
    argo_server: ArgoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = make_model(tmp_path / "published", seed=51)
    hub_env.add_repo(MODEL_ID, gated=True, tokens={HF_SECRET}).commit(files)
    argo_server.state.token = ARGO_SECRET
    work = tmp_path / "work"
    auth = tmp_path / "auth.json"
    encoded = base64.b64encode(f"synesis:{REGISTRY_SECRET}".encode()).decode()
    auth.write_text(json.dumps({"auths": {secret_registry.host: {"auth": encoded}}}))
    env = dict(os.environ)
    env.update(
        HF_TOKEN=HF_SECRET,
        REGISTRY_AUTH_FILE=str(auth),
        HOME=str(tmp_path / "home"),
        SYNESIS_NO_PROGRESS="0",
        SYNESIS_PROGRESS_INTERVAL="0.01",
        SYNESIS_OUTPUTS_DIR=str(work / "outputs"),
        ARGO_PROGRESS_FILE=str(work / "progress"),
        KUBECONFIG="/nonexistent/kubeconfig",
    )
    for name in ("ARGO_SERVER", "ARGO_TOKEN", "ECR_URI", "SYNESIS_BASE_IMAGE", "SYNESIS_BUILDER"):
        env.pop(name, None)
    outputs: list[str] = []

    # 1. The local pipeline: gated download with a token, push with a password, verify, cleanup.
    target = f"{secret_registry.host}/models/secret:t"
    local = _run(
        [sys.executable, SUBMIT, "-v", "manager", "--local", "--model", MODEL_ID, "--tag", "t",
         "--work", str(work), "--target", target, "--base", busybox_base, "--keep"],
        env, tmp_path,
    )  # fmt: skip
    outputs += [local.stdout, local.stderr]
    result = json.loads(local.stdout.strip().splitlines()[-1])
    assert {s["status"] for s in result["steps"]} == {"ran"}
    image_texts = _image_texts(secret_registry, "models/secret", result["digest"])

    # 2. ECR mode: boto3 → moto's token → Basic AWS:<token> → the registry.
    source = work / "acme--gated-secret" / "source"
    ecr = _run(
        [sys.executable, "-m", "steps", "-v", "build", "--builder", "stream", "--src",
         str(source), "--target", f"{ecr_registry.host}/team/secret:v1", "--model", MODEL_ID,
         "--revision", result["commit_sha"], "--base", busybox_base, "--auth", "ecr",
         "--state-dir", str(work / "ecr-state")],
        {**env, **ecr_env}, REPO_ROOT,
    )  # fmt: skip
    outputs += [ecr.stdout, ecr.stderr]
    image_texts += _image_texts(ecr_registry, "team/secret", json.loads(ecr.stdout)["digest"])

    # 3. submit.py against the Argo stand-in: render, register the catalog, submit.
    argo_env = {**env, "ARGO_SERVER": argo_server.url, "ARGO_TOKEN": ARGO_SECRET,
                "ARGO_NAMESPACE": "team-a", "ECR_URI": f"{ecr_registry.host}/team",
                "PATH": "/usr/bin:/bin"}  # fmt: skip
    for args in (["manager", "--dry-run"], ["catalog", "--apply"], ["manager"]):
        done = _run([sys.executable, SUBMIT, "-v", *args], argo_env, tmp_path)
        outputs += [done.stdout, done.stderr]
    rendered = outputs[-6]
    assert "WorkflowTemplate" in rendered  # the dry run really printed YAML
    received = [json.dumps(r.body) for r in argo_server.state.requests]
    assert any(
        r.headers.get("Authorization", "").endswith(ARGO_SECRET) for r in argo_server.state.requests
    )  # fmt: skip  (the token was really used)

    files_on_volume = [
        p.read_bytes().decode("utf-8", "replace") for p in work.rglob("*") if p.is_file()
    ]
    assert any('"step": "download"' in text for text in files_on_volume)  # markers were read
    assert (work / "outputs").is_dir() and (work / "progress").is_file()

    leaks = []
    for where, texts in (
        ("stdout/stderr", outputs),
        ("work volume files", files_on_volume),
        ("image manifests/configs", image_texts),
        ("Argo request bodies", received),
    ):
        for secret in SECRETS:
            if any(secret in text for text in texts):
                leaks.append(f"{secret[:12]}… in {where}")
    assert not leaks, leaks
