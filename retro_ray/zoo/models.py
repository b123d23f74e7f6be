"""Building blocks of the model zoo: a byte-level BPE tokenizer trained locally, a randomly
initialised Llama of any (small) size, and the standard Hugging Face directory layout that both
transformers and vLLM load.

No model hub is reachable in the embedded default, so every model the project uses is created here
and then trained by the zoo recipes. The special tokens get fixed, explicit ids (``<pad>`` 0,
``<bos>`` 1, ``<eos>`` 2) written into the tokenizer, the model config and the generation config:
transformers' fallback ids once ended generation silently at an ordinary token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order
MIN_HEAD_DIM = 64  # vLLM's CPU attention rejects smaller heads ("Unsupported CPU attention ...")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then give the caller back its own:
    a build or an evaluation inside a longer process (a driver, the tests) must not leave its
    thread count behind for the work that follows."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, split_words: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``, split into GPT-2's pieces first unless
    ``split_words`` is False (texts that are pieces already, of another split).

    Byte-level means any string encodes (no unknown token) and decoding is lossless, so the text
    the engine returns is exactly what the tokens spell. The tokenizer prepends ``<bos>`` to every
    encoded text (the models are trained that way) and never appends ``<eos>`` (callers add it to
    training targets where a completion ends)."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes plus special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token} got id {tok.token_to_id(token)}")
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A $B",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",  # generation pads on the left so every row ends at its last token
        clean_up_tokenization_spaces=False,
    )


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The pad/bos/eos ids, read from the tokenizer (never assumed)."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"tokenizer lacks {missing}")
    return ids


def init_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    seed: int,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for ``tokenizer``, reproducible from ``seed``.

    ``hidden_size / num_heads`` must be at least 64: vLLM's CPU attention does not serve smaller
    heads. Tied input/output embeddings (supported by vLLM's Llama) halve the parameter count of
    models whose vocabulary dominates their size."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim < MIN_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} < {MIN_HEAD_DIM}: vLLM on CPU cannot serve it")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        torch_dtype="float32",
        **special_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        **special_token_ids(tokenizer), max_length=max_position_embeddings
    )
    return model


def save_model(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: str | Path
) -> Path:
    """Write the standard Hugging Face directory (config.json, generation_config.json,
    model.safetensors, tokenizer files) that transformers, peft and vLLM all load.

    The special-token ids are re-stamped into both configs from the tokenizer first, so a model
    whose config was edited elsewhere cannot drift from its tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = special_token_ids(tokenizer)
    for name, value in ids.items():
        setattr(model.config, name, value)
        setattr(model.generation_config, name, value)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
