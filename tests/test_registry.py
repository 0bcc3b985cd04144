"""Registry client against a real docker-registry: chunked push, mounts, auth, faults, ECR.

Faults and the Bearer token service come from ``FaultProxy`` (tests/support/faults.py), a
loopback proxy that forwards every request it does not fault to the real registry behind it.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from steps import ecr, redact
from steps.errors import AuthError, BadInputError, ConfigError, RegistryError
from steps.imageref import LayoutRef, RegistryRef, parse_ref
from steps.oci import sha256_digest
from steps.registry import BytesReadable, RegistryClient
from steps.registry_auth import Credentials, StaticAuth, make_authenticator, read_auth_file
from tests.support.faults import FaultProxy
from tests.support.registry import MOTO_ECR_PASSWORD, RegistryServer

KiB = 1024


def _blob(size: int) -> bytes:
    return os.urandom(size)


def _push(client: RegistryClient, repo: str, data: bytes) -> str:
    result = client.upload_blob(repo, lambda: BytesReadable(data), len(data))
    return result.digest


# ---- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "127.0.0.1:5000/models/qwen:manager",
            RegistryRef("127.0.0.1:5000", "models/qwen", "manager"),
        ),
        ("quay.io/org/repo", RegistryRef("quay.io", "org/repo", None)),
        (
            "oci://1234.dkr.ecr.us-east-1.amazonaws.com/m@sha256:" + "a" * 64,
            RegistryRef("1234.dkr.ecr.us-east-1.amazonaws.com", "m", None, "sha256:" + "a" * 64),
        ),
        ("docker://localhost/a/b_c.d-e:1.0", RegistryRef("localhost", "a/b_c.d-e", "1.0")),
        ("oci:/tmp/layout:tag1", LayoutRef(Path("/tmp/layout"), "tag1")),
        ("oci:/tmp/layout", LayoutRef(Path("/tmp/layout"), None)),
    ],
)
def test_parse_good_references(text: str, expected: object) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repo:tag",  # no registry host
        "ubuntu",
        "quay.io/",
        "quay.io/Org/Repo",  # upper case
        "quay.io/org/repo:bad tag",
        "quay.io/org/repo@sha256:123",
        "http://quay.io/org/repo",
        "oci:",
        "oci::tag",
        "quay.io/org//repo",
    ],
)
def test_parse_bad_references(text: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_ref(text)
    assert "image reference" in str(info.value) and "\n" not in str(info.value)


# ---- push and read ---------------------------------------------------------------------------


def test_chunked_upload_head_and_ranges(registry: RegistryServer) -> None:
    client = registry.client(chunk_bytes=64 * KiB)
    data = _blob(300 * KiB + 17)  # several chunks and a short last one
    digest = _push(client, "t/chunks", data)
    assert digest == sha256_digest(data)
    assert client.blob_exists("t/chunks", digest)
    assert not client.blob_exists("t/chunks", sha256_digest(b"nope"))
    assert client.get_blob("t/chunks", digest) == data
    assert client.read_range("t/chunks", digest, 1000, 50) == data[1000:1050]
    empty = _push(client, "t/chunks", b"")
    assert empty == sha256_digest(b"")


def test_cross_repository_mount(registry: RegistryServer) -> None:
    client = registry.client()
    data = _blob(10 * KiB)
    digest = _push(client, "t/mount-src", data)
    assert client.mount_blob("t/mount-dst", digest, "t/mount-src")
    assert client.blob_exists("t/mount-dst", digest)
    assert not client.mount_blob("t/mount-dst2", sha256_digest(b"absent"), "t/mount-src")


def test_basic_auth_from_auth_file(
    auth_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, isolated_auth: Path
) -> None:
    assert auth_registry.auth_file is not None
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_registry.auth_file))
    auth = make_authenticator(auth_registry.host, "t/basic")
    client = RegistryClient(auth_registry.host, auth=auth, chunk_bytes=64 * KiB)
    digest = _push(client, "t/basic", _blob(100 * KiB))
    assert client.blob_exists("t/basic", digest)


def test_auth_file_in_xdg_runtime_dir(
    auth_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, isolated_auth: Path
) -> None:
    runtime = isolated_auth.parent / "run"
    (runtime / "containers").mkdir(parents=True)
    assert auth_registry.auth_file is not None
    (runtime / "containers" / "auth.json").write_text(auth_registry.auth_file.read_text())
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    creds = make_authenticator(auth_registry.host, "x").credentials()
    assert creds is not None and creds.password == auth_registry.password


def test_no_login_and_wrong_password_are_auth_errors(
    auth_registry: RegistryServer, isolated_auth: Path
) -> None:
    anonymous = RegistryClient(auth_registry.host)
    with pytest.raises(AuthError, match="requires a login"):
        anonymous.blob_exists("t/x", sha256_digest(b""))
    wrong = "wrong-" + "p" * 20
    client = RegistryClient(
        auth_registry.host, auth=StaticAuth(Credentials("synesis", wrong), "auth file test")
    )
    with pytest.raises(AuthError) as info:
        _push(client, "t/x", b"data")
    message = str(info.value)
    assert "401" in message and wrong not in message and "\n" not in message
    assert wrong not in redact.redact(f"leak {wrong}")


def test_malformed_auth_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"h:1": {"auth": "!!notbase64"}}}))
    with pytest.raises(ConfigError, match="malformed"):
        read_auth_file(path, "h:1")
    path.write_text(
        json.dumps({"auths": {"h:1": {"auth": base64.b64encode(b"u:p-123456").decode()}}})
    )
    creds = read_auth_file(path, "h:1")
    assert creds is not None and (creds.username, creds.password) == ("u", "p-123456")
    assert "p-123456" not in repr(creds)


def test_unreachable_registry_is_one_line(isolated_auth: Path) -> None:
    from tests.support.registry import free_port

    client = RegistryClient(f"127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(RegistryError) as info:
        client.blob_exists("t/x", sha256_digest(b""))
    assert "got no answer" in str(info.value) and "\n" not in str(info.value)


# ---- Bearer tokens and faults ----------------------------------------------------------------


def test_bearer_token_flow_and_refresh(bearer_proxy: FaultProxy) -> None:
    creds = Credentials(bearer_proxy.user, bearer_proxy.password)
    client = RegistryClient(bearer_proxy.host, auth=StaticAuth(creds, "test"), chunk_bytes=32 * KiB)
    data = _blob(100 * KiB)
    digest = _push(client, "t/bearer", data)
    assert client.get_blob("t/bearer", digest) == data
    first = bearer_proxy.token_requests
    assert first >= 1
    bearer_proxy.tokens.clear()  # token expires mid-session: next request gets 401, refreshes
    assert client.blob_exists("t/bearer", digest)
    assert bearer_proxy.token_requests == first + 1


def test_bearer_wrong_password(bearer_proxy: FaultProxy) -> None:
    client = RegistryClient(
        bearer_proxy.host, auth=StaticAuth(Credentials(bearer_proxy.user, "bad-password-1"), "t")
    )
    with pytest.raises(AuthError, match="token service refused"):
        client.blob_exists("t/x", sha256_digest(b""))


@pytest.mark.parametrize(
    ("faults", "restarts"),
    [
        (["pass", "500"], 0),  # 5xx on a chunk: registry still at chunk start -> resend
        (["pass", "drop"], 0),  # connection reset before forwarding -> resend the chunk
        # Chunk stored, answer lost: docker-registry's upload URL carries a signed offset
        # (_state), so the old URL is now invalid (404) and the blob restarts cleanly.
        (["pass", "lost"], 1),
        (["pass", "500", "500", "drop", "lost"], 1),
    ],
)
def test_patch_faults_resume_from_reported_offset(
    fault_proxy: FaultProxy, faults: list[str], restarts: int
) -> None:
    client = RegistryClient(fault_proxy.host, chunk_bytes=32 * KiB, backoff=0.01)
    fault_proxy.faults["PATCH"] = list(faults)
    data = _blob(200 * KiB)
    result = client.upload_blob("t/faults", lambda: BytesReadable(data), len(data))
    assert result.digest == sha256_digest(data)
    assert result.restarts == restarts
    assert client.get_blob("t/faults", result.digest) == data
    assert fault_proxy.faults["PATCH"] == []


def test_finish_failure_restarts_blob_cleanly(fault_proxy: FaultProxy) -> None:
    client = RegistryClient(fault_proxy.host, chunk_bytes=32 * KiB, backoff=0.01)
    fault_proxy.faults["PUT"] = ["500"]
    data = _blob(70 * KiB)
    opened = []

    def factory() -> BytesReadable:
        opened.append(1)
        return BytesReadable(data)

    result = client.upload_blob("t/restart", factory, len(data))
    assert result.restarts == 1 and len(opened) == 2
    assert client.get_blob("t/restart", result.digest) == data


def test_5xx_on_idempotent_requests_retried(fault_proxy: FaultProxy) -> None:
    client = RegistryClient(fault_proxy.host, backoff=0.01)
    fault_proxy.faults["HEAD"] = ["500", "drop"]
    assert not client.blob_exists("t/x", sha256_digest(b"absent"))


# ---- ECR (moto on loopback + real registry with moto's password) -----------------------------


def test_ecr_token_auth_and_repository_creation(
    ecr_env: dict[str, str], ecr_registry: RegistryServer
) -> None:
    import boto3

    auth = make_authenticator(ecr_registry.host, "team/model", mode="ecr")
    creds = auth.credentials()
    assert creds is not None and creds.username == "AWS"
    assert creds.password == MOTO_ECR_PASSWORD
    assert redact.redact(f"x {MOTO_ECR_PASSWORD} y") == "x *** y"
    client = RegistryClient(ecr_registry.host, auth=auth, chunk_bytes=64 * KiB)
    digest = _push(client, "team/model", _blob(150 * KiB))
    assert client.blob_exists("team/model", digest)

    assert ecr.ensure_repository(ecr_registry.host, "team/model") is True
    assert ecr.ensure_repository(ecr_registry.host, "team/model") is False
    names = [
        r["repositoryName"] for r in boto3.client("ecr").describe_repositories()["repositories"]
    ]
    assert "team/model" in names


def test_ecr_host_pattern() -> None:
    assert ecr.is_ecr_host("123456789012.dkr.ecr.us-east-1.amazonaws.com")
    assert ecr.is_ecr_host("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com")
    assert not ecr.is_ecr_host("127.0.0.1:5000")
    assert not ecr.is_ecr_host("quay.io")
