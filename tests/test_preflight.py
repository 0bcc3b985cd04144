"""Memory preflight: sizes from safetensors headers, RAM/cgroup reading, and the verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps import preflight
from steps.errors import QuantizeError

GIB = 1024**3


def test_model_size_reads_exact_counts_from_headers(tiny_llama_dir: Path) -> None:
    import json

    from safetensors import safe_open

    config = json.loads((tiny_llama_dir / "config.json").read_text())
    size = preflight.model_size(tiny_llama_dir, config)
    params = layer0 = 0
    with safe_open(tiny_llama_dir / "model.safetensors", "pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            count = handle.get_slice(name).get_shape()
            numel = 1
            for dim in count:
                numel *= dim
            params += numel
            if ".layers.0." in name:
                layer0 += numel * 2
    assert size.params == params
    assert size.memory_bytes == 2 * params  # bf16
    assert size.largest_layer_bytes == layer0
    assert size.num_layers == 2
    assert size.disk_bytes == (tiny_llama_dir / "model.safetensors").stat().st_size


def _seventy_b() -> preflight.ModelSize:
    """DeepSeek-R1-Distill-Llama-70B's shape: 80 layers, hidden 8192, intermediate 28672."""
    layer_params = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    params = 80 * layer_params + 2 * 128256 * 8192 + 8192
    return preflight.ModelSize(
        files=30,
        disk_bytes=2 * params,
        memory_bytes=2 * params,
        params=params,
        num_layers=80,
        largest_layer_bytes=2 * layer_params,
        hidden_size=8192,
        intermediate_size=28672,
    )


def test_seventy_b_fits_an_h200_node_and_not_a_small_pod() -> None:
    size = _seventy_b()
    assert 140e9 < size.memory_bytes < 142e9
    plan = preflight.plan_memory(
        size=size, ram_available=200 * GIB, gpu_free=139 * GIB, num_samples=20, seq_len=2048
    )
    assert plan.device == "cuda"
    assert plan.gpu_needed < 8 * GIB  # one decoder layer, not the model
    with pytest.raises(QuantizeError, match="not enough CPU memory") as info:
        preflight.plan_memory(
            size=size,
            ram_available=64 * GIB,
            ram_source="cgroup limit 64.0 GiB",
            gpu_free=139 * GIB,
            num_samples=20,
            seq_len=2048,
        )
    assert "cgroup limit" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(QuantizeError, match="not enough GPU memory"):
        preflight.plan_memory(
            size=size, ram_available=200 * GIB, gpu_free=2 * GIB, num_samples=20, seq_len=2048
        )


def test_without_gpu_the_plan_is_cpu() -> None:
    plan = preflight.plan_memory(
        size=_seventy_b(), ram_available=300 * GIB, gpu_free=None, num_samples=20, seq_len=2048
    )
    assert plan.device == "cpu"


def test_cpu_available_honours_the_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100000000 kB\nMemAvailable: 50000000 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    available, source = preflight.cpu_available_bytes(meminfo, cgroup)
    assert (available, source) == (50000000 * 1024, "MemAvailable")
    (cgroup / "memory.max").write_text(f"{8 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{2 * GIB}\n")
    available, source = preflight.cpu_available_bytes(meminfo, cgroup)
    assert available == 6 * GIB
    assert source.startswith("cgroup limit")
    (cgroup / "memory.max").write_text("max\n")
    assert preflight.cpu_available_bytes(meminfo, cgroup)[1] == "MemAvailable"
