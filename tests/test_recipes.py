"""Recipes: shipped files load, bad recipes fail in one line before any model is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps import recipes
from steps.errors import BadInputError, ConfigError


def _write(directory: Path, text: str, name: str = "r.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_shipped_recipes_load_and_cover_the_accepted_schemes() -> None:
    names = recipes.available_recipes()
    assert {"nvfp4", "nvfp4a16", "fp8-dynamic", "w4a16"} <= set(names)
    schemes = {recipes.load_recipe(name).scheme for name in names}
    assert schemes == set(recipes.SCHEMES)


def test_default_nvfp4_recipe_follows_the_design() -> None:
    recipe = recipes.load_recipe("nvfp4")
    assert recipe.scheme == "NVFP4"
    assert recipe.targets == ["Linear"]
    assert recipe.ignore == ["lm_head"]
    assert recipe.needs_calibration
    assert recipe.info.format == "nvfp4-pack-quantized"
    calibration = recipe.calibration
    assert calibration is not None
    assert (calibration.dataset, calibration.split, calibration.column) == (
        "HuggingFaceH4/ultrachat_200k",
        "train_sft",
        "messages",
    )
    assert (calibration.num_samples, calibration.max_seq_length) == (20, 2048)
    assert recipe.quality.max_relative_logits_error is None
    assert recipe.quality.min_top1_agreement is None


def test_unknown_scheme_is_one_line_listing_the_allowed(tmp_path: Path) -> None:
    path = _write(tmp_path, "scheme: INT3\n")
    with pytest.raises(BadInputError) as info:
        recipes.load_recipe(path)
    message = str(info.value)
    assert "\n" not in message
    assert "INT3" in message and str(path) in message
    for scheme in recipes.SCHEMES:
        assert scheme in message


def test_scheme_needing_calibration_without_data_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs calibration data"):
        recipes.load_recipe(_write(tmp_path, "scheme: NVFP4\n"))
    with pytest.raises(ConfigError, match="GPTQ"):
        recipes.load_recipe(_write(tmp_path, "scheme: W4A16\nmodifier: GPTQModifier\n"))


def test_data_free_schemes_need_no_calibration(tmp_path: Path) -> None:
    for scheme in ("NVFP4A16", "fp8_dynamic", "W4A16"):
        recipe = recipes.load_recipe(_write(tmp_path, f"scheme: {scheme}\n"))
        assert not recipe.needs_calibration
        assert recipe.calibration is None


def test_calibration_source_rules(tmp_path: Path) -> None:
    both = "scheme: NVFP4\ncalibration: {dataset: a/b, path: x.jsonl}\n"
    with pytest.raises(ConfigError, match="exactly one"):
        recipes.load_recipe(_write(tmp_path, both))
    with pytest.raises(ConfigError, match="path must end in"):
        recipes.load_recipe(_write(tmp_path, "scheme: NVFP4\ncalibration: {path: x.csv}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        recipes.load_recipe(_write(tmp_path, "scheme: NVFP4\ncalibration: {path: nope.jsonl}\n"))


def test_relative_calibration_path_is_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.jsonl").write_text('{"text": "a"}\n')
    path = _write(tmp_path, "scheme: NVFP4\ncalibration: {path: data/c.jsonl}\n")
    recipe = recipes.load_recipe(path)
    assert recipe.calibration is not None
    assert recipe.calibration.path == tmp_path / "data" / "c.jsonl"


def test_unknown_key_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ignores: unknown key"):
        recipes.load_recipe(_write(tmp_path, "scheme: NVFP4A16\nignores: [lm_head]\n"))
    with pytest.raises(ConfigError, match="nvfp4a16") as info:
        recipes.load_recipe("nvfp5")
    assert "nvfp5" in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        recipes.load_recipe(tmp_path / "missing.yaml")


def test_quality_threshold_ranges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_top1_agreement"):
        recipes.load_recipe(
            _write(tmp_path, "scheme: NVFP4A16\nquality: {min_top1_agreement: 1.5}\n")
        )
    with pytest.raises(ConfigError, match="max_relative_logits_error"):
        recipes.load_recipe(
            _write(tmp_path, "scheme: NVFP4A16\nquality: {max_relative_logits_error: 0}\n")
        )


@pytest.mark.parametrize(
    ("config", "moe"),
    [
        ({"model_type": "llama", "num_hidden_layers": 80}, False),
        ({"model_type": "qwen2_moe", "num_experts": 60}, True),
        ({"model_type": "mixtral", "num_local_experts": 8}, True),
        ({"model_type": "deepseek_v3", "n_routed_experts": 256}, True),
        ({"model_type": "qwen3_5_moe"}, True),
        ({"model_type": "x", "text_config": {"num_experts": 128}}, True),
        ({"model_type": "qwen2", "num_experts": 1}, False),
    ],
)
def test_moe_detection_adds_router_gates(config: dict[str, object], moe: bool) -> None:
    recipe = recipes.load_recipe("nvfp4")
    assert recipes.is_moe(config) is moe
    ignore = recipe.ignore_for(config)
    assert ignore[0] == "lm_head"
    assert ("re:.*mlp.gate$" in ignore) is moe


def test_fingerprint_changes_with_the_recipe(tmp_path: Path) -> None:
    one = recipes.load_recipe(_write(tmp_path, "scheme: NVFP4A16\n", "a.yaml"))
    same = recipes.load_recipe(_write(tmp_path, "scheme: nvfp4a16\nignore: [lm_head]\n", "b.yaml"))
    other = recipes.load_recipe(_write(tmp_path, "scheme: NVFP4A16\nignore: [x]\n", "c.yaml"))
    assert one.fingerprint() == same.fingerprint()
    assert one.fingerprint() != other.fingerprint()


@pytest.mark.quantize
def test_calibration_table_agrees_with_llmcompressor() -> None:
    """Our static ``static_activations`` must match what llmcompressor itself infers, so the
    'needs calibration' error fires exactly when oneshot would need data."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    for scheme, info in recipes.SCHEMES.items():
        modifier = QuantizationModifier(targets=["Linear"], scheme=scheme, ignore=["lm_head"])
        assert modifier.requires_calibration_data is info.static_activations, scheme
