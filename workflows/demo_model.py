"""A tiny random Llama-shaped model written with the standard library only, for offline demos.

``python workflows/submit.py demo-model DIR`` writes ``config.json``, ``model.safetensors``
(float32, a few hundred KiB), a word-level ``tokenizer.json`` and ``tokenizer_config.json``,
so ``submit.py manager --local --model-dir DIR`` can show the whole pipeline on a machine with
no network, no torch and no numpy. The safetensors file is written by hand: an 8-byte header
length, a JSON header with dtype/shape/offsets, then the raw little-endian tensors.
"""

from __future__ import annotations

import json
import random
import struct
from array import array
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from steps.errors import BadInputError
from steps.fsutil import atomic_write_bytes, atomic_write_text

WORDS = tuple(
    [
        "the",
        "a",
        "model",
        "image",
        "layer",
        "registry",
        "build",
        "push",
        "verify",
        "download",
        "quantize",
        "cluster",
        "argo",
        "step",
        "marker",
        "pipeline",
        "token",
        "weight",
        "config",
        "hello",
        "world",
        "yes",
        "no",
    ]
)
SPECIAL = ("<unk>", "<s>", "</s>")


class DemoModelResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    dest: str
    files: list[str]
    bytes: int
    parameters: int


def _tensors(
    *, vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int
) -> dict[str, tuple[int, ...]]:
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (hidden,),
            f"{p}.post_attention_layernorm.weight": (hidden,),
            f"{p}.self_attn.q_proj.weight": (hidden, hidden),
            f"{p}.self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            f"{p}.self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            f"{p}.self_attn.o_proj.weight": (hidden, hidden),
            f"{p}.mlp.gate_proj.weight": (intermediate, hidden),
            f"{p}.mlp.up_proj.weight": (intermediate, hidden),
            f"{p}.mlp.down_proj.weight": (hidden, intermediate),
        }
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def safetensors_bytes(shapes: dict[str, tuple[int, ...]], *, seed: int) -> bytes:
    """Float32 tensors: norms are ones, the rest uniform in +-0.05 (deterministic per seed)."""
    rng = random.Random(seed)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(shapes):
        count = 1
        for dim in shapes[name]:
            count *= dim
        if name.endswith("norm.weight"):
            values = array("f", [1.0] * count)
        else:
            values = array("f", (rng.uniform(-0.05, 0.05) for _ in range(count)))
        if struct.pack("=f", 1.0) != struct.pack("<f", 1.0):
            values.byteswap()
        blob = values.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(shapes[name]),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep tensor data 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _tokenizer(vocab: dict[str, int]) -> dict[str, object]:
    added = [
        {
            "id": vocab[tok],
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for tok in SPECIAL
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def make_demo_model(
    *,
    dest: Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
) -> DemoModelResult:
    """Write the tiny model into ``dest`` (created; existing files of the same name replaced).

    Raises:
        BadInputError: ``dest`` is a file, or the shape does not divide into heads.
    """
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"{dest} is a file; give a directory for the demo model")
    if hidden % heads or heads % kv_heads:
        raise BadInputError("--hidden must divide by heads and heads by kv-heads")
    vocab = {tok: i for i, tok in enumerate((*SPECIAL, *WORDS))}
    vocab_size = len(vocab)
    shapes = _tensors(
        vocab=vocab_size,
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "model_max_length": 128,
        "chat_template": (
            "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}"
        ),
    }
    files: dict[str, bytes] = {
        "config.json": json.dumps(config, indent=2).encode() + b"\n",
        "generation_config.json": json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 16}, indent=2
        ).encode()
        + b"\n",
        "tokenizer.json": json.dumps(_tokenizer(vocab), indent=2).encode() + b"\n",
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode() + b"\n",
        "model.safetensors": safetensors_bytes(shapes, seed=seed),
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(dest / name, data)
    atomic_write_text(
        dest / "README.md", "Tiny random Llama-shaped demo model made by Synesis; not useful.\n"
    )
    parameters = 0
    for shape in shapes.values():
        count = 1
        for dim in shape:
            count *= dim
        parameters += count
    names = sorted([*files, "README.md"])
    return DemoModelResult(
        dest=str(dest),
        files=names,
        bytes=sum((dest / name).stat().st_size for name in names),
        parameters=parameters,
    )
