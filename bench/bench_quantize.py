"""Quantize tiny models on the CPU (one subprocess each: time, peak RSS) and estimate the 70B.

    /tmp/venv/bin/python bench/bench_quantize.py [--hidden 512 --layers 4 --samples 16
        --seq-len 256 --scheme NVFP4 --gpu-tflops 400 --pcie-gbs 25 --disk-gbs 1]

Each run is ``python -m steps quantize`` with ``OMP_NUM_THREADS=1`` on a model built here (random
weights, local tokenizer, nothing downloaded). The baseline row is the tiny Llama; the "small"
Llama gives the per-layer calibration time that is scaled to DeepSeek-R1-Distill-Llama-70B by
parameters x tokens. The GPU estimate is from FLOPs (2 x params x tokens, calibration pass plus
propagation pass) at a realistic bf16 rate, plus moving 141 GB CPU->GPU once over PCIe, plus
reading the checkpoint from the volume and writing the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from steps.fsutil import human_bytes  # noqa: E402
from steps.progress import format_duration  # noqa: E402
from tests.support import tiny_models  # noqa: E402

# DeepSeek-R1-Distill-Llama-70B (Llama-3.3-70B shape).
L70_LAYERS, L70_HIDDEN, L70_INTER, L70_KV, L70_VOCAB = 80, 8192, 28672, 1024, 128256


def llama_layer_params(hidden: int, intermediate: int, kv: int) -> int:
    return 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden


def run_step(src: Path, dest: Path, recipe: Path) -> tuple[dict[str, object], float, int]:
    """One quantize subprocess: its JSON result, wall seconds and peak RSS (wait4's rusage)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNESIS_NO_PROGRESS": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "steps", "quantize", "--src", str(src), "--dest", str(dest),
             "--recipe", str(recipe)],
            cwd=REPO, env=env, stdout=out, stderr=err,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"quantize failed ({proc.returncode}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), seconds, usage.ru_maxrss * 1024


def write_recipe(path: Path, scheme: str, calibration: Path, samples: int, seq_len: int) -> Path:
    path.write_text(
        f"scheme: {scheme}\ncalibration:\n  path: {calibration}\n  column: text\n"
        f"  num_samples: {samples}\n  max_seq_length: {seq_len}\n"
        "quality:\n  held_out_samples: 2\n  max_tokens: 256\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--scheme", default="NVFP4")
    parser.add_argument("--gpu-tflops", type=float, default=400.0, help="sustained bf16 TFLOP/s")
    parser.add_argument("--pcie-gbs", type=float, default=25.0, help="host->GPU GB/s")
    parser.add_argument("--disk-gbs", type=float, default=0.5, help="volume read/write GB/s")
    parser.add_argument("--cpu-tflops", type=float, default=1.0, help="node CPU TFLOP/s (eval)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-quantize-", dir="/tmp"))
    try:
        calibration = tiny_models.write_calibration_jsonl(
            work / "calib.jsonl", count=args.samples + 4, words=args.seq_len + 16
        )
        recipe = write_recipe(
            work / "recipe.yaml", args.scheme, calibration, args.samples, args.seq_len
        )
        kv = max(args.hidden // 32, 1) * 16  # tiny_models: head_dim 16, kv heads hidden/32
        models = {
            "tiny llama h64 x2": (
                tiny_models.make_tiny_llama(work / "tiny" / "source"),
                llama_layer_params(64, 128, 2 * 16),
            ),
            "tiny qwen2-moe h64 x2": (
                tiny_models.make_tiny_qwen2_moe(work / "moe" / "source"),
                None,
            ),
            f"small llama h{args.hidden} x{args.layers}": (
                tiny_models.make_tiny_llama(
                    work / "small" / "source",
                    hidden_size=args.hidden,
                    intermediate_size=args.intermediate,
                    num_layers=args.layers,
                ),
                llama_layer_params(args.hidden, args.intermediate, kv),
            ),
        }
        rows = []
        for name, (src, layer_params) in models.items():
            result, seconds, rss = run_step(src, src.parent / "quantized", recipe)
            rows.append((name, result, seconds, rss, layer_params))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    tokens = args.samples * args.seq_len  # upper bound: texts are long enough to fill seq-len
    base = rows[0][2]
    print(f"\nscheme {args.scheme}, {args.samples} samples x {args.seq_len} tokens, CPU, 1 thread")
    print(f"{'model':<24} {'in':>10} {'out':>10} {'wall s':>7} {'x base':>7} "
          f"{'calib s':>8} {'s/layer':>8} {'peak RSS':>10} {'rel err':>8} {'top1':>6}")  # fmt: skip
    for name, result, seconds, rss, _ in rows:
        quality = result.get("quality") or {}
        assert isinstance(quality, dict)
        per_layer = float(result["calibration_seconds"]) / max(int(result["layers"]), 1)  # type: ignore[arg-type]
        print(
            f"{name:<24} {human_bytes(int(result['input_bytes'])):>10} "  # type: ignore[call-overload]
            f"{human_bytes(int(result['bytes'])):>10} {seconds:>7.1f} {seconds / base:>7.2f} "  # type: ignore[call-overload]
            f"{float(result['calibration_seconds']):>8.2f} {per_layer:>8.3f} "  # type: ignore[arg-type]
            f"{human_bytes(rss):>10} {quality.get('relative_logits_error', 0):>8.4f} "
            f"{quality.get('top1_agreement', 0):>6.3f}"
        )

    name, result, seconds, rss, layer_params = rows[-1]
    assert layer_params is not None
    per_layer = float(result["calibration_seconds"]) / max(int(result["layers"]), 1)  # type: ignore[arg-type]
    cpu_flops = 2 * layer_params * tokens * 2 / per_layer  # calibration + propagation passes
    l70_layer = llama_layer_params(L70_HIDDEN, L70_INTER, L70_KV)
    l70_params = L70_LAYERS * l70_layer + 2 * L70_VOCAB * L70_HIDDEN
    l70_bytes = 2 * l70_params
    l70_tokens = 20 * 2048
    scale = (l70_layer / layer_params) * (l70_tokens / tokens)
    cpu_estimate = per_layer * scale * L70_LAYERS
    gpu_flop = 2 * l70_params * l70_tokens * 2
    gpu_compute = gpu_flop / (args.gpu_tflops * 1e12)
    onload = l70_bytes / (args.pcie_gbs * 1e9)
    load = l70_bytes / (args.disk_gbs * 1e9)
    out_bytes = l70_bytes * float(result["bytes"]) / float(result["input_bytes"])  # type: ignore[arg-type]
    save = out_bytes / (args.disk_gbs * 1e9)
    quality_eval = 2 * (2 * l70_params * 512) / (args.cpu_tflops * 1e12) + out_bytes / (
        args.disk_gbs * 1e9
    )
    total_gpu = load + gpu_compute + onload + save + quality_eval
    print(
        f"\nmeasured: {name}: {layer_params / 1e6:.1f} M params/layer, {per_layer:.3f} s/layer "
        f"for {tokens} tokens -> {cpu_flops / 1e9:.1f} GFLOP/s on one CPU thread"
    )
    print(
        f"70B (80 layers, hidden 8192, intermediate 28672): {l70_layer / 1e6:.0f} M "
        f"params/layer, {l70_params / 1e9:.1f} B params, {l70_bytes / 1e9:.0f} GB bf16; "
        "20 x 2048 calibration tokens"
    )
    print(
        f"  CPU, 1 thread, scaled by params x tokens: {format_duration(cpu_estimate)} "
        f"({per_layer * scale:.0f} s/layer)"
    )
    print(
        f"  GPU (one H100/H200): {gpu_flop / 1e15:.1f} PFLOP at {args.gpu_tflops:.0f} TFLOP/s "
        f"bf16 = {format_duration(gpu_compute)} compute "
        f"(oneshot's default 512 samples: {format_duration(gpu_compute * 512 / 20)})"
    )
    print(
        f"  + onload {l70_bytes / 1e9:.0f} GB CPU->GPU at {args.pcie_gbs:g} GB/s: "
        f"{format_duration(onload)}"
    )
    print(
        f"  + read checkpoint at {args.disk_gbs:g} GB/s: {format_duration(load)}, "
        f"write {out_bytes / 1e9:.0f} GB: {format_duration(save)}"
    )
    print(
        f"  + quality (reload, 2 CPU forwards of 512 tokens at {args.cpu_tflops:g} TFLOP/s): "
        f"{format_duration(quality_eval)}"
    )
    print(f"  = about {format_duration(total_gpu)} end to end, vs the seed's 2-4 hours")


if __name__ == "__main__":
    main()
