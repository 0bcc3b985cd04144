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


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"environment {name}={raw!r}: expected a whole number >= {minimum}")
    return value


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


def hf_endpoint() -> str:
    """The Hub to talk to: ``HF_ENDPOINT`` (a mirror, or the tests' loopback stand-in) or hf.co.

    Read per call and passed explicitly to huggingface_hub, which itself reads ``HF_ENDPOINT``
    only once at import.
    """
    return (env_str("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def download_workers() -> int:
    """Files fetched at once by the download step (``SYNESIS_DOWNLOAD_WORKERS``, default 4)."""
    return env_int("SYNESIS_DOWNLOAD_WORKERS", 4, minimum=1)


def http_timeout_seconds() -> float:
    """Connect/read timeout for one Hub request (``SYNESIS_HTTP_TIMEOUT``, default 60 s)."""
    return env_float("SYNESIS_HTTP_TIMEOUT", 60.0)


def registry_timeout_seconds() -> float:
    """Read timeout for one registry request (``SYNESIS_REGISTRY_TIMEOUT``, default 120 s).

    A stalled registry answer past this is treated like a dropped connection: the upload asks
    the registry how much it holds and resends only the missing chunk.
    """
    return env_float("SYNESIS_REGISTRY_TIMEOUT", 120.0)


def registry_backoff_seconds() -> float:
    """First pause before a registry retry, doubled each time (``SYNESIS_REGISTRY_BACKOFF``)."""
    return env_float("SYNESIS_REGISTRY_BACKOFF", 0.5)


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
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(
            f"Hub token file {path}: not readable ({exc.strerror}); fix the secret mount or "
            "set HF_TOKEN"
        ) from exc


def outputs_dir() -> Path | None:
    """``SYNESIS_OUTPUTS_DIR``: where a step also writes each result field for Argo outputs."""
    value = env_str("SYNESIS_OUTPUTS_DIR")
    return Path(value) if value else None


def argo_token() -> str | None:
    """``ARGO_TOKEN`` (with or without its ``Bearer `` prefix); never logged."""
    return env_str("ARGO_TOKEN")


def argo_secure() -> bool:
    """``ARGO_SECURE`` (the argo CLI's): https for an ``ARGO_SERVER`` given as ``host:port``."""
    return env_bool("ARGO_SECURE", default=True)


def argo_insecure() -> bool:
    """``ARGO_INSECURE_SKIP_VERIFY``: the argo CLI's own switch for self-signed servers."""
    return env_bool("ARGO_INSECURE_SKIP_VERIFY")


def argo_poll_seconds() -> float:
    """How often ``submit.py --wait`` asks the Argo Server for the workflow's state."""
    return env_float("SYNESIS_ARGO_POLL", 5.0)


def kubeconfig_paths() -> list[Path]:
    """The kubeconfig files ``kubectl``/``oc`` would read: ``KUBECONFIG`` (a ``:`` list) or
    ``~/.kube/config``. Read per call: the kubernetes client reads ``KUBECONFIG`` at import only.
    """
    raw = env_str("KUBECONFIG")
    if raw:
        return [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]
    home = Path(env_str("HOME") or "~").expanduser()
    return [home / ".kube" / "config"]


def kube_service_host() -> str | None:
    """``KUBERNETES_SERVICE_HOST``: set in every pod, so in-cluster credentials may exist."""
    return env_str("KUBERNETES_SERVICE_HOST")


def kube_watch_seconds() -> int:
    """How long one Kubernetes watch request lasts before ``--wait`` reconnects (server side)."""
    return env_int("SYNESIS_KUBE_WATCH_SECONDS", 300, minimum=1)


def registry_auth_files() -> list[Path]:
    """Where containers tools keep registry logins, in the order podman/skopeo search them.

    ``REGISTRY_AUTH_FILE`` wins; then ``${XDG_RUNTIME_DIR}/containers/auth.json``, the user's
    ``~/.config/containers/auth.json`` and Docker's ``~/.docker/config.json``.
    """
    found: list[Path] = []
    explicit = env_str("REGISTRY_AUTH_FILE")
    if explicit:
        found.append(Path(explicit))
    runtime = env_str("XDG_RUNTIME_DIR")
    if runtime:
        found.append(Path(runtime) / "containers" / "auth.json")
    config_home = env_str("XDG_CONFIG_HOME")
    home = Path(env_str("HOME") or "~").expanduser()
    found.append((Path(config_home) if config_home else home / ".config") / "containers/auth.json")
    found.append(Path(env_str("DOCKER_CONFIG") or home / ".docker") / "config.json")
    return found


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
    "ARGO_INSTANCEID": "argo.controller_instance_id",
    # The buildah template points these at its emptyDir; the staged context stays on the work
    # volume so it can hard-link the model files instead of copying them.
    "SYNESIS_BUILDAH_STORAGE": "build.storage_root",
    "SYNESIS_BUILDAH_RUNROOT": "build.run_root",
    "SYNESIS_BUILDAH_TMPDIR": "build.tmp_dir",
}


def cluster_env_overrides() -> dict[str, tuple[str, str]]:
    """Dotted key -> (variable, value) of each override set now.

    ARGO_NAMESPACE beats DS_PROJECT: it comes later in the table.
    """
    found: dict[str, tuple[str, str]] = {}
    for variable, key in CLUSTER_ENV_OVERRIDES.items():
        value = env_str(variable)
        if value is not None:
            found[key] = (variable, value)
    return found
