"""Retroformer's algorithm math in pure torch: no Ray, vLLM, transformers or peft imports here.

* :mod:`~retro_ray.algo.rewards`: reflection rewards ``G(k+1) - G(k)`` and group baselines.
* :mod:`~retro_ray.algo.logprobs`: token log-probs, entropies, masked reductions.
* :mod:`~retro_ray.algo.kl`: KL estimators to the reference policy.
* :mod:`~retro_ray.algo.losses`: policy-gradient losses and the learner's objective.
* :mod:`~retro_ray.algo.aggregation`: token losses to a scalar with a global normaliser.
* :mod:`~retro_ray.algo.batch`: the learner's batch dataclass.
* :mod:`~retro_ray.algo.loss_config`: the loss's settings (plain data, no torch).

Departure from the paper (SFT, then a reward model, then PPO, offline): the default is direct
policy gradient on measured rewards with a group baseline, since the reward is measured, not
predicted; see the module docstrings for details.

The package imports its modules on first use (PEP 562 ``__getattr__``): ``from retro_ray.algo
import policy_loss`` works as usual, while the configuration tree, which declares the loss
settings of :mod:`~retro_ray.algo.loss_config`, loads without torch (seconds on a small machine,
on every command). No module is named like one of the names below: loading it would set the
package attribute to the module (so the aggregation module is ``aggregation``, not ``aggregate``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names as the type checker sees them; at run time, __getattr__
    from retro_ray.algo.aggregation import aggregate, dp_normalizer, normalizer_count
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
    from retro_ray.algo.loss_config import AGG_MODES, AggMode, PolicyLossConfig
    from retro_ray.algo.losses import (
        POLICY_LOSSES,
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

_MODULE_OF = {
    "aggregate": "aggregation",
    "dp_normalizer": "aggregation",
    "normalizer_count": "aggregation",
    "ReflectionBatch": "batch",
    "KL_ESTIMATORS": "kl",
    "kl_penalty": "kl",
    "register_kl_estimator": "kl",
    "entropy_from_logits": "logprobs",
    "masked_mean": "logprobs",
    "masked_sum": "logprobs",
    "sequence_entropy": "logprobs",
    "sequence_logprobs": "logprobs",
    "token_logprobs": "logprobs",
    "AGG_MODES": "loss_config",
    "AggMode": "loss_config",
    "PolicyLossConfig": "loss_config",
    "POLICY_LOSSES": "losses",
    "get_policy_loss": "losses",
    "policy_loss": "losses",
    "register_policy_loss": "losses",
    "ADVANTAGE_ESTIMATORS": "rewards",
    "compute_advantages": "rewards",
    "get_advantage_estimator": "rewards",
    "reflection_rewards": "rewards",
    "register_advantage_estimator": "rewards",
}
"""Each public name and the module that defines it."""


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


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
