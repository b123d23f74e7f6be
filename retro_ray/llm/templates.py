"""What a local model's own files say about its language: how a prompt becomes the token ids the
engine sees, how a conversation becomes a prompt (the tokenizer's chat template), and which tokens
end a reply.

A prompt is either text (tokenised with the tokenizer's special tokens: a completion model's bos)
or the token ids themselves. A chat template writes the model's special tokens itself (Llama 3's
``<|begin_of_text|>``, Mistral's ``<s>``), so a templated conversation is tokenised *without*
adding them again (a second bos changes every log-prob after it). Both engines take the ids this
module makes, and report them back (``Completion.prompt_token_ids``), so the learner trains on
exactly what the engine saw.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retro_ray.llm.base import ChatMessage

Prompt = str | Sequence[int]
"""Prompt text, or the token ids the engine is to see."""


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The token ids of ``prompt``: given ids as they are, text tokenised as a completion model
    expects (with its bos where it has one)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    return [int(i) for i in prompt]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def dir_has_chat_template(model_dir: str | Path) -> bool:
    """Whether the tokenizer saved in ``model_dir`` carries a chat template, read from its files
    (``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``) without loading it.
    Raises ``FileNotFoundError`` naming the directory when it holds no tokenizer."""
    directory = Path(model_dir)
    config = directory / "tokenizer_config.json"
    if not config.exists():
        raise FileNotFoundError(
            f"{directory} holds no tokenizer (tokenizer_config.json): set serve.model_dir to "
            "the retrospective model's directory, or reflector.prompt_format to chat/completion"
        )
    if (directory / "chat_template.jinja").exists() or (directory / "chat_template.json").exists():
        return True
    return bool(json.loads(config.read_text()).get("chat_template"))


def chat_prompt_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """The conversation through the tokenizer's chat template, with the assistant's turn opened,
    as token ids (the template's own special tokens, no others added)."""
    if not has_chat_template(tokenizer):
        raise ValueError(
            "the model's tokenizer has no chat template: use the completion format "
            "(reflector.prompt_format: completion) or a tokenizer with a chat_template"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(model_dir: str | Path, tokenizer: Any) -> frozenset[int]:
    """Every token that ends a reply: the generation config's eos ids (Llama 3 names two), the
    model config's and the tokenizer's eos (a chat model's end-of-turn token)."""
    from transformers import AutoConfig, GenerationConfig

    ids: set[int] = set()
    sources: list[Any] = [AutoConfig.from_pretrained(model_dir)]
    with contextlib.suppress(OSError):  # no generation_config.json
        sources.append(GenerationConfig.from_pretrained(model_dir))
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError(f"{model_dir}: neither the configs nor the tokenizer name an eos token")
    return frozenset(ids)


def pad_id(tokenizer: Any) -> int:
    """An id to fill padding positions with (masked out, so any valid id serves): the pad token
    where the tokenizer has one, else its eos (chat models often have no pad token)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0
