"""Before/after quality report: did quantization keep the model's predictions?

On one held-out token sequence we compare the original model (run before ``oneshot`` touches
it) with the saved checkpoint reloaded from disk (so the report also proves the output loads):
mean token NLL and perplexity, the relative logits error ``||after - before|| / ||before||``,
top-1 agreement of next-token predictions, and output size against input size. Thresholds in
the recipe turn the report into a gate. torch is imported inside the functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from steps.recipes import Quality

if TYPE_CHECKING:
    import torch

# Used when there is no calibration dataset (data-free schemes) or it has no rows to spare.
BUILTIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. A container image carries the model weights "
    "and the tokenizer, and a serving runtime reads them at start-up. Quantization stores each "
    "weight in fewer bits, which saves memory and bandwidth, and a good recipe keeps the "
    "model's next-token predictions nearly unchanged. We check that by comparing the logits "
    "of the original and the quantized model on the same text."
)


class QualityReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    text_source: str
    tokens: int
    nll_before: float
    nll_after: float
    perplexity_before: float
    perplexity_after: float
    relative_logits_error: float
    top1_agreement: float
    input_bytes: int
    output_bytes: int
    size_ratio: float
    max_relative_logits_error: float | None = None
    min_top1_agreement: float | None = None
    failures: list[str] = []

    @property
    def passed(self) -> bool:
        return not self.failures


def forward_logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits as float32 on the CPU (the comparison is done where both sides can meet)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(device)).logits
    return logits.detach().float().cpu()


def mean_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Mean negative log-likelihood of each next token given the ones before it."""
    import torch.nn.functional as functional

    shifted = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    targets = input_ids[:, 1:].reshape(-1).to(shifted.device)
    return float(functional.cross_entropy(shifted, targets))


def _perplexity(nll: float) -> float:
    return math.exp(nll) if nll < 700 else math.inf


def compare(
    *,
    before: torch.Tensor,
    after: torch.Tensor,
    input_ids: torch.Tensor,
    text_source: str,
    input_bytes: int,
    output_bytes: int,
    gates: Quality,
) -> QualityReport:
    """Build the report and apply the recipe's thresholds (``failures`` lists what failed)."""
    if before.shape != after.shape:
        raise ValueError(f"logits shapes differ: {tuple(before.shape)} vs {tuple(after.shape)}")
    nll_before = mean_nll(before, input_ids)
    nll_after = mean_nll(after, input_ids)
    denominator = float(before.norm())
    relative = float((after - before).norm()) / denominator if denominator else math.inf
    top1 = float((after.argmax(-1) == before.argmax(-1)).float().mean())
    failures = []
    limit = gates.max_relative_logits_error
    if limit is not None and not relative <= limit:
        failures.append(f"relative logits error {relative:.4f} > {limit}")
    floor = gates.min_top1_agreement
    if floor is not None and not top1 >= floor:
        failures.append(f"top-1 agreement {top1:.4f} < {floor}")
    return QualityReport(
        text_source=text_source,
        tokens=int(input_ids.shape[-1]),
        nll_before=nll_before,
        nll_after=nll_after,
        perplexity_before=_perplexity(nll_before),
        perplexity_after=_perplexity(nll_after),
        relative_logits_error=relative,
        top1_agreement=top1,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        size_ratio=output_bytes / input_bytes if input_bytes else 0.0,
        max_relative_logits_error=limit,
        min_top1_agreement=floor,
        failures=failures,
    )


def reload_quantized(directory: Path, *, moe: bool) -> Any:
    """Load a saved compressed-tensors checkpoint for inference on the CPU (decompressed).

    Dense models go through plain ``transformers.from_pretrained`` (compressed-tensors
    decompresses on load), the way any consumer would read them. MoE checkpoints are saved with
    one 2-D linear per expert (the layout vLLM loads), which transformers 5.17 cannot map onto
    its fused 3-D expert tensors for a compressed model: it silently leaves the experts random.
    So for MoE we build the model, linearize its experts as llmcompressor did, lay out the
    compressed parameters, load the tensors strictly and decompress.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not moe:
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype="auto", device_map=None, local_files_only=True
        )
        model.eval()
        return model

    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from llmcompressor.modeling.moe.linearize import linearize_moe
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    quantization = QuantizationConfig.model_validate(config.quantization_config)
    del config.quantization_config
    dtype = getattr(config, "dtype", None) or torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    linearize_moe(model)
    apply_quantization_config(model, quantization)
    compressor = ModelCompressor(quantization_config=quantization)
    compressor.compress_model(model)
    state: dict[str, Any] = {}
    for path in sorted(directory.glob("*.safetensors")):
        state.update(load_file(path))
    model.load_state_dict(state, strict=True)
    compressor.decompress_model(model)
    model.eval()
    return model
