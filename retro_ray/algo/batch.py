"""The learner's batch of reflections, with shapes checked at the stage boundary (pure torch).

One row is one reflection ``y`` with its prompt ``x``: ``input_ids = x + y``, right-padded to T.
Per-token tensors are aligned with ``input_ids`` (see :mod:`retro_ray.algo.logprobs`): position t
holds the log-prob of ``input_ids[:, t]``; column 0 is never a loss token. Token ids come from the
engine, never from re-tokenising text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

_PER_TOKEN = ("input_ids", "attention_mask", "loss_mask", "old_logprobs", "ref_logprobs")
_PER_ROW = ("advantages", "group_ids", "rewards")


@dataclass(frozen=True)
class ReflectionBatch:
    """A batch of B reflections, each padded to T tokens."""

    input_ids: Tensor  # (B, T) long: prompt + reflection token ids, right-padded
    attention_mask: Tensor  # (B, T) 1 on real tokens (prompt and reflection), 0 on padding
    loss_mask: Tensor  # (B, T) 1 on reflection tokens (the ones trained), 0 elsewhere
    advantages: Tensor  # (B,) float: advantage of each reflection (group baseline applied)
    group_ids: Tensor  # (B,) long: reflections sampled for the same failed trial share an id
    rewards: Tensor | None = None  # (B,) float: G(k+1) - G(k), for logging
    old_logprobs: Tensor | None = None  # (B, T) log pi_old(input_ids[:, t]); None in foreign logs
    ref_logprobs: Tensor | None = None  # (B, T) log pi_ref(input_ids[:, t]), adapter disabled

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def check_shapes(self) -> ReflectionBatch:
        """Raise ValueError naming the first inconsistent field; return self when consistent."""
        if self.input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got {tuple(self.input_ids.shape)}")
        if self.input_ids.is_floating_point():
            raise ValueError(f"input_ids must hold integer ids, got {self.input_ids.dtype}")
        b, t = self.input_ids.shape
        for name in _PER_TOKEN:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, t):
                raise ValueError(f"{name} must be (B, T) = {(b, t)}, got {tuple(value.shape)}")
        for name in _PER_ROW:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b,):
                raise ValueError(f"{name} must be (B,) = {(b,)}, got {tuple(value.shape)}")
        if self.group_ids.is_floating_point():
            raise ValueError(f"group_ids must be integers, got {self.group_ids.dtype}")
        if t and bool((self.loss_mask[:, 0] != 0).any()):
            raise ValueError("loss_mask[:, 0] must be 0: column 0 has no prediction")
        if bool(((self.loss_mask != 0) & (self.attention_mask == 0)).any()):
            raise ValueError("loss_mask is 1 on a padding position (attention_mask 0)")
        return self

    def split(self, n: int) -> list[ReflectionBatch]:
        """Split the rows into ``n`` micro-batches of near-equal size (for gradient accumulation).

        Normalise every micro-batch by the whole step's count (see
        :func:`~retro_ray.algo.aggregation.aggregate`), not by its own.
        """
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"cannot split a batch of {self.batch_size} rows into {n} parts")
        parts = torch.arange(self.batch_size).tensor_split(n)
        return [self.select(idx) for idx in parts]

    def select(self, index: Tensor) -> ReflectionBatch:
        """Rows ``index`` (a (k,) long tensor) of every field."""
        changes: dict[str, Any] = {}  # each field keeps its own type (Tensor or None)
        for f in fields(self):
            value = getattr(self, f.name)
            changes[f.name] = None if value is None else value[index.to(value.device)]
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> ReflectionBatch:
        changes: dict[str, Any] = {}  # each field keeps its own type (Tensor or None)
        for f in fields(self):
            value = getattr(self, f.name)
            changes[f.name] = None if value is None else value.to(device)
        return replace(self, **changes)

    @classmethod
    def from_token_lists(
        cls,
        prompt_ids: Sequence[Sequence[int]],
        reflection_ids: Sequence[Sequence[int]],
        advantages: Tensor | Sequence[float],
        group_ids: Tensor | Sequence[int],
        *,
        pad_id: int,
        rewards: Tensor | Sequence[float] | None = None,
        old_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> ReflectionBatch:
        """Collate engine token ids (and the engine's per-reflection-token log-probs, if any).

        ``old_logprobs[i]`` has one value per token of ``reflection_ids[i]``; it lands on those
        tokens' positions, 0 elsewhere. Every prompt must be non-empty (column 0 is a prompt token).
        """
        if not len(prompt_ids) == len(reflection_ids) > 0:
            raise ValueError("need the same, non-zero number of prompts and reflections")
        lengths = [len(p) + len(r) for p, r in zip(prompt_ids, reflection_ids, strict=True)]
        b, t = len(lengths), max(lengths)
        input_ids = torch.full((b, t), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(b, t, dtype=torch.long)
        loss_mask = torch.zeros(b, t, dtype=torch.long)
        old = None if old_logprobs is None else torch.zeros(b, t)
        for i, (p, r) in enumerate(zip(prompt_ids, reflection_ids, strict=True)):
            if not p:
                raise ValueError(f"row {i}: empty prompt")
            input_ids[i, : len(p) + len(r)] = torch.tensor([*p, *r], dtype=torch.long)
            attention_mask[i, : len(p) + len(r)] = 1
            loss_mask[i, len(p) : len(p) + len(r)] = 1
            if old is not None and old_logprobs is not None:
                if len(old_logprobs[i]) != len(r):
                    raise ValueError(f"row {i}: {len(old_logprobs[i])} log-probs, {len(r)} tokens")
                old[i, len(p) : len(p) + len(r)] = torch.tensor(old_logprobs[i], dtype=old.dtype)
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=loss_mask,
            advantages=torch.as_tensor(advantages, dtype=torch.float32),
            group_ids=torch.as_tensor(group_ids, dtype=torch.long),
            rewards=None if rewards is None else torch.as_tensor(rewards, dtype=torch.float32),
            old_logprobs=old,
        ).check_shapes()
