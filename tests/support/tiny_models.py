"""Tiny random models, a locally built tokenizer and a calibration file: nothing is downloaded.

The quantize tests and ``bench/bench_quantize.py`` need real Hugging Face checkpoints that
llmcompressor can load, trace and compress on a 2-core CPU in seconds. These builders write
exactly what a Hub download would leave in ``<model>/source``: ``config.json``, safetensors
weights (bf16, like real releases), tokenizer files with a chat template and a
``generation_config.json``. Dimensions are multiples of 16 because NVFP4 quantizes in groups
of 16 along the input dimension.

Heavy imports (torch, transformers, tokenizers) happen inside the functions so that importing
this plugin from ``tests/conftest.py`` costs nothing for the other test modules.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} </s> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

# A closed vocabulary: the calibration texts use only these words, so no token is <unk>.
_TEXT = (
    "the a an model layer weight scale token image registry volume cluster step marker "
    "quantize build push verify download cleanup graph node pod argo workflow tensor group "
    "block float four eight bits of to in on for with and or not is are was be can will "
    "small large fast slow good bad new old first last next each every some many few more "
    "less data file path name size time rate byte chunk layer cache queue shard header "
    "digest manifest config value key list map set one two three five six seven nine ten "
    "we you they it this that these those what when where why how which who run runs ran "
    "load loads save saves read reads write writes copy move keep drop send take make give"
)
_WORDS = _TEXT.split()
_SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]


def vocabulary() -> list[str]:
    seen: dict[str, None] = dict.fromkeys(_SPECIAL)
    for word in _WORDS:
        seen.setdefault(word, None)
    words = list(seen)
    # Pad to a multiple of 16 so every matrix shape stays NVFP4-friendly.
    while len(words) % 16:
        words.append(f"<extra_{len(words)}>")
    return words


def save_tokenizer(directory: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A word-level ``tokenizers`` tokenizer wrapped for transformers, saved to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=4096,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return tokenizer


def _save_model(model: Any, directory: Path, tokenizer: Any) -> Path:
    from transformers import GenerationConfig

    model.save_pretrained(directory, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
    ).save_pretrained(directory)
    return directory


def make_tiny_llama(
    directory: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
    chat_template: str | None = CHAT_TEMPLATE,
) -> Path:
    """A random ``LlamaForCausalLM`` (bf16 safetensors) with tokenizer and generation config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(directory, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(hidden_size // 16, 1),
        num_key_value_heads=max(hidden_size // 32, 1),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    return _save_model(model, directory, tokenizer)


def make_tiny_qwen2_moe(
    directory: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_experts: int = 4,
    seed: int = 0,
) -> Path:
    """A random Qwen2-MoE (router ``mlp.gate``, experts, shared expert) saved like a download."""
    import torch
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(directory)
    torch.manual_seed(seed)
    config = Qwen2MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size // 2,
        shared_expert_intermediate_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(hidden_size // 16, 1),
        num_key_value_heads=max(hidden_size // 32, 1),
        num_experts=num_experts,
        num_experts_per_tok=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    model = Qwen2MoeForCausalLM(config).to(torch.bfloat16)
    return _save_model(model, directory, tokenizer)


def calibration_texts(count: int, *, seed: int = 0, words: int = 48) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(count)]


def write_calibration_jsonl(
    path: Path, *, count: int = 16, column: str = "text", seed: int = 0, words: int = 48
) -> Path:
    """``count`` rows of ``{column: ...}``; ``column="messages"`` writes chat conversations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in calibration_texts(count, seed=seed, words=words):
        if column == "messages":
            half = len(text) // 2
            value: Any = [
                {"role": "user", "content": text[:half].strip()},
                {"role": "assistant", "content": text[half:].strip()},
            ]
        else:
            value = text
        rows.append(json.dumps({column: value}))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide tiny Llama source dir; tests that change it must copy it first."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "source")


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen2_moe(tmp_path_factory.mktemp("tiny-moe") / "source")


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_calibration_jsonl(tmp_path_factory.mktemp("calib") / "calib.jsonl")


@pytest.fixture()
def make_model() -> Callable[..., Path]:
    """The tiny Llama builder, for tests that need their own (e.g. without a chat template)."""
    return make_tiny_llama
