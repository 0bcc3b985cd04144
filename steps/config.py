"""Typed view of ``config/*.yaml``: cluster defaults, registry profiles and model profiles.

Every file is validated with unknown keys forbidden, and a bad value becomes one line naming
the file, the key and what is allowed (a ``ConfigError``, exit code 2). Environment overrides
come from ``steps.settings`` so they live in one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steps import settings
from steps.errors import ConfigError

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

RegistryProfileName = Literal["ecr", "ecr-public", "ghcr", "quay", "universal"]
Builder = Literal["buildah", "stream"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 8Gi or 400Gi")
    return value


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError("must be a DNS label: lower-case letters, digits and '-'")
    return value


class HubSecret(_Strict):
    name: str
    key: str = "token"


class PvcConfig(_Strict):
    name: str
    size: str
    storage_class: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        return _quantity(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _dns_label(value)


class Resources(_Strict):
    cpu: str
    memory: str
    ephemeral_storage: str | None = None

    @field_validator("cpu", "memory", "ephemeral_storage")
    @classmethod
    def _quantities(cls, value: str | None) -> str | None:
        return None if value is None else _quantity(value)


class Toleration(_Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class GpuConfig(_Strict):
    count: int = Field(ge=0, le=16)
    resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []


class Images(_Strict):
    steps: str
    quantize: str
    modelcar_base: str


class RegistryTarget(_Strict):
    uri: str | None = None
    profile: RegistryProfileName = "universal"
    auth: Literal["auto", "ecr", "authfile", "none"] = "auto"
    auth_file: Path | None = None
    create_repository: bool = True
    insecure: bool = False


class BuildConfig(_Strict):
    builder: Builder = "buildah"
    layer_format: Literal["gzip", "zstd", "none"] = "none"
    storage_driver: Literal["overlay", "vfs"] = "overlay"
    keep_model_after_verify: bool = False
    # buildah scratch paths (None: under <model dir parent>/.buildah, i.e. on the work volume).
    # Each build uses its own subdirectory of these and removes it after a successful push.
    scratch_dir: Path | None = None  # parent of the defaults below
    storage_root: Path | None = None  # buildah --root (layers); an emptyDir or the work volume
    run_root: Path | None = None  # buildah --runroot (locks, mount state)
    tmp_dir: Path | None = None  # TMPDIR: push writes each layer to a temp file here
    blob_info_cache_dir: Path | None = None  # instead of /var/lib/containers/cache
    context_dir: Path | None = None  # staged build context; same filesystem as the model -> links


_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class ArgoConfig(_Strict):
    server: str | None = None
    parallelism: int = Field(default=2, ge=1)
    # workflows.argoproj.io/controller-instanceid on our Workflows and WorkflowTemplates: a
    # controller started with --instanceid (a namespaced one may be) ignores unlabelled ones.
    controller_instance_id: str | None = None

    @field_validator("controller_instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if value is not None and not _LABEL_VALUE.match(value):
            raise ValueError("must be a label value: up to 63 letters, digits, '-', '_' or '.'")
        return value or None


class ClusterConfig(_Strict):
    namespace: str
    service_account: str
    hub_secret: HubSecret
    pvcs: dict[Literal["manager", "executor"], PvcConfig]
    images: Images
    resources: dict[str, Resources]
    gpu: GpuConfig
    registry: RegistryTarget = RegistryTarget()
    build: BuildConfig = BuildConfig()
    argo: ArgoConfig = ArgoConfig()

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _dns_label(value)


class RegistryProfile(_Strict):
    layer_cap_bytes: int = Field(gt=1024 * 1024)
    chunk_bytes: int = Field(gt=0)
    min_chunk_bytes: int = Field(default=0, ge=0)


class RegistryProfiles(_Strict):
    profiles: dict[RegistryProfileName, RegistryProfile]


class ModelProfile(_Strict):
    pipeline: Literal["manager", "executor"]
    model_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    revision: str = "main"
    tag: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    pvc: Literal["manager", "executor"]
    recipe: str | None = None
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None


class ModelProfiles(_Strict):
    profiles: dict[str, ModelProfile]


_M = TypeVar("_M", bound=BaseModel)


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key; check its spelling against the shipped file"
    elif error["type"] == "missing":
        message = "required key is missing"
    return f"{key}: {message}"


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: config file not found; set SYNESIS_CONFIG_DIR or restore it"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML; fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _validate(model: type[_M], data: dict[str, Any], source: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from exc


def _set_dotted(data: dict[str, Any], dotted: str, value: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def load_cluster(config_dir: Path | None = None) -> ClusterConfig:
    """``cluster.yaml`` with environment overrides applied (named in errors when they are bad)."""
    path = (config_dir or settings.config_dir()) / "cluster.yaml"
    data = _load_yaml(path)
    overrides = settings.cluster_env_overrides()
    for key, (_variable, value) in overrides.items():
        _set_dotted(data, key, value)
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        dotted = ".".join(str(part) for part in first["loc"])
        if dotted in overrides:
            variable = overrides[dotted][0]
            raise ConfigError(f"environment {variable}: {_describe(first)}") from exc
        raise ConfigError(f"{path}: {_describe(first)}") from exc


def load_registry_profiles(config_dir: Path | None = None) -> RegistryProfiles:
    path = (config_dir or settings.config_dir()) / "registry.yaml"
    return _validate(RegistryProfiles, _load_yaml(path), str(path))


def load_model_profiles(config_dir: Path | None = None) -> ModelProfiles:
    path = (config_dir or settings.config_dir()) / "models.yaml"
    return _validate(ModelProfiles, _load_yaml(path), str(path))


def registry_profile(name: str, config_dir: Path | None = None) -> RegistryProfile:
    profiles = load_registry_profiles(config_dir).profiles
    if name not in profiles:
        allowed = ", ".join(sorted(profiles))
        raise ConfigError(f"registry profile {name!r} is unknown; choose one of {allowed}")
    return profiles[name]
