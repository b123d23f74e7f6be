r"""Reflection rewards and group-baseline advantage estimators (pure torch).

A reflection ``y(k)`` written after failed trial ``k`` is rewarded with the return it bought on the
next trial:

.. math::  r = G(k+1) - G(k).

In training, ``m`` reflections are sampled for the same failed trial (one *group*: same prompt
``x``, same ``G(k)``), and each gets exactly one trial ``k+1``. Inside a group ``G(k)`` is a
constant, so it cancels from any baseline built from the group's rewards; what is left is which
reflection helped the next trial more.

Estimators are registered by name (``ADVANTAGE_ESTIMATORS``), in the manner of verl's
``core_algos``. Each maps ``rewards (N,)`` and ``group_ids (N,)`` to ``advantages (N,)`` and a stats
dict. Conventions shared by all of them:

* Groups may have different sizes; ``group_ids`` are arbitrary integers (need not be contiguous).
* A group whose rewards are all equal (``max - min <= ZERO_SIGNAL_ATOL``) carries no learning
  signal: its advantages are set to exactly 0, and ``stats["zero_signal_group_share"]`` is the
  share of such groups. A singleton group counts as zero-signal (nothing to compare it with).
* ``normalize_std=True`` divides by the *population* (biased, ``unbiased=False``) group std plus
  ``eps``: it is defined for every group size (0 for singletons, which are 0 anyway), and it is the
  same std on every code path here.

Departures from the paper: Retroformer trained SFT, then a reward model, then PPO, all offline. We
score reflections with the *measured* reward and a group baseline (no learned reward model, no
value network): the reward is measured, not predicted, so a reward model would only add bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

ZERO_SIGNAL_ATOL = 1e-6
"""Rewards within this absolute tolerance of each other count as equal: float32 round-off in
``G(k+1) - G(k)`` with shaped returns is about 1e-7, and returns are of order 1."""


def reflection_rewards(
    returns_before: Tensor | Sequence[float], returns_after: Tensor | Sequence[float]
) -> Tensor:
    r"""Reward of each reflection: :math:`r_i = G_i(k+1) - G_i(k)`.

    Args:
        returns_before: (N,) return ``G(k)`` of the failed trial each reflection was written for.
        returns_after: (N,) return ``G(k+1)`` of the trial run with that reflection in memory.

    Returns:
        (N,) floating tensor of rewards. With 0/1 returns and failed trials (``G(k) = 0``) this is
        the next trial's success; with shaped returns it can be negative.
    """
    before = _as_float(returns_before)
    after = _as_float(returns_after)
    if before.shape != after.shape or before.dim() != 1:
        raise ValueError(
            f"returns_before and returns_after must both be (N,), got {tuple(before.shape)} "
            f"and {tuple(after.shape)}"
        )
    return after - before


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


class AdvantageEstimator(Protocol):
    def __call__(
        self, rewards: Tensor, group_ids: Tensor, *, normalize_std: bool = False, eps: float = 1e-6
    ) -> tuple[Tensor, dict[str, float]]: ...


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(
    name: str,
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: register an advantage estimator under ``name`` (names are unique)."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Look up a registered estimator; the error lists the registered names."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {known}") from None


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    normalize_std: bool = False,
    eps: float = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """Run the estimator registered as ``name``; see the module docstring for conventions."""
    return get_advantage_estimator(name)(rewards, group_ids, normalize_std=normalize_std, eps=eps)


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------


@register_advantage_estimator("group_mean")
def group_mean_advantages(
    rewards: Tensor, group_ids: Tensor, *, normalize_std: bool = False, eps: float = 1e-6
) -> tuple[Tensor, dict[str, float]]:
    r"""GRPO-style baseline: :math:`A_i = r_i - \bar r_g` (optionally :math:`/(\sigma_g+\epsilon)`).

    :math:`\bar r_g` and :math:`\sigma_g` are the mean and population std of group ``g``'s rewards,
    including :math:`r_i` itself (so the baseline is slightly correlated with the sample).
    """
    g = _groups(rewards, group_ids)
    adv = g.rewards - g.mean[g.index]
    return _finish(adv, g, normalize_std, eps)


@register_advantage_estimator("leave_one_out")
def leave_one_out_advantages(
    rewards: Tensor, group_ids: Tensor, *, normalize_std: bool = False, eps: float = 1e-6
) -> tuple[Tensor, dict[str, float]]:
    r"""RLOO baseline: :math:`A_i = r_i - \frac{1}{m-1}\sum_{j \ne i} r_j`.

    Equivalently :math:`A_i = \frac{m}{m-1}(r_i - \bar r_g)`.

    The baseline excludes the sample itself, so the estimator is unbiased. A singleton group
    (``m = 1``) has no other member to compare with: its advantage is 0. With ``normalize_std`` the
    result is divided by the population std of the whole group plus ``eps``.
    """
    g = _groups(rewards, group_ids)
    m = g.counts[g.index].to(g.rewards.dtype)
    others_mean = (g.sums[g.index] - g.rewards) / (m - 1).clamp_min(1)
    adv = torch.where(m > 1, g.rewards - others_mean, torch.zeros_like(g.rewards))
    return _finish(adv, g, normalize_std, eps)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class _Groups:
    """Per-group reductions of ``rewards`` (N,) by ``group_ids`` (N,), G groups."""

    def __init__(self, rewards: Tensor, group_ids: Tensor) -> None:
        self.rewards = rewards  # (N,)
        _, self.index, self.counts = torch.unique(  # index (N,) in [0, G); counts (G,)
            group_ids, sorted=True, return_inverse=True, return_counts=True
        )
        num_groups = self.counts.numel()
        zeros = rewards.new_zeros(num_groups)
        self.sums = zeros.index_add(0, self.index, rewards)  # (G,)
        self.mean = self.sums / self.counts.to(rewards.dtype)  # (G,)
        sq = (rewards - self.mean[self.index]) ** 2
        self.std = (zeros.index_add(0, self.index, sq) / self.counts.to(rewards.dtype)).sqrt()
        r_max = zeros.scatter_reduce(0, self.index, rewards, "amax", include_self=False)
        r_min = zeros.scatter_reduce(0, self.index, rewards, "amin", include_self=False)
        self.zero_signal = (r_max - r_min) <= ZERO_SIGNAL_ATOL  # (G,) bool


def _groups(rewards: Tensor, group_ids: Tensor) -> _Groups:
    rewards = _as_float(rewards)
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (N,), got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    return _Groups(rewards, group_ids.to(rewards.device))


def _finish(
    adv: Tensor, g: _Groups, normalize_std: bool, eps: float
) -> tuple[Tensor, dict[str, float]]:
    if normalize_std:
        adv = adv / (g.std[g.index] + eps)
    adv = torch.where(g.zero_signal[g.index], torch.zeros_like(adv), adv)
    n, num_groups = g.rewards.numel(), g.counts.numel()
    stats = {
        "num_samples": float(n),
        "num_groups": float(num_groups),
        "mean_group_size": n / num_groups if num_groups else 0.0,
        "zero_signal_group_share": (g.zero_signal.float().mean().item() if num_groups else 0.0),
        "reward_mean": g.rewards.mean().item() if n else 0.0,
        "reward_std": g.rewards.std(unbiased=False).item() if n else 0.0,
        "advantage_mean": adv.mean().item() if n else 0.0,
        "advantage_std": adv.std(unbiased=False).item() if n else 0.0,
        "advantage_abs_max": adv.abs().max().item() if n else 0.0,
    }
    return adv, stats


def _as_float(x: Tensor | Sequence[float]) -> Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())
