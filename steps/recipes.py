"""Quantization recipes as data: ``config/recipes/<name>.yaml`` validated before any model loads.

A recipe says *what* to do (scheme, targets, ignore patterns, calibration data, quality gates);
``steps.quantize`` turns it into an llmcompressor modifier. Everything that can be wrong with a
recipe (unknown scheme, a calibration-hungry scheme without data, a missing local dataset file)
is caught here, in milliseconds, instead of after a 141 GB model has been read into memory.
This module imports neither torch nor llmcompressor, so the marker check stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from steps import markers, settings
from steps.config import _describe, _load_yaml
from steps.errors import ConfigError


@dataclass(frozen=True)
class SchemeInfo:
    """Facts about one llmcompressor preset scheme that we need before importing it."""

    format: str  # quantization_config.format written by compressed-tensors
    static_activations: bool  # activation scales come from calibration data
    bits: float  # stored bits per quantized weight, scales included (for size estimates)


# The presets we accept. ``static_activations`` mirrors llmcompressor's own
# ``requires_calibration_data`` for QuantizationModifier (tests check they agree).
SCHEMES: dict[str, SchemeInfo] = {
    "NVFP4": SchemeInfo("nvfp4-pack-quantized", static_activations=True, bits=4.5),
    "NVFP4A16": SchemeInfo("nvfp4-pack-quantized", static_activations=False, bits=4.5),
    "FP8_DYNAMIC": SchemeInfo("float-quantized", static_activations=False, bits=8.0),
    "W4A16": SchemeInfo("pack-quantized", static_activations=False, bits=4.25),
}

# Routers stay in full precision: vLLM builds them as plain linears and they are tiny anyway.
DEFAULT_MOE_IGNORE = ["re:.*mlp.gate$", "re:.*mlp.shared_expert_gate$"]
LOCAL_DATASET_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Calibration(_Strict):
    """Where calibration text comes from: a Hub dataset id or a local jsonl/json/parquet file.

    Defaults follow NVIDIA's and llmcompressor's NVFP4 examples (20 samples x 2048 tokens);
    oneshot's own default of 512 samples costs 25x the forward passes for little gain on NVFP4,
    whose weight scales need no data and whose activation global scales settle quickly.
    """

    dataset: str | None = None
    config_name: str | None = None
    path: Path | None = None
    split: str = "train"
    column: str = "text"
    num_samples: int = Field(default=20, ge=1)
    max_seq_length: int = Field(default=2048, ge=8)
    seed: int = 42

    @model_validator(mode="after")
    def _one_source(self) -> Calibration:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of dataset (a Hub id) or path (a local file)")
        if self.path is not None and self.path.suffix.lower() not in LOCAL_DATASET_SUFFIXES:
            allowed = ", ".join(sorted(LOCAL_DATASET_SUFFIXES))
            raise ValueError(f"path must end in one of {allowed}")
        return self

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.dataset}[{self.split}]"


class Quality(_Strict):
    """The before/after check on held-out text; thresholds are off unless set."""

    enabled: bool = True
    held_out_samples: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=512, ge=8)
    max_relative_logits_error: float | None = Field(default=None, gt=0)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)


class Recipe(_Strict):
    scheme: str = "NVFP4"
    modifier: Literal["QuantizationModifier", "GPTQModifier"] = "QuantizationModifier"
    targets: list[str] = ["Linear"]
    ignore: list[str] = ["lm_head"]
    moe_ignore: list[str] = DEFAULT_MOE_IGNORE
    calibration: Calibration | None = None
    quality: Quality = Quality()

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, value: str) -> str:
        normalized = value.strip().upper()
        if normalized not in SCHEMES:
            raise ValueError(f"scheme {value!r} is not supported; use one of {', '.join(SCHEMES)}")
        return normalized

    @model_validator(mode="after")
    def _calibration_when_needed(self) -> Recipe:
        if self.needs_calibration and self.calibration is None:
            why = "GPTQ" if self.modifier == "GPTQModifier" else f"{self.scheme} activation scales"
            raise ValueError(
                f"scheme {self.scheme} with {self.modifier} needs calibration data ({why}); "
                "add a calibration section with a dataset or path"
            )
        return self

    @property
    def info(self) -> SchemeInfo:
        return SCHEMES[self.scheme]

    @property
    def needs_calibration(self) -> bool:
        return self.info.static_activations or self.modifier == "GPTQModifier"

    def ignore_for(self, model_config: dict[str, Any]) -> list[str]:
        """The ignore list for this model: router gates are added for MoE architectures."""
        ignore = list(self.ignore)
        if is_moe(model_config):
            ignore += [pattern for pattern in self.moe_ignore if pattern not in ignore]
        return ignore

    def fingerprint(self) -> str:
        return markers.fingerprint(self.model_dump(mode="json"))


def is_moe(model_config: dict[str, Any]) -> bool:
    """Mixture-of-experts, judged from config.json the way the architectures name it."""
    configs = [model_config]
    text_config = model_config.get("text_config")
    if isinstance(text_config, dict):
        configs.append(text_config)
    for config in configs:
        for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
            value = config.get(key)
            if isinstance(value, int) and value > 1:
                return True
        if "moe" in str(config.get("model_type", "")).lower():
            return True
    return False


def recipes_dir(config_dir: Path | None = None) -> Path:
    return (config_dir or settings.config_dir()) / "recipes"


def available_recipes(config_dir: Path | None = None) -> list[str]:
    directory = recipes_dir(config_dir)
    return sorted(path.stem for path in directory.glob("*.yaml")) if directory.is_dir() else []


def resolve_recipe_path(recipe: str | Path, config_dir: Path | None = None) -> Path:
    """A bare name means ``config/recipes/<name>.yaml``; anything path-like is taken as a path."""
    text = str(recipe)
    if isinstance(recipe, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} not found; give a name or an existing path")
        return path
    path = recipes_dir(config_dir) / f"{text}.yaml"
    if not path.is_file():
        names = ", ".join(available_recipes(config_dir)) or "(none)"
        raise ConfigError(f"recipe {text!r} is unknown; use one of {names} or a YAML path")
    return path


def load_recipe(recipe: str | Path = "nvfp4", config_dir: Path | None = None) -> Recipe:
    """Read and validate a recipe; a relative calibration ``path`` is relative to the file."""
    path = resolve_recipe_path(recipe, config_dir)
    data = _load_yaml(path)
    calibration = data.get("calibration")
    if isinstance(calibration, dict) and calibration.get("path"):
        local = Path(str(calibration["path"])).expanduser()
        calibration["path"] = str(local if local.is_absolute() else path.parent / local)
    try:
        loaded = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"recipe {path}: {_describe(dict(exc.errors()[0]))}") from exc
    data_file = loaded.calibration.path if loaded.calibration is not None else None
    if data_file is not None and not data_file.is_file():
        raise ConfigError(
            f"recipe {path}: calibration.path {data_file} does not exist; "
            "fix the path (relative paths are relative to the recipe file)"
        )
    return loaded
