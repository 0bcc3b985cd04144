"""config/*.yaml loading: the shipped files, one-line errors naming file/key/allowed values,
environment overrides and the exit code a bad config gives through the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from steps import config, settings
from steps.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "config"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in settings.CLUSTER_ENV_OVERRIDES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("SYNESIS_CONFIG_DIR", raising=False)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped config directory."""
    target = tmp_path / "config"
    shutil.copytree(SHIPPED, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _one_line(error: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert error.value.exit_code == 2
    return message


# -- the shipped files ----------------------------------------------------------------------


def test_shipped_config_loads() -> None:
    cluster = config.load_cluster()
    assert cluster.hub_secret.name == "hf-hub-secret"
    assert cluster.pvcs["manager"].name == "modelcar-build-pvc"
    assert cluster.pvcs["executor"].name == "executor-build-pvc"
    profiles = config.load_model_profiles().profiles
    assert {"manager", "manager-validate", "executor"} <= set(profiles)
    assert profiles["manager-validate"].model_id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert profiles["executor"].model_id == "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"


def test_universal_layer_cap_fits_ecr_public_and_ghcr() -> None:
    profiles = config.load_registry_profiles().profiles
    universal = profiles["universal"].layer_cap_bytes
    assert universal <= 10_000_000_000
    assert universal <= profiles["ecr-public"].layer_cap_bytes
    assert universal <= profiles["ghcr"].layer_cap_bytes


def test_config_dir_comes_from_the_environment(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _edit(config_dir / "cluster.yaml", "namespace: synesis", "namespace: from-copy")
    monkeypatch.setenv("SYNESIS_CONFIG_DIR", str(config_dir))
    assert config.load_cluster().namespace == "from-copy"


# -- bad files ------------------------------------------------------------------------------


def test_bad_yaml_names_file_and_line(config_dir: Path) -> None:
    path = config_dir / "cluster.yaml"
    lines = path.read_text().splitlines()
    lines.insert(3, "pvcs: [unclosed")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        config.load_cluster(config_dir)
    message = _one_line(caught)
    assert str(path) in message and "not valid YAML" in message
    assert "line " in message


def test_unknown_key_is_named_with_its_path(config_dir: Path) -> None:
    _edit(config_dir / "cluster.yaml", "  key: token", "  key: token\n  nmae: typo")
    with pytest.raises(ConfigError) as caught:
        config.load_cluster(config_dir)
    message = _one_line(caught)
    assert "cluster.yaml" in message and "hub_secret.nmae" in message
    assert "unknown key" in message


def test_bad_value_names_key_and_what_is_allowed(config_dir: Path) -> None:
    _edit(config_dir / "cluster.yaml", "size: 400Gi", "size: lots")
    with pytest.raises(ConfigError) as caught:
        config.load_cluster(config_dir)
    message = _one_line(caught)
    assert "pvcs.manager.size" in message and "Kubernetes quantity" in message


def test_bad_choice_lists_the_choices(config_dir: Path) -> None:
    _edit(config_dir / "cluster.yaml", "layer_format: none", "layer_format: brotli")
    with pytest.raises(ConfigError) as caught:
        config.load_cluster(config_dir)
    message = _one_line(caught)
    assert "build.layer_format" in message and "'gzip'" in message and "'zstd'" in message


def test_bad_model_profile_names_file_and_key(config_dir: Path) -> None:
    _edit(config_dir / "models.yaml", "tag: manager-0.5b", "tag: 'bad tag!'")
    with pytest.raises(ConfigError) as caught:
        config.load_model_profiles(config_dir)
    message = _one_line(caught)
    assert "models.yaml" in message and "profiles.manager-validate.tag" in message


def test_missing_required_key(config_dir: Path) -> None:
    _edit(config_dir / "cluster.yaml", "service_account: synesis-pipelines", "")
    with pytest.raises(ConfigError, match="service_account: required key is missing"):
        config.load_cluster(config_dir)


@pytest.mark.parametrize("content", ["", "- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(config_dir: Path, content: str) -> None:
    (config_dir / "registry.yaml").write_text(content)
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load_registry_profiles(config_dir)


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SYNESIS_CONFIG_DIR"):
        config.load_cluster(tmp_path)


def test_unknown_registry_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        config.registry_profile("dockerhub")
    assert "dockerhub" in str(caught.value) and "ecr-public" in str(caught.value)


# -- environment overrides ------------------------------------------------------------------


def test_environment_overrides_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_PROJECT", "team-a")
    monkeypatch.setenv("ECR_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelcars")
    monkeypatch.setenv("SYNESIS_BUILDER", "stream")
    cluster = config.load_cluster()
    assert cluster.namespace == "team-a"
    assert cluster.registry.uri == "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelcars"
    assert cluster.build.builder == "stream"


def test_argo_namespace_beats_ds_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_PROJECT", "team-a")
    monkeypatch.setenv("ARGO_NAMESPACE", "argo-ns")
    assert config.load_cluster().namespace == "argo-ns"


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("DS_PROJECT", "Not_A_DNS_Label", "namespace"),
        ("SYNESIS_BUILDER", "docker", "build.builder"),
        ("SYNESIS_REGISTRY_PROFILE", "dockerhub", "registry.profile"),
    ],
)
def test_bad_override_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        config.load_cluster()
    message = _one_line(caught)
    assert message.startswith(f"environment {variable}: {key}:")
    assert "cluster.yaml" not in message  # the file is fine; the variable is not


@pytest.mark.parametrize(
    ("variable", "reader"),
    [
        ("SYNESIS_NO_PROGRESS", settings.progress_disabled),
        ("SYNESIS_PROGRESS_INTERVAL", settings.progress_interval_seconds),
        ("SYNESIS_DOWNLOAD_WORKERS", settings.download_workers),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, reader: object
) -> None:
    monkeypatch.setenv(variable, "maybe")
    with pytest.raises(ConfigError, match=f"environment {variable}="):
        reader()  # type: ignore[operator]


def test_download_workers_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNESIS_DOWNLOAD_WORKERS", "0")
    with pytest.raises(ConfigError, match=">= 1"):
        settings.download_workers()
    monkeypatch.setenv("SYNESIS_DOWNLOAD_WORKERS", "8")
    assert settings.download_workers() == 8


def test_hf_endpoint_is_read_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert settings.hf_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert settings.hf_endpoint() == "http://127.0.0.1:9"


# -- through the CLI ------------------------------------------------------------------------


def test_bad_config_exits_2_with_one_line_through_run_step(config_dir: Path) -> None:
    _edit(config_dir / "cluster.yaml", "size: 400Gi", "size: lots")
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from steps import config
        from steps.cli import run_step
        run_step(lambda: config.load_cluster(Path({str(config_dir)!r})))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "pvcs.manager.size" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_setting_exits_2_through_a_step_cli(tmp_path: Path) -> None:
    env = dict(os.environ, SYNESIS_DOWNLOAD_WORKERS="many", HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "steps", "download", "--model", "a/b", "--revision", "a" * 40,
         "--dest", str(tmp_path / "m" / "source")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "error: environment SYNESIS_DOWNLOAD_WORKERS='many'" in proc.stderr
    assert "Traceback" not in proc.stderr
