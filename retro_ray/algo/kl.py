r"""Per-token estimators of KL(pi || ref) from samples of pi, registered by name (pure torch).

``logprobs`` and ``ref_logprobs`` are (B, T) log-probs of the sampled tokens under the current
policy and the reference (the retrospective base model with the LoRA adapter disabled). Kinds:
``k1`` (log-ratio), ``abs``, ``k2``/``mse`` (half squared log-ratio), ``k3`` (Schulman's
non-negative unbiased estimator).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# KL estimators: per-token estimates of KL(pi || ref) from samples of pi
# ---------------------------------------------------------------------------------------------

KlEstimator = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: dict[str, KlEstimator] = {}


def register_kl_estimator(name: str) -> Callable[[KlEstimator], KlEstimator]:
    def decorator(fn: KlEstimator) -> KlEstimator:
        if name in KL_ESTIMATORS:
            raise ValueError(f"KL estimator {name!r} is already registered")
        KL_ESTIMATORS[name] = fn
        return fn

    return decorator


@register_kl_estimator("k1")
def _kl_k1(logp: Tensor, ref: Tensor) -> Tensor:
    """log pi - log ref: unbiased, can be negative per token."""
    return logp - ref


@register_kl_estimator("abs")
def _kl_abs(logp: Tensor, ref: Tensor) -> Tensor:
    return (logp - ref).abs()


@register_kl_estimator("k2")
@register_kl_estimator("mse")
def _kl_k2(logp: Tensor, ref: Tensor) -> Tensor:
    """0.5 (log pi - log ref)^2: biased, low variance, non-negative."""
    return 0.5 * (logp - ref).square()


@register_kl_estimator("k3")
def _kl_k3(logp: Tensor, ref: Tensor) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1 >= 0: unbiased, low variance (Schulman's k3).

    The log-ratio is clamped to [-20, 20] so that exp cannot overflow.
    """
    d = (ref - logp).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate (B, T) of the current policy to the reference, by registered name."""
    if kind not in KL_ESTIMATORS:
        known = ", ".join(sorted(KL_ESTIMATORS))
        raise KeyError(f"unknown KL estimator {kind!r}; registered: {known}")
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)
