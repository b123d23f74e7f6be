r"""Policy-gradient losses, KL penalties and loss aggregation (pure torch).

All per-token tensors are (B, T), aligned with the batch's ``input_ids`` (see
:mod:`retro_ray.algo.logprobs`), and ``mask`` (B, T) is 1 on reflection tokens. Losses are
registered by name (``POLICY_LOSSES``), as in verl's ``core_algos``; KL estimators live in
:mod:`retro_ray.algo.kl` and aggregation in :mod:`retro_ray.algo.aggregation`. The objective
minimised by :func:`policy_loss` is

.. math::  L = \mathrm{agg}\big(\ell^{pg} + \beta_{KL}\,\mathrm{KL}(\pi\,\|\,\pi_{ref})
               - \beta_{H}\,H(\pi)\big)

where the reference policy is the retrospective base model with the LoRA adapter disabled.

Departures from the paper (Retroformer: SFT, then a reward model, then PPO with a value head,
offline): the default is direct policy gradient on *measured* rewards with a group baseline
(:mod:`retro_ray.algo.rewards`), no learned reward model and no critic, because the reward of a
reflection is measured on the next trial, not predicted. PPO-style clipping is used only when a
batch is reused (``ppo_clip``); offline logs without our log-probs fall back to reward-weighted
likelihood (``rwr``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from retro_ray.algo.aggregation import aggregate
from retro_ray.algo.kl import kl_penalty
from retro_ray.algo.logprobs import masked_mean
from retro_ray.algo.loss_config import PolicyLossConfig as PolicyLossConfig  # re-exported

# ---------------------------------------------------------------------------------------------
# Policy-gradient losses: (B, T) token losses and (B, T) detached diagnostics
# ---------------------------------------------------------------------------------------------


class PolicyLossFn(Protocol):
    def __call__(
        self,
        logprobs: Tensor,
        advantages: Tensor,
        *,
        old_logprobs: Tensor | None,
        config: PolicyLossConfig,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> PolicyLossFn:
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(POLICY_LOSSES))
        raise KeyError(f"unknown policy loss {name!r}; registered: {known}") from None


@register_policy_loss("reinforce")
def reinforce_loss(
    logprobs: Tensor, advantages: Tensor, *, old_logprobs: Tensor | None, config: PolicyLossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""On-policy REINFORCE with baseline: :math:`\ell = -A \log\pi(y_t)`, no ratio.

    Its gradient, :math:`-A\,\nabla\log\pi`, equals ``ppo_clip``'s at ratio 1 (first pass over
    freshly sampled data). ``old_logprobs`` is not used.
    """
    return -advantages * logprobs, {}


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logprobs: Tensor, advantages: Tensor, *, old_logprobs: Tensor | None, config: PolicyLossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""PPO clipped surrogate, :math:`\rho = \exp(\log\pi - \log\pi_{old})`:

    .. math::  \ell = -\min\big(\rho A,\
                   \mathrm{clip}(\rho, 1-\epsilon_{low}, 1+\epsilon_{high}) A\big)

    Where the clipped branch is taken the gradient is 0. Diagnostics (per token, reported as
    token means): ``clip_frac`` (1 where the clipped branch is taken, i.e. strictly larger loss)
    and ``ratio_mean``. :func:`policy_loss` adds ``approx_kl_old`` whenever old log-probs exist.
    """
    if old_logprobs is None:
        raise ValueError("ppo_clip needs old_logprobs; for logs without them use 'rwr'")
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)  # (B, T)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1.0 - config.clip_eps_low, 1.0 + config.clip_eps_high)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * clipped_ratio
    loss = torch.maximum(loss_unclipped, loss_clipped)
    with torch.no_grad():
        diagnostics = {
            "clip_frac": (loss_clipped > loss_unclipped).to(logprobs.dtype),
            "ratio_mean": ratio.detach(),
        }
    return loss, diagnostics


@register_policy_loss("rwr")
def rwr_loss(
    logprobs: Tensor, advantages: Tensor, *, old_logprobs: Tensor | None, config: PolicyLossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Reward-weighted likelihood for logs without our log-probs: :math:`\ell = -w \log\pi`.

    Default ``rwr_weight="exp"``: :math:`w = \min(e^{A/\beta}, w_{max})`, non-negative (AWR), so the
    loss is a weighted maximum likelihood and cannot push log-probs of bad samples to -inf, which a
    signed weight can do off-policy with no ratio to stop it. ``"advantage"`` uses :math:`w = A`.
    """
    if config.rwr_weight == "exp":
        weight = torch.exp(advantages / config.rwr_beta).clamp_max(config.rwr_max_weight)
    elif config.rwr_weight == "advantage":
        weight = advantages
    else:
        raise ValueError(f"rwr_weight must be 'exp' or 'advantage', got {config.rwr_weight!r}")
    weight = weight.detach()
    return -weight * logprobs, {"rwr_weight_mean": weight}


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------


def policy_loss(
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    old_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    config: PolicyLossConfig | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""The learner's loss: :math:`\mathrm{agg}(\ell^{pg} + \beta_{KL} KL - \beta_H H)`, all masked.

    Args:
        logprobs: (B, T) log pi of the sampled tokens under the current weights (with grad).
        advantages: (B,) per reflection (broadcast over its tokens) or (B, T) per token.
        mask: (B, T) 1 on the reflection tokens that are trained.
        old_logprobs: (B, T) log pi_old (needed by ``ppo_clip``; also gives ``approx_kl_old``).
        ref_logprobs: (B, T) log pi_ref (needed when ``config.kl_coef > 0``).
        entropy: (B, T) per-token entropy with grad (needed when ``config.entropy_coef > 0``).
        config: loss name, clipping, coefficients, aggregation mode (None: defaults).
        normalizer: global normaliser of :func:`~retro_ray.algo.aggregation.aggregate` (None: local).

    Returns:
        The scalar loss, and float metrics (token means over the local mask; ``loss`` and
        ``pg_loss`` use the given normaliser).
    """
    if logprobs.dim() != 2 or mask.shape != logprobs.shape:
        raise ValueError(
            f"logprobs and mask must both be (B, T); got {tuple(logprobs.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages[:, None].expand_as(logprobs)  # (B,) -> (B, T)
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must be (B,) or (B, T) with (B, T) = {tuple(logprobs.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    config = config or PolicyLossConfig()
    advantages = advantages.detach().to(logprobs.dtype)
    mask = mask.to(logprobs.dtype)
    loss_fn = get_policy_loss(config.name)
    pg_tokens, diagnostics = loss_fn(logprobs, advantages, old_logprobs=old_logprobs, config=config)
    total_tokens = pg_tokens
    metrics: dict[str, float] = {}
    if config.kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs (the adapter-disabled policy)")
    if ref_logprobs is not None:  # with kl_coef 0 the KL is still reported
        kl_tokens = kl_penalty(logprobs, ref_logprobs, config.kl_kind)
        if config.kl_coef != 0.0:
            total_tokens = total_tokens + config.kl_coef * kl_tokens
        metrics["kl_ref"] = masked_mean(kl_tokens.detach(), mask).item()
    if config.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        total_tokens = total_tokens - config.entropy_coef * entropy
    loss = aggregate(total_tokens, mask, config.agg_mode, normalizer)
    with torch.no_grad():
        metrics["loss"] = loss.item()
        metrics["pg_loss"] = aggregate(pg_tokens.detach(), mask, config.agg_mode, normalizer).item()
        metrics["num_tokens"] = mask.sum().item()
        metrics["advantage_mean"] = masked_mean(advantages, mask).item()
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy.detach(), mask).item()
        if old_logprobs is not None:
            # k3 estimate of KL(old || new) from samples of old: (rho - 1) - log rho >= 0.
            log_ratio = (logprobs.detach() - old_logprobs).clamp(-20.0, 20.0)
            approx_kl = torch.expm1(log_ratio) - log_ratio
            metrics["approx_kl_old"] = masked_mean(approx_kl, mask).item()
        for name, value in diagnostics.items():  # per-token diagnostics -> local token means
            metrics[name] = masked_mean(value, mask).item()
    return loss, metrics
