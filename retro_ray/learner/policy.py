"""The retrospective policy under training: the SFT base model plus one trainable LoRA adapter.

A plain class: ``sample`` draws reflections (token ids and log-probs straight from the decoding
loop, never re-tokenised), ``update`` takes one optimizer step on a ``ReflectionBatch`` with the
pure-torch loss of ``retro_ray.algo``, ``save_adapter`` writes a peft adapter directory
(safetensors) that the torch and vLLM backends load by name. The reference policy of the KL
penalty is the same model with the adapter disabled, so no second copy is held in memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from retro_ray.algo import ReflectionBatch, policy_loss, sequence_entropy, sequence_logprobs
from retro_ray.config import LearnerConfig
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.torch_decode import DecodedRow, Decoder


class ReflectorPolicy:
    def __init__(self, base_dir: str | Path, config: LearnerConfig, seed: int = 0) -> None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        self.config = config
        self.base_dir = Path(base_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
        self.tokenizer.padding_side = "left"
        base = LlamaForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)
        self.eos_token_id: int = base.config.eos_token_id
        self.pad_token_id: int = base.config.pad_token_id
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
            rows.extend(decoder.run(chunk, sampling, self.eos_token_id))
        return rows

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in prompts]

    # -- learning -------------------------------------------------------------------------------

    def update(self, batch: ReflectionBatch) -> dict[str, float]:
        """Optimizer step(s) on ``batch``: gradient accumulation over micro-batches, all normalised
        by the whole batch's token count so the step equals the single-batch gradient."""
        batch.check_shapes()
        cfg = self.config
        start = time.monotonic()
        # Old log-probs are recomputed under the current weights (the engine's, when present,
        # only measure the sampler/learner mismatch); the reference once, before any step.
        old = self.current_logprobs(batch)
        metrics: dict[str, float] = {}
        if batch.old_logprobs is not None:
            mask = batch.loss_mask.bool()
            gap = (batch.old_logprobs - old).abs()[mask]
            metrics["engine_logprob_mismatch"] = float(gap.mean()) if gap.numel() else 0.0
        ref = self.reference_logprobs(batch) if cfg.loss.kl_coef > 0 else None
        batch = replace(batch, old_logprobs=old, ref_logprobs=ref)
        n_micro = max(1, -(-batch.batch_size // cfg.micro_batch_size))
        normalizer = float(batch.loss_mask.sum().clamp(min=1))
        for _ in range(cfg.epochs_per_batch):
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for micro in batch.split(n_micro):
                loss, m = self._micro_loss(micro, normalizer)
                loss.backward()
                weight = micro.num_loss_tokens / normalizer
                for key, value in m.items():
                    totals[key] = totals.get(key, 0.0) + value * weight
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            self.steps += 1
            metrics.update(totals, grad_norm=float(grad_norm))
        metrics["update_time_s"] = time.monotonic() - start
        metrics["tokens"] = normalizer
        return metrics

    def _micro_loss(
        self, micro: ReflectionBatch, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config.loss
        logits = self.model(input_ids=micro.input_ids, attention_mask=micro.attention_mask).logits
        logprobs = sequence_logprobs(logits, micro.input_ids, micro.loss_mask)
        entropy = sequence_entropy(logits) if cfg.entropy_coef > 0 else None
        return policy_loss(
            logprobs,
            micro.advantages,
            micro.loss_mask,
            old_logprobs=micro.old_logprobs,
            ref_logprobs=micro.ref_logprobs,
            entropy=entropy,
            config=cfg,
            normalizer=normalizer,
        )

    @torch.no_grad()
    def reference_logprobs(self, batch: ReflectionBatch) -> torch.Tensor:
        """(B, T) log-probs under the reference policy: the base model, adapter disabled."""
        with self.model.disable_adapter():
            logits = self.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits
        return sequence_logprobs(logits, batch.input_ids, batch.loss_mask)

    @torch.no_grad()
    def current_logprobs(self, batch: ReflectionBatch) -> torch.Tensor:
        """(B, T) log-probs under the current weights (the learner's own old log-probs)."""
        self.model.eval()
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return sequence_logprobs(logits, batch.input_ids, batch.loss_mask)

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter (peft format, safetensors)."""
        directory = Path(directory)
        self.model.save_pretrained(directory, safe_serialization=True)
        return directory
