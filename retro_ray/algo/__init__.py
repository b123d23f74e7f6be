"""Retroformer's algorithm math in pure torch: no Ray, vLLM, transformers or peft imports here.

* :mod:`~retro_ray.algo.rewards`: reflection rewards ``G(k+1) - G(k)`` and group baselines.
* :mod:`~retro_ray.algo.logprobs`: token log-probs, entropies, masked reductions.
* :mod:`~retro_ray.algo.kl`: KL estimators to the reference policy.
* :mod:`~retro_ray.algo.losses`: policy-gradient losses and the learner's objective.
* :mod:`~retro_ray.algo.aggregate`: token losses to a scalar with a global normaliser.
* :mod:`~retro_ray.algo.batch`: the learner's batch dataclass.

Departure from the paper (SFT, then a reward model, then PPO, offline): the default is direct
policy gradient on measured rewards with a group baseline, since the reward is measured, not
predicted; see the module docstrings for details.
"""

from retro_ray.algo.aggregate import AGG_MODES, AggMode, aggregate, dp_normalizer, normalizer_count
from retro_ray.algo.batch import ReflectionBatch
from retro_ray.algo.kl import KL_ESTIMATORS, kl_penalty, register_kl_estimator
from retro_ray.algo.logprobs import (
    entropy_from_logits,
    masked_mean,
    masked_sum,
    sequence_entropy,
    sequence_logprobs,
    token_logprobs,
)
from retro_ray.algo.losses import (
    POLICY_LOSSES,
    PolicyLossConfig,
    get_policy_loss,
    policy_loss,
    register_policy_loss,
)
from retro_ray.algo.rewards import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    get_advantage_estimator,
    reflection_rewards,
    register_advantage_estimator,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AggMode",
    "PolicyLossConfig",
    "ReflectionBatch",
    "aggregate",
    "compute_advantages",
    "dp_normalizer",
    "entropy_from_logits",
    "get_advantage_estimator",
    "get_policy_loss",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "normalizer_count",
    "policy_loss",
    "reflection_rewards",
    "register_advantage_estimator",
    "register_kl_estimator",
    "register_policy_loss",
    "sequence_entropy",
    "sequence_logprobs",
    "token_logprobs",
]
