r"""Reduce (B, T) token losses to a scalar with an explicit, global normaliser (pure torch).

Why explicit: the numerator is a masked *sum*, so an optimizer step split over micro-batches
(gradient accumulation) and data-parallel workers yields exactly the single-batch gradient iff every
piece divides by the same normaliser ``Z`` (the count for the whole step, all-reduced with SUM, or a
constant). A per-piece mean would weight pieces by the inverse of their token counts instead.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from retro_ray.algo.logprobs import masked_mean, masked_sum
from retro_ray.algo.loss_config import AGG_MODES, AggMode  # declared with the loss settings

# ---------------------------------------------------------------------------------------------
# Aggregation with an explicit, global normaliser
# ---------------------------------------------------------------------------------------------


def aggregate(
    loss_tokens: Tensor,
    mask: Tensor,
    mode: AggMode = "token_sum_norm",
    normalizer: float | None = None,
) -> Tensor:
    r"""Reduce (B, T) token losses to a scalar: a masked *sum* divided by ``normalizer``.

    * ``token_sum_norm``: :math:`\sum_{b,t} m_{bt}\ell_{bt} / Z`; Z counts loss tokens.
    * ``seq_mean_token_mean``: :math:`\sum_b \big(\sum_t m\ell / \sum_t m\big) / Z`; Z counts
      sequences with at least one loss token.
    * ``seq_mean_token_sum``: :math:`\sum_{b,t} m\ell / Z`; Z counts sequences (Dr. GRPO style
      when Z is a constant such as ``num_seqs * max_len``).

    ``normalizer=None`` uses the local count (:func:`normalizer_count`): a plain mean, correct on
    one worker with one micro-batch. Because the numerator is a sum, splitting one optimizer step
    over micro-batches and data-parallel workers gives the *same* gradient as the whole batch on
    one worker iff every piece divides by the same Z: the count of the whole step (all
    micro-batches, all workers; all-reduce :func:`normalizer_count` with SUM), or a constant. DDP
    *averages* gradients over W workers, so pass :func:`dp_normalizer` ``(Z, W)`` = Z / W there.
    """
    if loss_tokens.shape != mask.shape or loss_tokens.dim() != 2:
        raise ValueError(
            f"loss_tokens and mask must both be (B, T); got {tuple(loss_tokens.shape)} "
            f"and {tuple(mask.shape)}"
        )
    mask = mask.to(loss_tokens.dtype)
    if mode == "seq_mean_token_mean":
        total = masked_mean(loss_tokens, mask, dim=-1).sum()
    elif mode in ("token_sum_norm", "seq_mean_token_sum"):
        total = masked_sum(loss_tokens, mask)
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; known: {', '.join(AGG_MODES)}")
    if normalizer is None:
        normalizer = float(normalizer_count(mask, mode).item())
    return total / max(normalizer, 1e-8)


def normalizer_count(mask: Tensor, mode: AggMode = "token_sum_norm") -> Tensor:
    """Local count behind ``mode``'s normaliser: loss tokens, or sequences; all-reduce it (SUM)."""
    if mode == "token_sum_norm":
        return mask.sum().float()
    if mode == "seq_mean_token_mean":
        return (mask.sum(-1) > 0).sum().float()
    if mode == "seq_mean_token_sum":
        return torch.tensor(float(mask.shape[0]), device=mask.device)
    raise ValueError(f"unknown aggregation mode {mode!r}; known: {', '.join(AGG_MODES)}")


def dp_normalizer(
    global_count: float, world_size: int, grad_reduction: Literal["mean", "sum"] = "mean"
) -> float:
    """Per-worker normaliser so that W workers make the single-worker update (:func:`aggregate`).

    ``grad_reduction="mean"`` (DDP, FSDP): Z / W; ``"sum"`` (all-reduce SUM): Z.
    """
    if grad_reduction == "mean":
        return global_count / world_size
    if grad_reduction == "sum":
        return float(global_count)
    raise ValueError(f"grad_reduction must be 'mean' or 'sum', got {grad_reduction!r}")
