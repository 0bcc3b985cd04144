"""Memory preflight for quantization: say what is missing before hours are spent loading.

The 70B executor model is ~141 GB of bf16 weights. llmcompressor loads it on the CPU and its
sequential pipeline onloads one decoder layer at a time to the GPU, so the two budgets are:
CPU RAM >= the whole model (plus the cached calibration activations), and GPU memory >= the
biggest decoder layer plus its activations. Sizes come from the safetensors headers (exact
shapes and dtypes, no torch needed); free memory from ``/proc/meminfo`` and the cgroup limit
(a pod's limit is what the OOM killer enforces, not the node's RAM) and from CUDA.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.errors import BadInputError, QuantizeError
from steps.fsutil import human_bytes

GIB = 1024**3
CPU_HEADROOM = 4 * GIB  # interpreter, torch, tokenizer, datasets, save buffers
GPU_HEADROOM = 2 * GIB  # CUDA context, allocator fragmentation

_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelSize:
    """What a checkpoint weighs on disk and once loaded (``dtype="auto"`` keeps stored dtypes)."""

    files: int
    disk_bytes: int
    memory_bytes: int
    params: int
    num_layers: int
    largest_layer_bytes: int
    hidden_size: int
    intermediate_size: int


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise BadInputError(f"{path}: not a safetensors file (too short); re-download it")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100 * 1024 * 1024:
            raise BadInputError(f"{path}: safetensors header of {length} bytes; re-download it")
        try:
            header: dict[str, Any] = json.loads(handle.read(length))
        except ValueError as exc:
            raise BadInputError(f"{path}: unreadable safetensors header; re-download it") from exc
    return header


def weight_files(src: Path) -> list[Path]:
    return sorted(path for path in src.glob("*.safetensors") if path.is_file())


def model_size(src: Path, model_config: dict[str, Any]) -> ModelSize:
    """Sizes from the safetensors headers: exact parameter counts per decoder layer."""
    files = weight_files(src)
    params = memory = disk = 0
    per_layer: dict[int, int] = {}
    for path in files:
        disk += path.stat().st_size
        for name, entry in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry.get("shape", []):
                count *= int(dim)
            nbytes = count * _DTYPE_BYTES.get(str(entry.get("dtype")), 2)
            params += count
            memory += nbytes
            match = _LAYER.search(name)
            if match:
                index = int(match.group(1))
                per_layer[index] = per_layer.get(index, 0) + nbytes
    text_config = model_config.get("text_config")
    config = text_config if isinstance(text_config, dict) else model_config
    hidden = int(config.get("hidden_size") or 0)
    intermediate = int(
        config.get("intermediate_size") or config.get("moe_intermediate_size") or 4 * hidden
    )
    return ModelSize(
        files=len(files),
        disk_bytes=disk,
        memory_bytes=memory,
        params=params,
        num_layers=int(config.get("num_hidden_layers") or len(per_layer)),
        largest_layer_bytes=max(per_layer.values(), default=memory),
        hidden_size=hidden,
        intermediate_size=intermediate,
    )


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" means no limit


def cpu_available_bytes(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> tuple[int, str]:
    """Memory this process may still use, and where the figure came from."""
    available, source = 0, "MemAvailable"
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        available, source = 0, "unknown"
    limits = (
        (cgroup / "memory.max", cgroup / "memory.current"),  # cgroup v2
        (cgroup / "memory" / "memory.limit_in_bytes", cgroup / "memory" / "memory.usage_in_bytes"),
    )
    for limit_path, usage_path in limits:
        limit = _read_int(limit_path)
        if limit is None or (available and limit >= 1 << 60):
            continue
        room = max(limit - (_read_int(usage_path) or 0), 0)
        if not available or room < available:
            available, source = room, f"cgroup limit {human_bytes(limit)}"
        break
    return available, source


def gpu_free_bytes() -> int | None:
    """Free memory on the first CUDA device, or None without one (torch imported lazily)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(0)
    return int(free)


@dataclass(frozen=True)
class Plan:
    device: str  # "cuda" or "cpu"
    ram_needed: int
    ram_available: int
    gpu_needed: int
    gpu_free: int | None


def plan_memory(
    *,
    size: ModelSize,
    ram_available: int,
    ram_source: str = "MemAvailable",
    gpu_free: int | None,
    num_samples: int,
    seq_len: int,
    gptq: bool = False,
) -> Plan:
    """Compare needs with what is there; raise ``QuantizeError`` naming the shortfall.

    RAM holds the whole model plus the calibration activations that the sequential pipeline
    caches between layers (two hidden-state tensors per sample). The GPU holds one decoder layer
    at a time, its activations for one sample, and for GPTQ one fp32 Hessian per linear.
    """
    hidden = max(size.hidden_size, 1)
    activations_cache = 2 * num_samples * seq_len * hidden * 2
    ram_needed = size.memory_bytes + activations_cache + CPU_HEADROOM
    layer_activations = 8 * seq_len * max(hidden, size.intermediate_size) * 2
    hessians = 4 * (6 * hidden * hidden + size.intermediate_size**2) if gptq else 0
    gpu_needed = size.largest_layer_bytes + layer_activations + hessians + GPU_HEADROOM
    plan = Plan(
        device="cuda" if gpu_free is not None else "cpu",
        ram_needed=ram_needed,
        ram_available=ram_available,
        gpu_needed=gpu_needed,
        gpu_free=gpu_free,
    )
    if ram_available and ram_available < ram_needed:
        raise QuantizeError(
            f"not enough CPU memory: the model needs {human_bytes(size.memory_bytes)} in RAM "
            f"plus {human_bytes(ram_needed - size.memory_bytes)} for activations and headroom "
            f"({human_bytes(ram_needed)} in all) but {human_bytes(ram_available)} is available "
            f"({ram_source}); raise the pod memory limit or use a bigger node"
        )
    if gpu_free is not None and gpu_free < gpu_needed:
        raise QuantizeError(
            f"not enough GPU memory: one decoder layer ({human_bytes(size.largest_layer_bytes)}) "
            f"with activations and headroom needs {human_bytes(gpu_needed)} but the GPU has "
            f"{human_bytes(gpu_free)} free; free the GPU, lower calibration.max_seq_length, "
            "or use a bigger GPU"
        )
    return plan
