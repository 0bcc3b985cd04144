"""Every environment variable the steps and submit.py read, parsed in one place.

Callers read settings when they run (not at import), so tests can set the environment per case.
"""

from __future__ import annotations

import os
from pathlib import Path

from steps.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str) -> str | None:
    """A variable's value, or None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"environment {name}={raw!r}: expected one of 1/0, true/false, yes/no")


def env_float(name: str, default: float) -> float:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"environment {name}={raw!r}: expected a number of seconds") from exc


def config_dir() -> Path:
    """Where config/*.yaml live: ``SYNESIS_CONFIG_DIR`` or the checkout's ``config/``."""
    override = env_str("SYNESIS_CONFIG_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "config"


def progress_file() -> Path | None:
    """Argo sets ``ARGO_PROGRESS_FILE``; a step writes ``N/M`` there for the UI."""
    value = env_str("ARGO_PROGRESS_FILE")
    return Path(value) if value else None


def progress_disabled() -> bool:
    return env_bool("SYNESIS_NO_PROGRESS")


def progress_interval_seconds() -> float:
    """How often non-TTY logs get a progress line (a TTY redraws in place instead)."""
    return env_float("SYNESIS_PROGRESS_INTERVAL", 10.0)


def hf_token_file() -> Path:
    """The mounted Hub secret; the cluster templates mount ``hf-hub-secret`` here."""
    return Path(env_str("HF_TOKEN_PATH") or "/var/run/secrets/huggingface/token")


def hf_token() -> str | None:
    """``HF_TOKEN`` first, then the mounted secret file; never logged."""
    token = env_str("HF_TOKEN")
    if token:
        return token
    path = hf_token_file()
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as exc:
        raise ConfigError(
            f"Hub token file {path}: not readable; fix the secret mount or set HF_TOKEN"
        ) from exc


# Overrides of config values by environment: variable -> dotted key in the cluster config.
# This table is the only place where an environment variable reaches the config.
CLUSTER_ENV_OVERRIDES: dict[str, str] = {
    "DS_PROJECT": "namespace",
    "ARGO_NAMESPACE": "namespace",
    "ECR_URI": "registry.uri",
    "SYNESIS_REGISTRY_PROFILE": "registry.profile",
    "SYNESIS_BUILDER": "build.builder",
    "SYNESIS_STEP_IMAGE": "images.steps",
    "SYNESIS_QUANTIZE_IMAGE": "images.quantize",
    "SYNESIS_BASE_IMAGE": "images.modelcar_base",
    "ARGO_SERVER": "argo.server",
}


def cluster_env_overrides() -> dict[str, tuple[str, str]]:
    """Dotted key -> (variable, value) for every override set now; ARGO_NAMESPACE beats DS_PROJECT."""
    found: dict[str, tuple[str, str]] = {}
    for variable, key in CLUSTER_ENV_OVERRIDES.items():
        value = env_str(variable)
        if value is not None:
            found[key] = (variable, value)
    return found
