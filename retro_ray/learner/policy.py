"""The retrospective policy under training: the SFT base model plus one trainable LoRA adapter.

A plain class: ``sample`` draws reflections (token ids and log-probs straight from the decoding
loop, never re-tokenised), ``update`` takes one optimizer step on a ``ReflectionBatch`` with the
pure-torch loss of ``retro_ray.algo``, ``save_adapter`` writes a peft adapter directory
(safetensors) that the torch and vLLM backends load by name. The reference policy of the KL
penalty is the same model with the adapter disabled, so no second copy is held in memory.

Old log-probs (the denominator of the PPO ratio), decided by :func:`recompute_old_logprobs`:

- **on-policy** (the batch was sampled by the adapter the update starts from): the learner
  recomputes them under its current weights, so the ratio starts at exactly 1 and the sampler's
  log-probs (vLLM's) only measure the sampler/learner mismatch (``engine_logprob_mismatch``);
- **stale** (``train.overlap``, or any batch sampled by an older adapter than the learner now
  holds): they are the sampler's own, as logged with the tokens, because they are the behaviour
  policy's; recomputing them would make the ratio 1 and silently drop the importance correction.
  ``old_logprobs_from_sampler`` in the metrics says which was used;
- **offline** (``recompute_old=False`` throughout): the log's, always.

Non-finite steps: a step whose loss or gradient norm is NaN or infinite is skipped (no optimizer
step, the AdamW moments untouched) and counted (``nonfinite_skipped`` per update,
``nonfinite_skipped_total`` since the start, kept in checkpoints), so one bad batch cannot poison
the adapter. Weights are checked finite (:meth:`ReflectorPolicy.check_finite`) before they are
checkpointed or published.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from retro_ray.algo import (
    ReflectionBatch,
    entropy_from_logits,
    masked_mean,
    normalizer_count,
    policy_loss,
    token_logprobs,
)
from retro_ray.config import LearnerConfig
from retro_ray.learner.shared_prompts import (
    PromptLayout,
    prompt_layout,
    shared_prompt_logits,
    to_columns,
)
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.templates import pad_id, stop_token_ids
from retro_ray.llm.torch_decode import DecodedRow, Decoder

_GLOBAL_SUMS = frozenset({"loss", "pg_loss"})
"""Metrics that ``policy_loss`` divides by the step's normaliser: summed over micro-batches (and
workers), not token-weighted like the per-token means."""


def recompute_old_logprobs(batch: ReflectionBatch, staleness: int) -> bool:
    """Whether an online update recomputes the old log-probs (see the module docstring).

    ``staleness``: learner steps between the adapter that sampled ``batch`` and the weights the
    update starts from. A stale batch keeps the sampler's log-probs where it has them (the
    importance ratio corrects for the adapter having moved); without them (a foreign sampler)
    there is nothing to correct with, and the learner's own are the only ones there are."""
    return staleness <= 0 or batch.old_logprobs is None


class NonFiniteAdapter(ValueError):
    """The adapter's weights hold NaN or inf: they are neither checkpointed nor published."""


class GradSync(Protocol):
    """Data-parallel glue for :meth:`ReflectorPolicy.update` (``retro_ray.learner.distributed``
    implements it over ``torch.distributed``): sums across workers, in place."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> None: ...

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None: ...


class ReflectorPolicy:
    def __init__(self, base_dir: str | Path, config: LearnerConfig, seed: int = 0) -> None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        self.config = config
        self.base_dir = Path(base_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
        self.tokenizer.padding_side = "left"
        # Any causal LM peft can wrap (Llama, Qwen 2, Mistral, ...); its own eos ids (a chat
        # model's end-of-turn among them) and a pad id even where the tokenizer has none.
        base = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)
        self.eos_token_ids = stop_token_ids(self.base_dir, self.tokenizer)
        self.pad_token_id: int = pad_id(self.tokenizer)
        self.max_positions: int = base.config.max_position_embeddings
        lora = config.lora
        self.model = get_peft_model(
            base,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.steps = 0
        self.nonfinite_skipped = 0  # steps skipped for a NaN/inf loss or gradient norm

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, prompts: Sequence[str], sampling: SamplingParams, batch_size: int = 64
    ) -> list[DecodedRow]:
        """One reflection per prompt from the current policy (repeat a prompt for a group)."""
        self.model.eval()
        decoder = Decoder(self.model, self.tokenizer, torch.device("cpu"), self.max_positions)
        rows: list[DecodedRow] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            rows.extend(decoder.run(chunk, sampling, self.eos_token_ids))
        return rows

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in prompts]

    # -- learning -------------------------------------------------------------------------------

    def update(
        self,
        batch: ReflectionBatch,
        *,
        sync: GradSync | None = None,
        recompute_old: bool = True,
    ) -> dict[str, float]:
        """Optimizer step(s) on ``batch``: gradient accumulation over micro-batches, all normalised
        by the whole step's count so the step equals the single-batch gradient.

        With ``sync`` the batch is this worker's shard of a global batch: the count is summed
        over workers (the global normaliser) and so are the gradients, so every worker takes the
        step one worker would take on the whole batch. ``recompute_old=False`` keeps the batch's
        own old log-probs: the behaviour policy's, for the importance ratio (offline, and stale
        online batches: :func:`recompute_old_logprobs`)."""
        batch.check_shapes()
        cfg = self.config
        start = time.monotonic()
        # Old log-probs are the current weights' (the engine's, when present, only measure the
        # sampler/learner mismatch); the reference once, before any step. With one pass over the
        # batch the old log-probs equal the training forward's, detached (ratio exactly 1), so
        # no extra forward pass is spent on them.
        metrics: dict[str, float] = {}
        old_from_forward = recompute_old and cfg.epochs_per_batch == 1
        if old_from_forward:
            old = batch.old_logprobs  # the engine's (or None): compared in the training forward
        elif recompute_old or batch.old_logprobs is None:
            old = self.current_logprobs(batch)
            if batch.old_logprobs is not None:
                mask = batch.loss_mask.bool()
                gap = (batch.old_logprobs - old).abs()[mask]
                metrics["engine_logprob_mismatch"] = float(gap.mean()) if gap.numel() else 0.0
        else:
            old = batch.old_logprobs
        metrics["old_logprobs_from_sampler"] = float(
            not recompute_old and batch.old_logprobs is not None
        )
        # The reference (one no-grad forward pass with the adapter off) only with a KL penalty,
        # as TRL skips its reference model at beta 0: the loss then reports no KL to the base.
        ref = self.reference_logprobs(batch) if cfg.loss.kl_coef != 0.0 else None
        batch = replace(batch, old_logprobs=old, ref_logprobs=ref)
        n_micro = max(1, -(-batch.batch_size // cfg.micro_batch_size))
        layout = self._prompt_layout(batch)
        together = None if layout is None else layout.owner
        micro_batches = length_sorted_split(batch, n_micro, together)
        count = normalizer_count(batch.loss_mask, cfg.loss.agg_mode).detach().clone()
        if sync is not None:
            sync.all_reduce_sum(count)
        normalizer = max(float(count), 1.0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        skipped = 0
        for _ in range(cfg.epochs_per_batch):
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for micro in micro_batches:
                loss, m = self._micro_loss(micro, normalizer, old_from_forward)
                loss.backward()
                weight = micro.num_loss_tokens / normalizer
                for key, value in m.items():  # loss terms are already over the global count
                    w = 1.0 if key in _GLOBAL_SUMS else weight
                    totals[key] = totals.get(key, 0.0) + value * w
            if sync is not None:
                sync.all_reduce_grads(params)
                totals = _summed(totals, sync)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if math.isfinite(totals.get("loss", 0.0)) and math.isfinite(grad_norm):
                self.optimizer.step()
                self.steps += 1
            else:  # every rank sees the same summed loss and gradients: all skip together
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
            metrics.update(totals, grad_norm=grad_norm)
        self.nonfinite_skipped += skipped
        metrics["nonfinite_skipped"] = float(skipped)
        metrics["nonfinite_skipped_total"] = float(self.nonfinite_skipped)
        metrics["update_time_s"] = time.monotonic() - start
        metrics["tokens"] = normalizer
        return metrics

    def _micro_loss(
        self, micro: ReflectionBatch, normalizer: float, old_from_forward: bool = False
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config.loss
        logprobs, entropy = self._forward(micro, with_entropy=cfg.entropy_coef > 0)
        old, extra = micro.old_logprobs, {}
        if old_from_forward:
            if old is not None:
                gap = (old - logprobs.detach()).abs()
                extra["engine_logprob_mismatch"] = masked_mean(gap, micro.loss_mask).item()
            old = logprobs.detach()
        loss, metrics = policy_loss(
            logprobs,
            micro.advantages,
            micro.loss_mask,
            old_logprobs=old,
            ref_logprobs=micro.ref_logprobs,
            entropy=entropy,
            config=cfg,
            normalizer=normalizer,
        )
        return loss, {**metrics, **extra}

    @torch.no_grad()
    def reference_logprobs(self, batch: ReflectionBatch) -> torch.Tensor:
        """(B, T) log-probs under the reference policy: the base model, adapter disabled."""
        with self.model.disable_adapter():
            return self._forward(batch)[0]

    @torch.no_grad()
    def current_logprobs(self, batch: ReflectionBatch) -> torch.Tensor:
        """(B, T) log-probs under the current weights (the learner's own old log-probs)."""
        self.model.eval()
        return self._forward(batch)[0]

    def _forward(
        self, batch: ReflectionBatch, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) log-probs aligned with ``input_ids`` (and entropies). Rows that share a prompt
        (a group's reflections) compute it once (``retro_ray.learner.shared_prompts``); otherwise
        logits are computed only from the first loss token's predecessor on
        (``logits_to_keep``): the prompt, usually most of the row, needs no (T, V) logits. Same
        values as ``sequence_logprobs`` on full logits, either way."""
        layout = self._prompt_layout(batch)
        if layout is not None:
            return self._shared_forward(batch, layout, with_entropy)
        t = batch.input_ids.shape[1]
        cols = batch.loss_mask.any(0).nonzero()
        first = int(cols[0]) if cols.numel() else t - 1  # column 0 is never a loss token
        keep = t - first + 1
        logits = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep
        ).logits  # (B, keep, V): positions first-1 .. T-1
        logprobs = F.pad(
            token_logprobs(logits[:, :-1], batch.input_ids[:, first:], batch.loss_mask[:, first:]),
            (first, 0),
        )
        entropy = F.pad(entropy_from_logits(logits[:, :-1]), (first, 0)) if with_entropy else None
        return logprobs, entropy

    def _prompt_layout(self, batch: ReflectionBatch) -> PromptLayout | None:
        """Which rows share a prompt, where ``learner.share_prompts`` is on and any do."""
        if not self.config.share_prompts:
            return None
        return prompt_layout(batch.input_ids, batch.attention_mask, batch.loss_mask)

    def _shared_forward(
        self, batch: ReflectionBatch, layout: PromptLayout, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``_forward`` with each prompt run once; values at the reflection columns, 0 elsewhere."""
        logits, columns = shared_prompt_logits(self.model, batch.input_ids, layout)
        at = columns.clamp(min=0)
        mask = batch.loss_mask.gather(1, at) * (columns >= 0)
        width = batch.input_ids.shape[1]
        logprobs = token_logprobs(logits, batch.input_ids.gather(1, at), mask)
        entropy = to_columns(entropy_from_logits(logits), columns, width) if with_entropy else None
        return to_columns(logprobs, columns, width), entropy

    def nonfinite_weights(self) -> list[str]:
        """Names of the trainable (LoRA) tensors holding a NaN or an infinity."""
        return [
            name
            for name, p in self.model.named_parameters()
            if p.requires_grad and not bool(torch.isfinite(p).all())
        ]

    def check_finite(self, action: str) -> None:
        """Raise :class:`NonFiniteAdapter` if any LoRA weight is NaN or infinite; ``action`` is
        what is refused (``checkpointed``, ``published``): such weights must never become
        durable, or a restart would restore them and fail again."""
        bad = self.nonfinite_weights()
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteAdapter(
                f"the adapter after {self.steps} steps holds NaN/inf weights ({shown}); not "
                f"{action}. Lower learner.lr or learner.max_grad_norm, or check the rewards"
            )

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter (peft format, safetensors)."""
        directory = Path(directory)
        self.model.save_pretrained(directory, safe_serialization=True)
        return directory


def length_sorted_split(
    batch: ReflectionBatch, n: int, together: torch.Tensor | None = None
) -> list[ReflectionBatch]:
    """At most ``n`` micro-batches of near-equal row counts, rows grouped by length (longest
    first), each cut to its own longest row: the padding a micro-batch of mixed lengths would
    compute is gone. ``together`` (B,): rows with the same value stay in one micro-batch (the
    rows of a shared prompt, so that it runs once), ordered by their longest row. Rows are
    right-padded and attention is causal, so every real position sees the same tokens as in the
    full batch; the step normalises by the whole batch's count, so grouping changes no gradient
    (up to float summation order)."""
    sizes = batch.attention_mask.sum(1).tolist()  # planned here, wherever the batch lives
    units = list(range(batch.batch_size)) if together is None else together.tolist()
    longest: dict[int, int] = {}
    for unit, size in zip(units, sizes, strict=True):
        longest[unit] = max(longest.get(unit, 0), size)
    order = sorted(range(batch.batch_size), key=lambda r: (-longest[units[r]], units[r], -sizes[r]))
    target = -(-batch.batch_size // n)
    groups: list[list[int]] = [[]]
    for position, row in enumerate(order):
        groups[-1].append(row)
        unit_ends = position + 1 == len(order) or units[order[position + 1]] != units[row]
        if unit_ends and len(groups[-1]) >= target and position + 1 < len(order):
            groups.append([])
    parts = []
    for rows in groups:
        index = torch.tensor(rows)
        micro = batch.select(index)
        width = max(max(sizes[r] for r in rows), 1)
        cut = {
            f.name: getattr(micro, f.name)[:, :width]
            for f in fields(micro)
            if getattr(micro, f.name) is not None and getattr(micro, f.name).dim() == 2
        }
        parts.append(replace(micro, **cut))
    return parts


def _summed(totals: dict[str, float], sync: GradSync) -> dict[str, float]:
    """Token-weighted metric totals summed over workers (every worker has the same keys)."""
    keys = sorted(totals)
    values = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
    sync.all_reduce_sum(values)
    return dict(zip(keys, values.tolist(), strict=True))
