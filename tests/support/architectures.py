"""Tiny random-weight models in the layouts users bring as their retrospective model: a Llama 3
(``LlamaForCausalLM``: GQA, rope_theta 500000 with Llama 3 rope scaling, untied head, a list of
eos ids), a Qwen 2.5 (``Qwen2ForCausalLM``: biases on the q/k/v projections, no bos token, tied
embeddings) and a Mistral (``MistralForCausalLM``: ``[INST]`` turns, ``</s>`` ends a turn).

Each directory is what ``save_pretrained`` writes for the model and for a
``PreTrainedTokenizerFast`` trained here with the ``tokenizers`` library (byte-level BPE on a few
KB of ReAct-like text) that carries a chat template in the family's style (written for this
project). Their special tokens are deliberately unlike the zoo's (``<pad>`` 0, ``<bos>`` 1,
``<eos>`` 2): no pad token at all, the special tokens appended after the BPE vocabulary (high ids,
as in the real models), and an end-of-turn token that is not the zoo's ``<eos>``.

Sizes: hidden 128, 2 layers, 2 query heads sharing 1 key/value head (GQA). vLLM's CPU attention
serves heads of at least 64 dimensions and vLLM's Qwen2 derives the head size from hidden / heads,
so GQA (two query heads at least) needs hidden 128.

The weights are random (std 0.15, as ``tests/support/tiny_model.py``: decisive next-token choices,
so greedy decoding does not flip on float rounding between engines), with the end-of-turn token's
output row scaled up so that generations end at it within a few dozen tokens, as a chat model's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.support.tiny_model import corpus

ARCHITECTURES = ("llama3", "qwen2", "mistral")
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 128, 2, 2, 1, 64, 256
MAX_POSITIONS = 2048
# LoRA targets of all three families (the projections the learner's default targets name).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUILD_VERSION = 3  # bump when a model's layout or tokenizer changes (invalidates cached roots)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a careful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{%- set ns.system = '' %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('roles are system, user and assistant') }}"
    "{%- endif %}"
    "{%- endfor %}"
)


@dataclass(frozen=True)
class Family:
    """What differs between the families: class, special tokens, template and layout knobs.

    ``end_of_turn`` is the tokenizer's eos token (where a chat reply stops); ``eos_ids`` lists the
    tokens the model's configs treat as end of sequence (Llama 3 names two)."""

    arch: str
    model_class: str
    bos: str | None
    end_of_turn: str
    specials: tuple[str, ...]
    eos: tuple[str, ...]
    template: str
    vocab_size: int  # BPE merges target; the specials come on top
    tie_word_embeddings: bool
    config: dict


FAMILIES = {
    "llama3": Family(
        arch="llama3",
        model_class="LlamaForCausalLM",
        bos="<|begin_of_text|>",
        end_of_turn="<|eot_id|>",
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        eos=("<|end_of_text|>", "<|eot_id|>"),
        template=LLAMA3_TEMPLATE,
        vocab_size=600,
        tie_word_embeddings=False,
        config={
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
            "rms_norm_eps": 1e-5,
        },
    ),
    "qwen2": Family(
        arch="qwen2",
        model_class="Qwen2ForCausalLM",
        bos=None,
        end_of_turn="<|im_end|>",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos=("<|im_end|>", "<|endoftext|>"),
        template=QWEN2_TEMPLATE,
        vocab_size=520,
        tie_word_embeddings=True,
        config={"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "use_sliding_window": False},
    ),
    "mistral": Family(
        arch="mistral",
        model_class="MistralForCausalLM",
        bos="<s>",
        end_of_turn="</s>",
        specials=("<unk>", "<s>", "</s>"),
        eos=("</s>",),
        template=MISTRAL_TEMPLATE,
        vocab_size=560,
        tie_word_embeddings=False,
        config={"rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "sliding_window": None},
    ),
}


def tokenizer_corpus() -> list[str]:
    """A few KB of ReAct-like lines and reflections (the tiny model's corpus plus chat words)."""
    extra = [
        "You are a careful assistant. Reflect on the failed trial and write a plan.",
        "Task: find who taught the person. Your last trial failed; what should you do instead?",
        "Reflection: I searched the wrong person. Next time I will check the birthplace first.",
    ]
    return corpus(n_lines=60, seed=1) + extra * 4


def build_tokenizer(family: Family):
    """A byte-level BPE tokenizer with the family's special tokens (after the BPE vocabulary),
    bos handling, eos and chat template; no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=family.vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens(list(family.specials))
    steps = [processors.ByteLevel(trim_offsets=False)]
    if family.bos is not None:  # Llama 3 and Mistral prepend bos; Qwen 2 has none
        bos_id = tok.token_to_id(family.bos)
        steps.append(
            processors.TemplateProcessing(
                single=f"{family.bos} $A",
                pair=f"{family.bos} $A $B",
                special_tokens=[(family.bos, bos_id)],
            )
        )
    tok.post_processor = processors.Sequence(steps)
    kwargs = {"bos_token": family.bos} if family.bos is not None else {}
    if family.arch == "mistral":
        kwargs["unk_token"] = "<unk>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=family.end_of_turn,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    tokenizer.chat_template = family.template
    return tokenizer


def build_model(family: Family, tokenizer, seed: int):
    import transformers

    config_class = getattr(transformers, family.model_class.replace("ForCausalLM", "Config"))
    model_class = getattr(transformers, family.model_class)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in family.eos]
    bos_id = tokenizer.convert_tokens_to_ids(family.bos) if family.bos else None
    if family.arch == "qwen2":  # Qwen's config names <|endoftext|> as bos though it never adds it
        bos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=family.tie_word_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=None,
        torch_dtype="float32",
        **family.config,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15)
        # The end-of-turn row of the output layer gets a larger norm, so that the token wins
        # the argmax (and is likely when sampling) in a share of contexts: replies end.
        eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
        head = model.get_output_embeddings().weight
        head[eot] *= 2.5
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_ids
    )
    return model


def build_tiny_architecture(arch: str, root: str | Path, seed: int = 0) -> Path:
    """Build (or reuse, if ``root`` already holds it) the tiny ``arch`` model directory under
    ``root`` and return it. ``arch`` is one of :data:`ARCHITECTURES`."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    family = FAMILIES[arch]
    directory = Path(root) / f"{arch}-v{BUILD_VERSION}"
    done = directory / ".complete"
    if done.exists():
        return directory
    tokenizer = build_tokenizer(family)
    model = build_model(family, tokenizer, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    # transformers' AutoTokenizer picks a family class (Qwen2Tokenizer) whose default fills in a
    # pad token: an explicit null keeps the saved tokenizer pad-free as built.
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["pad_token"] = None
    config_path.write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "tiny_architecture.json").write_text(
        json.dumps({"arch": arch, "build_version": BUILD_VERSION, "seed": seed}, indent=2)
    )
    done.touch()
    return directory
