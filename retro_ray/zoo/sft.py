"""Supervised fine-tuning of a tiny causal LM on (sequence, target mask) pairs, in plain torch.

The loss is the mean cross-entropy over target tokens only (actions, or a reflection), and the
output layer is applied only at the positions that predict a target: on sequences of ~200 tokens
with ~20 targets this skips most of the vocabulary projection, the largest matrix of a tiny model.
Float32, AdamW, linear warm-up then cosine decay; batches come from length-sorted pools so that a
batch pads little.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from retro_ray.zoo.recipes import SFTSchedule

POOL_BATCHES = 16  # batches per length-sorted pool: bigger pools pad less but shuffle less


@dataclass(frozen=True)
class SFTExample:
    input_ids: list[int]  # (T,) token ids, starting with <bos>
    target: list[bool]  # (T,) True where the token is trained on (predicted from the one before)


@dataclass
class SFTReport:
    steps: int
    seconds: float
    first_loss: float  # mean over the first steps (about 5% of the run)
    final_loss: float  # mean over the last steps (about 10% of the run)
    losses: list[float] = field(default_factory=list)  # every step's loss


def encode_spans(
    tokenizer: PreTrainedTokenizerFast, text: str, spans: Sequence[tuple[int, int]]
) -> SFTExample:
    """Tokens of ``text`` with the tokens inside the character ``spans`` marked as targets.

    Raises if a span boundary falls inside a token: the tokenization of the prompt plus the
    completion would then differ from what the model sees at inference (see
    ``retro_ray.zoo.data.prompt_pre_tokenizer``)."""
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    target = [False] * len(ids)
    starts = {start for start, end in offsets if end > start}
    ends = {end for start, end in offsets if end > start}
    for lo, hi in spans:
        if lo not in starts or hi not in ends:
            raise ValueError(f"target span {text[lo:hi]!r} does not start and end on tokens")
        for i, (start, end) in enumerate(offsets):
            if end > start and start >= lo and end <= hi:
                target[i] = True
    return SFTExample(ids, target)


def batches(examples: Sequence[SFTExample], batch_size: int, rng: random.Random):
    """An endless stream of batches: shuffled pools, sorted by length, cut, shuffled."""
    order = list(range(len(examples)))
    pool_size = batch_size * POOL_BATCHES
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), pool_size):
            pool = sorted(
                order[start : start + pool_size], key=lambda i: len(examples[i].input_ids)
            )
            cut = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
            rng.shuffle(cut)
            for batch in cut:
                yield [examples[i] for i in batch]


def collate(batch: Sequence[SFTExample], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T) 1 on real tokens
    target = torch.zeros((len(batch), width), dtype=torch.bool)  # (B, T) trained tokens
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        target[row, :n] = torch.tensor(example.target)
    return ids, mask, target


def target_loss(
    model: LlamaForCausalLM,
    ids: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T) 1 on real tokens
    target: torch.Tensor,  # (B, T) trained tokens
    context_weight: float = 0.0,
) -> torch.Tensor:
    """Weighted mean cross-entropy: targets weigh 1, other real tokens ``context_weight``. With
    ``context_weight == 0`` the output layer runs only where a target is predicted."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    labels = ids[:, 1:]  # (B, T-1) position t predicts token t+1
    weight = target[:, 1:].float() + context_weight * (~target[:, 1:] & (mask[:, 1:] > 0)).float()
    keep = weight > 0  # (B, T-1)
    logits = model.lm_head(hidden[:, :-1][keep])  # (N, V)
    losses = torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="none")
    return (losses * weight[keep]).sum() / weight[keep].sum()


def lr_factor(step: int, schedule: SFTSchedule) -> float:
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    progress = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_sft(
    model: LlamaForCausalLM,
    examples: Sequence[SFTExample],
    schedule: SFTSchedule,
    pad_id: int,
    seed: int,
    label: str,
    log: Callable[[str], None] | None = None,
    log_every_s: float = 5.0,
) -> SFTReport:
    """Train ``model`` in place; progress lines (step, loss, ETA) go to ``log`` (stderr)."""
    if not examples:
        raise ValueError(f"{label}: no training examples")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    torch.manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=schedule.lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, schedule))
    model.train()
    stream = batches(examples, schedule.batch_size, random.Random(seed))
    losses: list[float] = []
    start = last_log = time.monotonic()
    for step in range(schedule.steps):
        ids, mask, target = collate(next(stream), pad_id)
        loss = target_loss(model, ids, mask, target, schedule.context_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        now = time.monotonic()
        if now - last_log >= log_every_s or step == schedule.steps - 1:
            last_log = now
            rate = (step + 1) / (now - start)
            recent = sum(losses[-20:]) / len(losses[-20:])
            eta = (schedule.steps - step - 1) / rate
            log(
                f"[zoo {label}] step {step + 1}/{schedule.steps} | loss {recent:.3f} | {rate:.2f} step/s | ETA {eta:.0f}s"
            )
    model.eval()
    head = losses[: max(1, len(losses) // 20)]
    tail = losses[-max(1, len(losses) // 10) :]
    return SFTReport(
        steps=schedule.steps,
        seconds=time.monotonic() - start,
        first_loss=sum(head) / len(head),
        final_loss=sum(tail) / len(tail),
        losses=losses,
    )
