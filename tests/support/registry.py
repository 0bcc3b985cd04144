"""Registry fixtures: real Debian ``docker-registry`` processes and moto's ECR API, on loopback.

- ``registry``: no auth; ``auth_registry``: htpasswd user/password (bcrypt via ``htpasswd -Bbn``)
  with a containers auth.json for it; ``ecr_registry``: htpasswd user ``AWS`` with the password
  moto's ``get_authorization_token`` always hands out, so boto3 → token → Basic → push is real HTTP.
- ``moto_ecr``: a ``ThreadedMotoServer`` on 127.0.0.1; tests point boto3 at it with
  ``AWS_ENDPOINT_URL_ECR`` (see ``ecr_env``).
- ``busybox_base``: a FROM-scratch image of ``busybox-static`` with sh/ln/sleep/ls links, made by
  ``steps.busybox_base`` and pushed with our own client (the ModelCar base used by the tests).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from steps.busybox_base import BUSYBOX, busybox_image, write_layout
from steps.oci import (
    MANIFEST,
)
from steps.registry import RegistryClient
from steps.registry_auth import Credentials, StaticAuth

MOTO_ECR_PASSWORD = "123456789012-auth-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    root: Path  # storage root
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    auth_file: Path | None = None

    def client(self, **kwargs: object) -> RegistryClient:
        auth = None
        if self.username and self.password:
            auth = StaticAuth(Credentials(self.username, self.password), "test credentials")
        return RegistryClient(self.host, auth=auth, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(
    workdir: Path, *, username: str | None = None, password: str | None = None
) -> RegistryServer:
    """Start ``docker-registry serve`` on a free loopback port with storage under ``workdir``."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    auth_block = ""
    auth_file = None
    if username and password:
        line = subprocess.run(
            ["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True
        ).stdout.strip()
        (workdir / "htpasswd").write_text(line + "\n")
        auth_block = (
            f"auth:\n  htpasswd:\n    realm: synesis-test\n    path: {workdir / 'htpasswd'}\n"
        )
        auth_file = workdir / "auth.json"
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
        auth_file.write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {host}\n  secret: {secrets.token_hex(16)}\n" + auth_block
    )
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()}")
        try:
            answer = requests.get(f"http://{host}/v2/", timeout=1)
            if answer.status_code in (200, 401):
                break
        except requests.ConnectionError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("docker-registry did not start within 20 s")
    return RegistryServer(host, storage, process, username, password, auth_file)


def push_busybox(client: RegistryClient, repository: str, tag: str = "1") -> str:
    """Push the busybox base with our own client; return its reference."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    image = busybox_image(compress=True)
    client.upload_bytes(repository, image.layer)
    client.upload_bytes(repository, image.config)
    client.put_manifest(repository, tag, image.manifest, MANIFEST)
    return f"{client.host}/{repository}:{tag}"


def write_busybox_layout(path: Path, tag: str = "1") -> str:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    return write_layout(path, tag, compress=True)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(
        tmp_path_factory.mktemp("auth-registry"),
        username="synesis",
        password="pw-" + secrets.token_hex(12),
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ecr_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(
        tmp_path_factory.mktemp("ecr-registry"), username="AWS", password=MOTO_ECR_PASSWORD
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def busybox_base(registry: RegistryServer) -> str:
    return push_busybox(registry.client(), "base/busybox")


@pytest.fixture(scope="session")
def moto_ecr() -> Iterator[str]:
    """Endpoint URL of a moto server speaking the ECR API on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def ecr_env(moto_ecr: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3 pointed at moto with dummy credentials (no real AWS is ever contacted)."""
    env = {
        "AWS_ENDPOINT_URL_ECR": moto_ecr,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return env


@pytest.fixture(autouse=False)
def isolated_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stray user logins: auth files resolve under a temp HOME unless a test sets one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    return tmp_path / "home"
