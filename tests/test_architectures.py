"""The tiny real-architecture models (``tests/support/architectures.py``) are what they claim:
the right classes and layouts, tokenizers with chat templates in each family's style, special
tokens unlike the zoo's (no pad token, another end-of-turn token), loadable by transformers."""

from __future__ import annotations

import json

import pytest

from tests.support.architectures import ARCHITECTURES, FAMILIES, PROJECTIONS

MESSAGES = [
    {"role": "system", "content": "Reflect on the failed trial."},
    {"role": "user", "content": "Trial: > Search[Alice Kay]. Return: 0.00"},
]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_architecture_layout_and_tokenizer(tiny_architectures, arch: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory = tiny_architectures[arch]
    family = FAMILIES[arch]
    config = AutoConfig.from_pretrained(directory)
    assert config.architectures == [family.model_class]
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    tok = AutoTokenizer.from_pretrained(directory)
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok.eos_token == family.end_of_turn != "<eos>"
    assert tok.chat_template
    assert tok.convert_tokens_to_ids(family.end_of_turn) >= len(tok) - len(family.specials)
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    assert tok.eos_token_id in eos
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert "Reflect on the failed trial." in text and "Search[Alice Kay]" in text
    if family.bos is not None:  # the template writes bos itself: the ids must not add another
        assert text.startswith(family.bos)
        assert tok(text, add_special_tokens=False)["input_ids"].count(tok.bos_token_id) == 1
    else:
        assert tok.bos_token is None
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert type(model).__name__ == family.model_class
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(PROJECTIONS) <= names
    biased = {n.rsplit(".", 2)[-2] for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert biased == ({"q_proj", "k_proj", "v_proj"} if arch == "qwen2" else set())
    if arch == "llama3":
        assert config.rope_parameters["rope_type"] == "llama3"
        assert not config.tie_word_embeddings
    marker = json.loads((directory / "tiny_architecture.json").read_text())
    assert marker["arch"] == arch
