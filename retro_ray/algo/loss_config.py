"""The loss's settings, as plain data: the names and numbers :func:`~retro_ray.algo.losses.policy_loss`
reads (no torch here).

They live with the math that reads them, so the math imports nothing of the rest of retro_ray. The
configuration tree declares ``learner.loss`` with this class (``retro_ray.config.training``) and
checks its values there, naming the key; loading a config imports this module but not torch (the
``retro_ray.algo`` package loads its torch modules on first use).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

AggMode = Literal["token_sum_norm", "seq_mean_token_mean", "seq_mean_token_sum"]
"""How token losses become a scalar; see ``retro_ray.algo.aggregation``."""
AGG_MODES: tuple[str, ...] = typing.get_args(AggMode)


@dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of the policy-gradient loss (``retro_ray.algo.losses.policy_loss``)."""

    name: str = "ppo_clip"
    """Registered policy loss: ``reinforce``, ``ppo_clip`` or ``rwr``."""
    clip_eps_low: float = 0.2
    """``ppo_clip``: the ratio is clipped below at ``1 - clip_eps_low``."""
    clip_eps_high: float = 0.2
    """``ppo_clip``: the ratio is clipped above at ``1 + clip_eps_high`` (may exceed eps low)."""
    rwr_weight: Literal["exp", "advantage"] = "exp"
    """``rwr``: ``exp`` is w = min(exp(A / rwr_beta), rwr_max_weight) >= 0 (AWR); ``advantage`` is
    w = A, which equals ``reinforce``."""
    rwr_beta: float = 1.0
    """``rwr``: temperature of the exponential weight."""
    rwr_max_weight: float = 20.0
    """``rwr``: cap on the exponential weight (bounds the variance)."""
    kl_kind: str = "k3"
    """Registered KL estimator for the penalty to the reference policy."""
    kl_coef: float = 0.0
    """Weight of the KL penalty (0 disables it; then ``ref_logprobs`` is not needed)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0 disables it; then ``entropy`` is not needed)."""
    agg_mode: AggMode = "token_sum_norm"
    """How token losses become a scalar; see ``retro_ray.algo.aggregation``."""
