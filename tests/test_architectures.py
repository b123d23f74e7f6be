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


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_registry_takes_each_architectures_adapter_and_names_absent_modules(
    tiny_architectures, tmp_path, arch: str
) -> None:
    """An adapter our learner saves for the architecture publishes (its projection names and
    shapes check out); one that targets a module the model does not have is refused, naming it
    and the architecture; a base model of an architecture the registry cannot check is refused."""
    import shutil

    from retro_ray.config import LearnerConfig
    from retro_ray.learner.policy import ReflectorPolicy
    from retro_ray.registry import AdapterRegistry
    from retro_ray.registry.validation import AdapterRejected, BaseShapes

    directory = tiny_architectures[arch]
    policy = ReflectorPolicy(directory, LearnerConfig())
    adapter = policy.save_adapter(tmp_path / "adapter")
    registry = AdapterRegistry(tmp_path / "registry", directory, "retro", max_lora_rank=8)
    assert registry.publish(adapter).version == 1
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    config["target_modules"] = [*config["target_modules"], "c_attn"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterRejected, match=rf"\['c_attn'\].*{FAMILIES[arch].model_class}"):
        registry.publish(bad)
    other = tmp_path / "gpt2"
    other.mkdir()
    model_config = json.loads((directory / "config.json").read_text())
    model_config["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(model_config))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*supported"):
        BaseShapes.from_model_dir(other)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prompt_forward_matches_the_plain_one(tiny_architectures, arch: str) -> None:
    """Each family's cache takes the learner's shared-prompt forward (a prompt computed once,
    its keys and values indexed out to its rows): the log-probs of the plain forward."""
    from dataclasses import replace

    import torch

    from retro_ray.algo import ReflectionBatch
    from retro_ray.config import LearnerConfig
    from retro_ray.learner.policy import ReflectorPolicy
    from retro_ray.learner.shared_prompts import prompt_layout

    policy = ReflectorPolicy(tiny_architectures[arch], LearnerConfig(), seed=0)
    prompts = policy.prompt_ids(["Trial: > Search[Alice Kay]. Return: 0.00", "Reflect: names"])
    generator = torch.Generator().manual_seed(0)
    vocab = policy.model.get_input_embeddings().num_embeddings
    lengths = [5, 2, 7, 3, 4, 6]
    reflections = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]
    batch = ReflectionBatch.from_token_lists(
        [prompts[i % 2] for i in range(6)],
        reflections,
        [1.0, -1.0, 0.5, -0.5, 0.0, 0.0],
        [i % 2 for i in range(6)],
        pad_id=policy.pad_token_id,
    )
    layout = prompt_layout(batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert layout is not None and layout.num_prompts == 2
    shared, _ = policy._forward(batch)
    policy.config = replace(policy.config, share_prompts=False)
    plain, _ = policy._forward(batch)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
