"""A tiny random Llama, its tokenizer and a LoRA adapter for backend tests, built once per cache
directory (the zoo's ``tiny`` recipe will replace it once that exists).

The model is random, so its greedy outputs are arbitrary but deterministic; that is all backend
parity tests need. The adapter has a random non-zero ``B`` (peft's default B is zero, which would
make the adapter a no-op) so that serving with it visibly changes outputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from retro_ray.zoo.models import init_llama, save_model, train_tokenizer

NAMES = ["Alice Kay", "Bob Lee", "Carol Diaz", "Dan Moss", "Eve Park", "Finn Ross", "Gus Hale"]
VERBS = ["was taught by", "was born near", "worked with", "married", "wrote about"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK = 8


@dataclass(frozen=True)
class TinyModel:
    """Paths of a built tiny model and its adapters (``adapters`` maps name to directory)."""

    model_dir: Path
    adapters: dict[str, Path]


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Simple ReAct-like lines, enough for a BPE vocabulary with whole-word tokens."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.sample(NAMES, 2)
        verb = rng.choice(VERBS)
        lines.append(f"> Search[{a}]\n{a} {verb} {b}.")
        lines.append(f"> Lookup[{verb.split()[0]}]\nReflection: search {b} before answering.")
    return lines


def build_adapter(model_dir: Path, out_dir: Path, seed: int, scale: float = 0.5) -> Path:
    """A peft LoRA adapter (safetensors) for the model in ``model_dir`` with random non-zero B."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=LORA_TARGETS, lora_dropout=0.0
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_model(root: str | Path, hidden_size: int = 128, num_layers: int = 2) -> TinyModel:
    """Build (or reuse, if ``root`` already holds it) the tiny model and two adapters ``a``, ``b``."""
    root = Path(root)
    model_dir = root / "model"
    adapters = {"a": root / "adapter_a", "b": root / "adapter_b"}
    done = root / ".complete"
    if done.exists():
        return TinyModel(model_dir, adapters)
    tokenizer = train_tokenizer(corpus(), vocab_size=384)
    model = init_llama(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=hidden_size // 64,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
        seed=0,
    )
    # A random init with std 0.02 gives near-uniform next-token distributions, where float32
    # rounding can flip greedy argmax between engines; a larger spread makes choices decisive.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
    save_model(model, tokenizer, model_dir)
    for i, path in enumerate(adapters.values()):
        build_adapter(model_dir, path, seed=100 + i)
    done.touch()
    return TinyModel(model_dir, adapters)
