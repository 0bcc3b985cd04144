"""The quantize step, for real: llmcompressor oneshot on tiny random models, on the CPU.

Nothing is mocked: the tiny Llama and Qwen2-MoE are real transformers checkpoints with a locally
built tokenizer, quantized by llmcompressor, saved by compressed-tensors, reloaded by
transformers. ``OMP_NUM_THREADS=1``: on a busy 2-core box more threads are several times slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from steps import markers
from steps.errors import QuantizeError
from tests.support.tiny_models import write_calibration_jsonl

os.environ.setdefault("OMP_NUM_THREADS", "1")
pytestmark = pytest.mark.quantize
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _recipe(directory: Path, scheme: str, calibration: Path | None, **quality: Any) -> Path:
    lines = [f"scheme: {scheme}"]
    if calibration is not None:
        column = "messages" if "messages" in calibration.name else "text"
        lines += [
            "calibration:",
            f"  path: {calibration}",
            f"  column: {column}",
            "  num_samples: 8",
            "  max_seq_length: 64",
        ]
    lines += ["quality:", "  held_out_samples: 4", "  max_tokens: 96"]
    lines += [f"  {key}: {value}" for key, value in quality.items()]
    path = directory / f"{scheme.lower()}-{len(list(directory.glob('*.yaml')))}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tensors(directory: Path) -> dict[str, str]:
    from safetensors import safe_open

    found: dict[str, str] = {}
    for path in directory.glob("*.safetensors"):
        with safe_open(path, "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                found[name] = handle.get_slice(name).get_dtype()
    return found


@pytest.fixture(scope="module")
def llama_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, calibration_file: Path
) -> dict[str, Any]:
    """One NVFP4 run of the tiny Llama, with a progress file, shared by the checks below."""
    from steps.quantize import quantize

    work = tmp_path_factory.mktemp("llama-work")
    recipe = _recipe(work, "NVFP4", calibration_file)
    progress_file = work / "progress"
    os.environ["ARGO_PROGRESS_FILE"] = str(progress_file)
    try:
        result = quantize(src=tiny_llama_dir, dest=work / "quantized", recipe=recipe)
    finally:
        del os.environ["ARGO_PROGRESS_FILE"]
    return {"result": result, "work": work, "recipe": recipe, "progress": progress_file}


def test_nvfp4_config_and_tensor_layout(llama_run: dict[str, Any]) -> None:
    result = llama_run["result"]
    dest = Path(result.dest)
    assert not result.skipped
    assert (result.scheme, result.format, result.layers) == ("NVFP4", "nvfp4-pack-quantized", 2)
    config = json.loads((dest / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["format"] == "nvfp4-pack-quantized"
    assert quantization["quant_method"] == "compressed-tensors"
    assert quantization["ignore"] == ["lm_head"]
    tensors = _tensors(dest)
    prefix = "model.layers.0.self_attn.q_proj."
    assert tensors[prefix + "weight_packed"] == "U8"
    assert tensors[prefix + "weight_scale"] == "F8_E4M3"
    assert tensors[prefix + "weight_global_scale"] == "F32"
    assert tensors[prefix + "input_global_scale"] == "F32"
    assert prefix + "weight" not in tensors
    assert tensors["lm_head.weight"] == "BF16"
    assert tensors["model.layers.1.mlp.down_proj.weight_packed"] == "U8"


def test_tokenizer_template_generation_config_and_recipe_are_there(
    llama_run: dict[str, Any], tiny_llama_dir: Path
) -> None:
    dest = Path(llama_run["result"].dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (dest / name).read_bytes() == (tiny_llama_dir / name).read_bytes(), name
    assert (dest / "generation_config.json").read_bytes() == (
        tiny_llama_dir / "generation_config.json"
    ).read_bytes()
    assert "scheme: NVFP4" in (dest / "recipe.yaml").read_text()
    assert oct((dest / "model.safetensors").stat().st_mode & 0o777) == "0o644"
    assert not list(dest.parent.glob(".quantized.*"))  # no temp dirs left behind


def test_output_reloads_with_transformers_and_gives_finite_logits(
    llama_run: dict[str, Any],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(llama_run["result"].dest)
    tokenizer = AutoTokenizer.from_pretrained(dest, local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "quantize the model"}], tokenize=False
    )
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    model = AutoModelForCausalLM.from_pretrained(dest, dtype="auto", local_files_only=True)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == len(tokenizer)
    assert torch.isfinite(logits).all()


def test_quality_report_is_sane_and_in_the_marker(llama_run: dict[str, Any]) -> None:
    result = llama_run["result"]
    dest = Path(result.dest)
    report = json.loads((dest / "quality.json").read_text())
    assert report["text_source"].startswith("4 held-out rows of")
    assert report["tokens"] >= 8
    for key in ("nll_before", "nll_after", "relative_logits_error", "perplexity_after"):
        assert report[key] == report[key] and report[key] != float("inf"), key  # finite
    assert 0 < report["relative_logits_error"] < 1  # quantized, yet the same model
    assert 0.0 <= report["top1_agreement"] <= 1.0
    assert 0 < report["size_ratio"] < 0.75
    assert report["failures"] == []
    marker = markers.read_marker(markers.default_state_dir(dest), "quantize")
    assert marker is not None
    assert marker.outputs["quality"]["top1_agreement"] == report["top1_agreement"]
    assert marker.inputs["recipe"].startswith("sha256:")
    assert set(marker.inputs) >= {"source", "llmcompressor", "compressed_tensors"}


def test_progress_goes_to_the_argo_file(llama_run: dict[str, Any]) -> None:
    assert llama_run["progress"].read_text() == "2/2\n"


def test_unchanged_rerun_skips_without_torch_and_changed_recipe_reruns(
    llama_run: dict[str, Any], calibration_file: Path
) -> None:
    work: Path = llama_run["work"]
    dest = Path(llama_run["result"].dest)
    script = (
        "import sys, json\n"
        "from steps.quantize import quantize\n"
        f"r = quantize(src={llama_run['result'].src!r}, dest={str(dest)!r}, "
        f"recipe={str(llama_run['recipe'])!r})\n"
        "print(json.dumps({'skipped': r.skipped, 'torch': 'torch' in sys.modules}))\n"
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"skipped": True, "torch": False}
    assert time.monotonic() - started < 20

    # A changed recipe (NVFP4 -> NVFP4A16, data-free) re-runs and replaces dest atomically.
    from steps.quantize import quantize

    (dest / "stale-file").write_text("from the previous run")
    recipe = _recipe(work, "NVFP4A16", calibration_file)
    result = quantize(src=Path(llama_run["result"].src), dest=dest, recipe=recipe)
    assert not result.skipped
    assert result.scheme == "NVFP4A16"
    assert not (dest / "stale-file").exists()
    config = json.loads((dest / "config.json").read_text())
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    tensors = _tensors(dest)
    prefix = "model.layers.0.self_attn.q_proj."
    assert tensors[prefix + "weight_packed"] == "U8"
    assert tensors[prefix + "weight_scale"] == "F8_E4M3"
    assert prefix + "input_global_scale" not in tensors  # weight-only
    assert result.quality is not None and 0 <= result.quality.top1_agreement <= 1
    again = quantize(src=Path(llama_run["result"].src), dest=dest, recipe=recipe)
    assert again.skipped


def test_moe_router_gates_stay_unquantized(
    tmp_path: Path, tiny_moe_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NVFP4 on a Qwen2-MoE with chat-formatted calibration (``messages`` column)."""
    from steps.quantize import quantize

    calibration = write_calibration_jsonl(tmp_path / "messages.jsonl", column="messages")
    recipe = _recipe(tmp_path, "NVFP4", calibration)
    caplog.set_level("INFO", logger="steps")
    result = quantize(src=tiny_moe_dir, dest=tmp_path / "quantized", recipe=recipe)
    dest = Path(result.dest)
    assert "calibrating layer 2/2" in caplog.text
    assert "still referenced" not in caplog.text  # the 70B could not afford two copies
    config = json.loads((dest / "config.json").read_text())
    ignore = config["quantization_config"]["ignore"]
    assert "lm_head" in ignore
    assert any("mlp.gate" in entry for entry in ignore)  # compressed-tensors lists the modules
    tensors = _tensors(dest)
    assert tensors["model.layers.0.mlp.gate.weight"] == "BF16"
    assert tensors["model.layers.0.mlp.shared_expert_gate.weight"] == "BF16"
    assert tensors["model.layers.0.mlp.experts.0.gate_proj.weight_packed"] == "U8"
    assert tensors["model.layers.1.mlp.experts.3.down_proj.input_global_scale"] == "F32"
    assert tensors["model.layers.0.mlp.shared_expert.up_proj.weight_scale"] == "F8_E4M3"
    # Experts really were reloaded (a reload that drops them scores ~1.4 and 0.0 here).
    assert result.quality is not None
    assert result.quality.relative_logits_error < 0.6
    assert result.quality.top1_agreement > 0.4


def test_quality_gate_fails_the_step_without_marker_or_output(
    tmp_path: Path, tiny_llama_dir: Path, calibration_file: Path
) -> None:
    from steps.quantize import quantize

    recipe = _recipe(tmp_path, "NVFP4A16", calibration_file, max_relative_logits_error=1e-9)
    dest = tmp_path / "work" / "quantized"
    with pytest.raises(QuantizeError, match="quality gate failed.*relative logits error"):
        quantize(src=tiny_llama_dir, dest=dest, recipe=recipe)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []
    assert markers.read_marker(markers.default_state_dir(dest), "quantize") is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steps", "quantize", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _assert_bad_input(proc: subprocess.CompletedProcess[str], dest: Path, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}*"))
    assert markers.read_marker(markers.default_state_dir(dest), "quantize") is None


def test_cli_source_without_config_json(tmp_path: Path) -> None:
    src = tmp_path / "source"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"")
    dest = tmp_path / "quantized"
    proc = _cli("--src", str(src), "--dest", str(dest), "--recipe", "nvfp4a16")
    _assert_bad_input(proc, dest, "no config.json")


def test_cli_unknown_scheme(tmp_path: Path, tiny_llama_dir: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("scheme: MXFP3\n")
    dest = tmp_path / "quantized"
    proc = _cli("--src", str(tiny_llama_dir), "--dest", str(dest), "--recipe", str(recipe))
    _assert_bad_input(proc, dest, "scheme 'MXFP3' is not supported; use one of NVFP4")


def test_cli_missing_dataset_column(tmp_path: Path, tiny_llama_dir: Path) -> None:
    calibration = write_calibration_jsonl(tmp_path / "calib.jsonl", column="prompt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"scheme: NVFP4\ncalibration: {{path: {calibration}, column: text}}\n")
    dest = tmp_path / "quantized"
    proc = _cli("--src", str(tiny_llama_dir), "--dest", str(dest), "--recipe", str(recipe))
    _assert_bad_input(proc, dest, "column 'text' not found (columns: prompt)")
    assert "loading" not in proc.stderr  # failed before the model was loaded


@pytest.mark.gpu
def test_nvfp4_runs_on_the_gpu_when_there_is_one(
    tmp_path: Path, tiny_llama_dir: Path, calibration_file: Path
) -> None:
    """Opt-in (``pytest -m gpu``, on a lent GPU machine): with CUDA present the step must put
    the calibration on the GPU, not quietly fall back to the CPU, and still give the format."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from steps.quantize import quantize

    recipe = _recipe(tmp_path, "NVFP4", calibration_file)
    result = quantize(src=tiny_llama_dir, dest=tmp_path / "quantized", recipe=recipe)
    assert result.device.startswith("cuda"), result.device
    assert result.format == "nvfp4-pack-quantized"
    assert result.quality is not None and 0.0 <= result.quality.top1_agreement <= 1.0
