r"""Token log-probs, entropies and masked reductions (pure torch).

Alignment convention (used by :class:`~retro_ray.algo.batch.ReflectionBatch` and the learner): for
a causal LM run on ``input_ids`` (B, T), per-token quantities are aligned with ``input_ids``:
``logprobs[:, t] = log pi(input_ids[:, t] | input_ids[:, :t])``, produced by ``logits[:, t-1]``.
Column 0 has no prediction and is 0; it must never be in a loss mask. ``sequence_logprobs`` and
``sequence_entropy`` do the shift; ``token_logprobs`` and ``entropy_from_logits`` do not.

Memory: the (B, T, V) logits are the largest tensor in the learner. We never materialise
``log_softmax`` (another (B, T, V) kept for backward): ``log pi(y) = z_y - logsumexp(z)``, whose
backward needs only the logits and the (B, T) result. Half-precision logits are upcast to float32
one row at a time, so the forward peak is one (T, V) float32 row (autograd keeps the upcast rows
for backward, as any float32 log-prob of bf16 logits must).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def token_logprobs(logits: Tensor, target_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Gather :math:`\log \pi(y_{b,t}) = z_{b,t,y} - \log\sum_v e^{z_{b,t,v}}` (no shift).

    Args:
        logits: (B, T, V) unnormalised scores; ``logits[b, t]`` is the distribution of
            ``target_ids[b, t]``.
        target_ids: (B, T) token ids.
        mask: optional (B, T); where it is 0 the result is 0 and the target id is ignored (so
            padding ids such as -100 are allowed there).

    Returns:
        (B, T) log-probs, float32 (or float64 for float64 logits).
    """
    if logits.dim() != 3 or logits.shape[:2] != target_ids.shape:
        raise ValueError(
            f"logits must be (B, T, V) and target_ids (B, T); got {tuple(logits.shape)} "
            f"and {tuple(target_ids.shape)}"
        )
    targets = target_ids.long()
    if mask is not None:
        targets = targets.masked_fill(mask == 0, 0)
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
        out = picked - torch.logsumexp(logits, dim=-1)  # (B, T)
    else:
        rows = []
        for row_logits, row_targets in zip(logits, targets, strict=True):  # (T, V), (T,)
            row = row_logits.float()
            picked = row.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
            rows.append(picked - torch.logsumexp(row, dim=-1))
        out = torch.stack(rows)  # (B, T)
    return out if mask is None else out * (mask != 0)


def entropy_from_logits(logits: Tensor) -> Tensor:
    r"""Entropy per position, :math:`H = \log\sum_v e^{z_v} - \sum_v \mathrm{softmax}(z)_v z_v`.

    Args:
        logits: (B, T, V).

    Returns:
        (B, T) entropies in nats, float32 (float64 for float64 logits), differentiable.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got {tuple(logits.shape)}")

    def _entropy(z: Tensor) -> Tensor:
        return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)

    if logits.dtype in (torch.float32, torch.float64):
        return _entropy(logits)
    return torch.stack([_entropy(row.float()) for row in logits])


def sequence_logprobs(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Causal-LM log-probs aligned with ``input_ids``: (B, T, V), (B, T) -> (B, T), column 0 = 0.

    ``mask`` (B, T) is aligned with ``input_ids`` too (e.g. a loss mask); masked positions are 0.
    """
    shifted_mask = None if mask is None else mask[:, 1:]
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:], shifted_mask)  # (B, T-1)
    return F.pad(lp, (1, 0))


def sequence_entropy(logits: Tensor) -> Tensor:
    """Entropy of the distribution that produced each token, aligned with ``input_ids``.

    (B, T, V) -> (B, T); column 0 = 0.
    """
    return F.pad(entropy_from_logits(logits[:, :-1]), (1, 0))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """:math:`\\sum x \\cdot m` over ``dim`` (all dims if None); ``x`` and ``mask`` broadcast.

    Positions where the mask is 0 are dropped, not multiplied, so inf/nan there cannot leak.
    """
    prod = torch.where(mask != 0, x * mask, torch.zeros_like(x))
    return prod.sum() if dim is None else prod.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    r""":math:`\sum x m / \sum m` over ``dim`` (all dims if None); 0 where the mask is empty."""
    denom = masked_sum(torch.ones_like(x), mask, dim).clamp_min(1e-8)
    return masked_sum(x, mask, dim) / denom
