"""Build step (stream builder) end to end against real docker-registry, skopeo and GNU tar."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from steps.build import build
from steps.oci import Layout
from tests.support.registry import (
    MOTO_ECR_PASSWORD,
    RegistryServer,
    free_port,
    push_busybox,
    write_busybox_layout,
)

MiB = 1024 * 1024
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def make_model(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}' * 50,
        "inference/config.json": b'{"nested": true}',
        ("x" * 110) + ".json": b"{}",
        "model-00001-of-00002.safetensors": os.urandom(int(1.5 * MiB)),
        "model-00002-of-00002.safetensors": os.urandom(MiB + 3),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "work" / "org--tiny" / "source"
    src.mkdir(parents=True)
    return src, make_model(src)


def _extract_layout(layout_dir: Path, tag: str, out: Path) -> list[list[tarfile.TarInfo]]:
    """Apply the image's layers in order into ``out``; return each layer's members."""
    layout = Layout(layout_dir)
    manifest = json.loads(layout.read_blob(layout.resolve(tag).digest))
    members = []
    for desc in manifest["layers"]:
        blob = layout.read_blob(desc["digest"])
        if desc["mediaType"].endswith("gzip"):
            blob = gzip.decompress(blob)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            members.append(tar.getmembers())
            tar.extractall(out, filter="tar")
    return members


def test_push_inspect_copy_and_extract(
    registry: RegistryServer,
    busybox_base: str,
    model: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    isolated_auth: Path,
) -> None:
    src, files = model
    target = f"{registry.host}/models/tiny:v1"
    result = build(
        builder="stream",
        src=src,
        target=target,
        model_id="org/tiny",
        revision="a" * 40,
        quantization="NVFP4",
        base=busybox_base,
        cap_bytes=2 * MiB,
        chunk_bytes=MiB,
    )
    assert result.reference == f"oci://{registry.host}/models/tiny@{result.digest}"
    assert len(result.layers) == 3  # small files + two weight layers under a 2 MiB cap
    inspect = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{target}"],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(inspect.stdout)
    assert info["Digest"] == result.digest
    assert info["Labels"]["io.synesis.model.id"] == "org/tiny"
    assert info["Labels"]["io.synesis.model.revision"] == "a" * 40
    assert info["Labels"]["io.synesis.model.quantization"] == "NVFP4"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(raw.stdout)["annotations"]["io.synesis.model.id"] == "org/tiny"
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{target}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert config["config"]["User"] == "1001"

    copied = tmp_path / "copied"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{copied}:v1"],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "rootfs"
    members = _extract_layout(copied, "v1", out)
    for rel, data in files.items():
        assert (out / "models" / rel).read_bytes() == data
    base_entries = {m.name: m for m in members[0]}
    assert base_entries["bin/sh"].issym() and base_entries["bin/sh"].linkname == "busybox"
    assert base_entries["bin/busybox"].isfile() and base_entries["bin/busybox"].size > 100_000
    for tool in ("ln", "sleep", "ls"):
        assert tool and f"bin/{tool}" in base_entries
    for layer in members[1:]:
        for member in layer:
            assert member.name.startswith("models")
            assert member.mode == (0o755 if member.isdir() else 0o644)


def test_rerun_uploads_nothing_and_digests_are_reproducible(
    registry: RegistryServer,
    busybox_base: str,
    model: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    isolated_auth: Path,
) -> None:
    src, _files = model
    common = dict(
        src=src,
        model_id="org/tiny",
        revision="b" * 40,
        base=busybox_base,
        cap_bytes=2 * MiB,
        builder="stream",
    )
    first = build(target=f"{registry.host}/models/rerun:v1", **common)  # type: ignore[arg-type]
    assert first.bytes_uploaded >= first.blob_bytes
    again = build(target=f"{registry.host}/models/rerun:v1", **common)  # type: ignore[arg-type]
    assert again.skipped and again.digest == first.digest and again.bytes_uploaded == 0
    assert again.seconds < 3
    # New tag, same state dir: the digest cache finds every layer with a HEAD, reads nothing.
    retag = build(target=f"{registry.host}/models/rerun:v2", **common)  # type: ignore[arg-type]
    assert not retag.skipped and retag.bytes_uploaded == 0 and retag.digest == first.digest
    # A fresh state dir and another repository: same bytes, same digest.
    fresh = build(
        target=f"{registry.host}/models/elsewhere:v1",
        state_dir=tmp_path / "other-state",
        **common,  # type: ignore[arg-type]
    )
    assert fresh.digest == first.digest and fresh.layers == first.layers


def test_layout_target_and_layout_base_work_with_skopeo(
    registry: RegistryServer,
    model: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    isolated_auth: Path,
) -> None:
    src, files = model
    base = write_busybox_layout(tmp_path / "base-layout")
    layout_dir = tmp_path / "image"
    result = build(
        builder="stream",
        src=src,
        target=f"oci:{layout_dir}:manager",
        model_id="org/tiny",
        revision="c" * 40,
        base=base,
        cap_bytes=2 * MiB,
    )
    assert result.reference == f"oci:{layout_dir}@{result.digest}"
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{layout_dir}:manager"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["Digest"] == result.digest
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout_dir}:manager",
            f"docker://{registry.host}/models/from-layout:v1",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "rootfs"
    _extract_layout(layout_dir, "manager", out)
    for rel, data in files.items():
        assert (out / "models" / rel).read_bytes() == data
    assert not list((layout_dir / "blobs" / "sha256").glob(".upload-*"))


def test_base_in_other_registry_is_copied_with_basic_auth(
    registry: RegistryServer,
    auth_registry: RegistryServer,
    busybox_base: str,
    model: tuple[Path, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    isolated_auth: Path,
) -> None:
    assert auth_registry.auth_file is not None
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_registry.auth_file))
    src, _ = model
    result = build(
        builder="stream",
        src=src,
        target=f"{auth_registry.host}/models/tiny:v1",
        model_id="org/tiny",
        revision="d" * 40,
        base=busybox_base,
        cap_bytes=2 * MiB,
    )
    client = auth_registry.client()
    manifest = json.loads(client.get_manifest("models/tiny", result.digest)[0])
    for desc in manifest["layers"]:
        assert client.blob_exists("models/tiny", desc["digest"])


def test_base_in_same_registry_is_mounted(
    registry: RegistryServer, model: tuple[Path, dict[str, bytes]], isolated_auth: Path
) -> None:
    src, _ = model
    base = push_busybox(registry.client(), "base/mountme")
    result = build(
        builder="stream",
        src=src,
        target=f"{registry.host}/models/mounted:v1",
        model_id="org/tiny",
        revision="e" * 40,
        base=base,
        cap_bytes=2 * MiB,
    )
    assert result.bytes_uploaded == result.blob_bytes  # base layer mounted, not re-sent


# ---- the CLI, bad inputs and secrets ---------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "SYNESIS_NO_PROGRESS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "steps", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def _tiny_cap_config(tmp_path: Path, cap: int) -> Path:
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    text = (config / "registry.yaml").read_text()
    text = text.replace("layer_cap_bytes: 9961472000", f"layer_cap_bytes: {cap}")
    (config / "registry.yaml").write_text(text)
    return config


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "case", ["missing", "empty", "over-cap", "bad-ref", "unreachable", "wrong-password"]
)
def test_cli_bad_inputs_one_line_and_no_marker(
    case: str,
    registry: RegistryServer,
    auth_registry: RegistryServer,
    busybox_base: str,
    tmp_path: Path,
    isolated_auth: Path,
) -> None:
    src = tmp_path / "work" / "m" / "source"
    env = {"HOME": str(isolated_auth)}
    target = f"{registry.host}/models/bad:v1"
    expected_code = 2
    secret = "secret-" + "z" * 20
    if case != "missing":
        src.mkdir(parents=True)
    if case not in ("missing", "empty"):
        make_model(src)
    if case == "over-cap":
        env["SYNESIS_CONFIG_DIR"] = str(_tiny_cap_config(tmp_path, 1_100_000))
    if case == "bad-ref":
        target = "Not A/Reference"
    if case == "unreachable":
        target = f"127.0.0.1:{free_port()}/models/bad:v1"
        env["SYNESIS_REGISTRY_BACKOFF"] = "0.01"  # the retries still happen, just quickly
        expected_code = 1
    if case == "wrong-password":
        auth = tmp_path / "auth.json"
        encoded = base64.b64encode(f"synesis:{secret}".encode()).decode()
        auth.write_text(json.dumps({"auths": {auth_registry.host: {"auth": encoded}}}))
        env["REGISTRY_AUTH_FILE"] = str(auth)
        target = f"{auth_registry.host}/models/bad:v1"
        expected_code = 1
    args = [
        "build",
        "--builder",
        "stream",
        "--src",
        str(src),
        "--target",
        target,
        "--model",
        "org/m",
        "--revision",
        "f" * 40,
        "--base",
        busybox_base,
    ]
    proc = _cli(args, env)
    line = _assert_one_line_error(proc, expected_code)
    assert {
        "missing": "does not exist",
        "empty": "no files",
        "over-cap": "re-shard",
        "bad-ref": "image reference",
        "unreachable": "got no answer",
        "wrong-password": "401",
    }[case] in line
    verbose = _cli(["-v", *args], env)  # debug logs carry tracebacks, never secrets
    assert verbose.returncode == expected_code
    for text in (proc.stdout, proc.stderr, verbose.stdout, verbose.stderr):
        assert secret not in text
        assert base64.b64encode(f"synesis:{secret}".encode()).decode() not in text
    assert not (src.parent / ".synesis" / "build.json").exists()


def test_cli_secrets_never_in_output_or_markers(
    auth_registry: RegistryServer,
    registry: RegistryServer,
    busybox_base: str,
    model: tuple[Path, dict[str, bytes]],
    isolated_auth: Path,
) -> None:
    assert auth_registry.auth_file is not None and auth_registry.password
    src, _ = model
    env = {"HOME": str(isolated_auth), "REGISTRY_AUTH_FILE": str(auth_registry.auth_file)}
    proc = _cli(
        [
            "-v",
            "build",
            "--builder",
            "stream",
            "--src",
            str(src),
            "--target",
            f"{auth_registry.host}/models/sec:v1",
            "--model",
            "org/tiny",
            "--revision",
            "1" * 40,
            "--base",
            busybox_base,
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    proc2 = _cli(["-v", "verify", result["reference"], "--src", str(src)], env)
    assert proc2.returncode == 0, proc2.stderr
    encoded = base64.b64encode(f"synesis:{auth_registry.password}".encode()).decode()
    texts = [proc.stdout, proc.stderr, proc2.stdout, proc2.stderr]
    texts += [p.read_text() for p in (src.parent / ".synesis").iterdir()]
    for text in texts:
        assert auth_registry.password not in text and encoded not in text


def test_cli_ecr_mode_via_moto(
    ecr_env: dict[str, str],
    ecr_registry: RegistryServer,
    busybox_base: str,
    model: tuple[Path, dict[str, bytes]],
    isolated_auth: Path,
) -> None:
    """boto3 → moto token → Basic AWS:<token> → real registry; repository created in moto."""
    import boto3

    src, _ = model
    env = {**ecr_env, "HOME": str(isolated_auth)}
    proc = _cli(
        [
            "-v",
            "build",
            "--builder",
            "stream",
            "--src",
            str(src),
            "--target",
            f"{ecr_registry.host}/team/tiny:v1",
            "--model",
            "org/tiny",
            "--revision",
            "2" * 40,
            "--base",
            busybox_base,
            "--auth",
            "ecr",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    names = [
        r["repositoryName"] for r in boto3.client("ecr").describe_repositories()["repositories"]
    ]
    assert "team/tiny" in names
    token_b64 = base64.b64encode(f"AWS:{MOTO_ECR_PASSWORD}".encode()).decode()
    texts = [proc.stdout, proc.stderr]
    texts += [p.read_text() for p in (src.parent / ".synesis").iterdir()]
    for text in texts:
        assert MOTO_ECR_PASSWORD not in text and token_b64 not in text
