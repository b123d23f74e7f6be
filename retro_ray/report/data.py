"""The report's numbers: pure functions over experience-log rows and ``metrics.jsonl`` records.

Every function takes a ``pyarrow.Table`` (as read from an ``ExperienceLog``) or a list of row
dicts, and returns plain Python values (lists, dicts, floats) ready for JSON. Nothing here reads
files or draws. Success is a fraction of tasks (0..1); a *point* is one percent of tasks (0.01).

This module holds the prices and the evaluation's numbers (the agents compared, what a point of
success costs); the training run's numbers are in ``training_stats``, the reflections compared
side by side in ``reflections``, the gate decisions and the registry's history in ``history``.

Evaluation log conventions (``RUN_DIR/eval/experience``): ``mode`` is the agent, the
``iteration`` partition is the seed, every row is sample 0, one row per (task, trial) played, and
a task stops at its first won trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# The evaluation log's readers live with the evaluation (``retro_ray.evaluation.success``), below
# the report; the report's modules use them through this module or import them from there.
from retro_ray.evaluation.success import EVAL_COLUMNS as EVAL_COLUMNS
from retro_ray.evaluation.success import TOKEN_COLUMNS as TOKEN_COLUMNS
from retro_ray.evaluation.success import Rows as Rows
from retro_ray.evaluation.success import agent_sort_key, base_agent
from retro_ray.evaluation.success import eval_episodes as eval_episodes
from retro_ray.evaluation.success import max_trials as max_trials
from retro_ray.evaluation.success import success_by_trial as success_by_trial
from retro_ray.evaluation.success import tokens_per_task as tokens_per_task

BASELINE = "react"
COMPARED = ("reflexion", "retroformer")
"""The agents whose cost per point of success is measured against ``BASELINE``."""
BASE_REFLECTOR, TRAINED_REFLECTOR = COMPARED
"""The agents whose reflections the report shows side by side: the frozen base reflector
(Reflexion) and the trained adapter (Retroformer)."""


def decoding(label: str) -> str:
    """What a label adds to its agent (``reflexion-greedy`` -> ``greedy``; ``react`` -> "")."""
    return label[len(base_agent(label)) :].strip("-_ ")


@dataclass(frozen=True)
class Prices:
    """Token prices in US dollars per million tokens: the actor's, and the reflector's (None:
    the actor's price; a self-hosted reflector still costs what its tokens cost to serve)."""

    prompt_per_mtok: float = 0.15
    completion_per_mtok: float = 0.60
    reflector_prompt_per_mtok: float | None = None
    reflector_completion_per_mtok: float | None = None

    def __post_init__(self) -> None:
        named = {
            "--price-prompt": self.prompt_per_mtok,
            "--price-completion": self.completion_per_mtok,
            "--price-reflector-prompt": self.reflector_prompt_per_mtok,
            "--price-reflector-completion": self.reflector_completion_per_mtok,
        }
        for flag, value in named.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{flag}: bad price {value}; give a finite number >= 0 (USD per million tokens)"
                )

    @property
    def reflector_prompt(self) -> float:
        rp = self.reflector_prompt_per_mtok
        return self.prompt_per_mtok if rp is None else rp

    @property
    def reflector_completion(self) -> float:
        rc = self.reflector_completion_per_mtok
        return self.completion_per_mtok if rc is None else rc

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for the given actor token counts."""
        return (
            prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok
        ) / 1e6

    def reflector_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for the given reflector token counts."""
        return (
            prompt_tokens * self.reflector_prompt + completion_tokens * self.reflector_completion
        ) / 1e6

    def as_dict(self) -> dict[str, Any]:
        """The prices as used (defaults resolved), and which reflector prices were defaulted."""
        return {
            "prompt_per_mtok": self.prompt_per_mtok,
            "completion_per_mtok": self.completion_per_mtok,
            "reflector_prompt_per_mtok": self.reflector_prompt,
            "reflector_completion_per_mtok": self.reflector_completion,
            "reflector_prices_default_to_actor": self.reflector_prompt_per_mtok is None
            and self.reflector_completion_per_mtok is None,
        }


# --- evaluation -------------------------------------------------------------------------------


def cost_per_point(
    success: float,
    baseline_success: float,
    tokens: dict[str, float],
    baseline_tokens: dict[str, float],
    prices: Prices,
) -> dict[str, Any]:
    """What one point of success gained over the baseline costs in tokens and dollars, counting
    both models a buyer pays for: the actor and the reflector.

    With S the cumulative success at the last trial (fraction of tasks, seed mean) and T the mean
    tokens per task (actor prompt + completion + reflector prompt + completion, all trials of the
    task)::

        gain_points       = 100 * (S_agent - S_base)           1 point = 1 % of tasks
        extra_tokens      = T_agent - T_base                   per task
        tokens_per_point  = extra_tokens / gain_points

    ``tokens_per_point`` is the extra tokens spent per task for each point of success;
    equivalently ``100 * tokens_per_point`` extra tokens buy one additional solved task
    (``actor_tokens_per_point`` counts the actor's share alone). Dollars price the four parts of
    ``extra_tokens`` separately (``prices``)::

        extra_cost_per_task          = extra_actor_prompt * p_prompt
                                       + extra_actor_completion * p_completion
                                       + extra_reflector_prompt * p_reflector_prompt
                                       + extra_reflector_completion * p_reflector_completion
        cost_per_point_per_1k_tasks  = 1000 * extra_cost_per_task / gain_points

    i.e. what raising success by one point costs on a workload of 1,000 tasks. A gain <= 0 has no
    cost per point: those fields are None and ``no_gain`` is True. With a gain, a negative value
    means the agent spends less than the baseline (fewer tokens, or a cheaper prompt/completion
    mix): its points come free. The one-off cost of training a reflector is ``training_cost``.
    """
    gain = 100.0 * (success - baseline_success)
    extra = {c: tokens[c] - baseline_tokens[c] for c in _PER_TASK_TOKEN_PARTS}
    extra_actor = extra["actor_prompt"] + extra["actor_completion"]
    extra_reflector = extra["reflection_prompt"] + extra["reflection_completion"]
    extra_tokens = extra_actor + extra_reflector
    actor_cost = prices.cost(extra["actor_prompt"], extra["actor_completion"])
    reflector_cost = prices.reflector_cost(
        extra["reflection_prompt"], extra["reflection_completion"]
    )
    extra_cost = actor_cost + reflector_cost
    no_gain = gain <= 1e-9
    return {
        "success": success,
        "baseline_success": baseline_success,
        "gain_points": gain,
        "no_gain": no_gain,
        "actor_tokens_per_task": tokens["actor"],
        "baseline_actor_tokens_per_task": baseline_tokens["actor"],
        "reflection_tokens_per_task": tokens["reflection"],
        "baseline_reflection_tokens_per_task": baseline_tokens["reflection"],
        "tokens_per_task": tokens["actor"] + tokens["reflection"],
        "extra_actor_tokens_per_task": extra_actor,
        "extra_prompt_tokens_per_task": extra["actor_prompt"],
        "extra_completion_tokens_per_task": extra["actor_completion"],
        "extra_reflection_tokens_per_task": extra_reflector,
        "extra_reflection_prompt_tokens_per_task": extra["reflection_prompt"],
        "extra_reflection_completion_tokens_per_task": extra["reflection_completion"],
        "extra_tokens_per_task": extra_tokens,
        "extra_actor_cost_per_task_usd": actor_cost,
        "extra_reflector_cost_per_task_usd": reflector_cost,
        "extra_cost_per_task_usd": extra_cost,
        "tokens_per_point": None if no_gain else extra_tokens / gain,
        "actor_tokens_per_point": None if no_gain else extra_actor / gain,
        "cost_per_point_per_1k_tasks_usd": None if no_gain else 1000.0 * extra_cost / gain,
    }


_PER_TASK_TOKEN_PARTS = (
    "actor_prompt",
    "actor_completion",
    "reflection_prompt",
    "reflection_completion",
)


def baseline_label(labels: Iterable[str], baseline: str = BASELINE) -> str | None:
    """The label of ``baseline`` among ``labels``: the plain name if present, else the first
    label of that agent in display order; None when the baseline was not evaluated."""
    present = sorted((a for a in labels if base_agent(a) == baseline), key=agent_sort_key)
    if baseline in present:
        return baseline
    return present[0] if present else None


def best_labels(success: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per base agent, its label with the highest success at the last trial (an agent evaluated
    with greedy and sampled reflections is judged by its better decoding); ties go to the first
    label in display order."""
    best: dict[str, str] = {}
    for agent in sorted(success, key=agent_sort_key):
        base = base_agent(agent)
        if base not in best or success[agent]["mean"][-1] > success[best[base]]["mean"][-1]:
            best[base] = agent
    return best


def cost_comparison(
    success: dict[str, dict[str, Any]],
    tokens: dict[str, dict[str, float]],
    prices: Prices,
    baseline: str = BASELINE,
    agents: Sequence[str] = COMPARED,
) -> dict[str, dict[str, Any]]:
    """``cost_per_point`` of every label of ``agents`` present in the log (each decoding of each
    agent) against the baseline's label, at the last trial; empty when the baseline was not
    evaluated."""
    base = baseline_label(success, baseline)
    if base is None:
        return {}
    base_final = success[base]["mean"][-1]
    return {
        agent: cost_per_point(
            success[agent]["mean"][-1], base_final, tokens[agent], tokens[base], prices
        )
        for agent in sorted(success, key=agent_sort_key)
        if base_agent(agent) in agents
    }
