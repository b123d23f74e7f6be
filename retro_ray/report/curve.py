"""Learning curves: test success at the last trial against the environment episodes consumed in
training, for Retroformer and for RL baselines (pure: plain values in, plain values out).

Retroformer's curve has two points: 0 episodes, where its reflector is the untrained base
(Reflexion, evaluated as such), and the episodes its collection played (the rows of the run's
training log: every trial, branches included) for the trained adapter that was evaluated. A
baseline's curve is its ``curve.jsonl`` (``retro-ray rl-baseline``): one point per evaluation.
Each agent at its better decoding, as in the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from retro_ray.report.data import BASE_REFLECTOR, TRAINED_REFLECTOR


def retroformer_curve(
    evaluation: Mapping[str, Any] | None, training_episodes: int
) -> list[dict[str, float]]:
    """[(0, Reflexion's success), (training episodes, Retroformer's success)], the points the
    evaluation has."""
    if evaluation is None:
        return []
    best, agents = evaluation["best"], evaluation["agents"]
    points = []
    if BASE_REFLECTOR in best:
        points.append({"episodes": 0, "success": agents[best[BASE_REFLECTOR]]["mean"][-1]})
    if TRAINED_REFLECTOR in best and training_episodes > 0:
        success = agents[best[TRAINED_REFLECTOR]]["mean"][-1]
        points.append({"episodes": training_episodes, "success": success})
    return points


def baseline_curve(records: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """A ``curve.jsonl``'s records as (episodes, last-trial success) points, by episodes."""
    points = [
        {"episodes": int(r["episodes"]), "success": float(r["success_by_trial"][-1])}
        for r in records
        if r.get("success_by_trial")
    ]
    return sorted(points, key=lambda p: p["episodes"])
