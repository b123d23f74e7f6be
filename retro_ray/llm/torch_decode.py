"""The decoding loop of :class:`~retro_ray.llm.torch_backend.TorchBackend`: one left-padded batch,
KV cache, greedy or temperature/top_p sampling, stop strings and RAW per-token log-probs.

Written by hand rather than through ``model.generate`` so that each row can carry its own seeded
generator (a prompt's sample must not depend on what else shares its batch) and so that the
log-prob is taken from the unscaled logits of the very step that chose the token, as vLLM does.
The semantics follow vLLM's: the token that completes a stop string stays in ``token_ids`` while
the text is cut before the stop string; an end-of-sequence token stays in ``token_ids`` and is
never in the text.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from retro_ray.llm.base import SamplingParams
from retro_ray.llm.templates import Prompt, encode_prompt, pad_id


@dataclass
class DecodedRow:
    prompt_tokens: int
    prompt_token_ids: list[int] = field(default_factory=list)  # what the model saw
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


def choose_tokens(
    logits: torch.Tensor,
    sampling: SamplingParams,
    generators: Sequence[torch.Generator] | None,
) -> torch.Tensor:
    """Next token per row from (B, V) float32 logits: argmax at temperature 0, else a sample
    from the temperature-scaled distribution restricted to the top_p nucleus."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    picks = [
        torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators, strict=True)
    ]
    return torch.cat(picks)


class Decoder:
    """Decode one batch of prompts with a (possibly adapter-wrapped) causal LM."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        max_positions: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_positions = max_positions

    def run(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        eos_token_ids: int | Collection[int],
        seeds: Sequence[int | None] | None = None,
    ) -> list[DecodedRow]:
        """Decode every prompt (text or token ids); a row ends at any of ``eos_token_ids``; row
        ``b`` samples from a generator seeded with ``seeds[b]`` (default: ``sampling.seed`` for
        every row; unseeded rows draw from torch's global RNG)."""
        eos = frozenset([eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids)
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        lengths = [len(e) for e in encoded]
        if min(lengths) == 0:
            raise ValueError("empty prompt: a prompt needs at least one token")
        if max(lengths) >= self.max_positions:
            raise ValueError(f"prompt of {max(lengths)} tokens exceeds {self.max_positions}")
        width, pad = max(lengths), pad_id(self.tokenizer)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=self.device)
        rows = [DecodedRow(prompt_tokens=len(e), prompt_token_ids=e) for e in encoded]
        budgets = [min(sampling.max_tokens, self.max_positions - n) for n in lengths]
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(prompts)
        generators = None
        if sampling.temperature > 0 and any(seed is not None for seed in seeds):
            generators = [
                torch.Generator(device=self.device).manual_seed(
                    int(torch.randint(0, 2**31 - 1, ()).item()) if s is None else s  # global RNG
                )
                for s in seeds
            ]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        live = [budget > 0 for budget in budgets]
        for b, budget in enumerate(budgets):
            if budget <= 0:
                rows[b].finish_reason = "length"
        while any(live):
            logits = out.logits[:, -1].float()
            tokens = choose_tokens(logits, sampling, generators)
            raw = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
            for b, (token, logprob) in enumerate(zip(tokens.tolist(), raw.tolist(), strict=True)):
                if live[b]:
                    live[b] = self._append(rows[b], token, logprob, sampling, eos, budgets[b])
            if not any(live):
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        for row in rows:
            if row.finish_reason != "stop" or not sampling.stop:
                text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
                # vLLM's streaming detokenizer holds back an unfinished UTF-8 sequence at the end
                # (byte-level tokens can split a character); so do we.
                row.text = text.rstrip("\ufffd")
        return rows

    def _append(
        self,
        row: DecodedRow,
        token: int,
        logprob: float,
        sampling: SamplingParams,
        eos: frozenset[int],
        budget: int,
    ) -> bool:
        """Record one token; return whether the row continues."""
        row.token_ids.append(token)
        row.logprobs.append(logprob)
        if token in eos:
            row.finish_reason = "stop"
            return False
        if sampling.stop:
            text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
            # Like vLLM: the stop string that completes first wins; the text ends before it.
            hits = [(text.find(s) + len(s), text.find(s)) for s in sampling.stop if s and s in text]
            if hits:
                row.text = text[: min(hits)[1]]
                row.finish_reason = "stop"
                return False
        if len(row.token_ids) >= budget:
            row.finish_reason = "length"
            return False
        return True
