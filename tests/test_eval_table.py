"""The evaluation table's arithmetic, worked by hand on a small log."""

from __future__ import annotations

import pytest

from retro_ray.driver.eval_table import agent_table, format_agent_table
from retro_ray.report.data import eval_episodes, success_by_trial


def rows(agent: str, seed: int, outcomes: dict[str, list[bool]], tokens: int = 10) -> list[dict]:
    """One evaluation row per played trial; ``outcomes`` maps a task to its trials' wins."""
    return [
        {
            "mode": agent,
            "iteration": seed,
            "task_id": task,
            "trial": k,
            "sample": 0,
            "won": won,
            "actor_prompt_tokens": tokens,
            "actor_completion_tokens": 1,
            "reflection_prompt_tokens": 0,
            "reflection_completion_tokens": 2 if k else 0,
            "cost": 0.0,
        }
        for task, wins in outcomes.items()
        for k, won in enumerate(wins)
    ]


LOG = [
    # Reflexion: seed 0 solves a at trial 2 of {a, b}; seed 1 solves nothing.
    *rows("reflexion", 0, {"a": [False, True], "b": [False, False]}),
    *rows("reflexion", 1, {"c": [False, False], "d": [False, False]}),
    # Retroformer: seed 0 a at trial 1, b at 2; seed 1 c at trial 2.
    *rows("retroformer", 0, {"a": [True], "b": [False, True]}),
    *rows("retroformer", 1, {"c": [False, True], "d": [False, False]}),
    # Trajectory oracle: everything by trial 2.
    *rows("trajectory-oracle", 0, {"a": [True], "b": [False, True]}),
    *rows("trajectory-oracle", 1, {"c": [False, True], "d": [False, True]}),
    # A training branch (sample 1) never counts.
    {**rows("reflexion", 1, {"c": [False, True]})[1], "sample": 1},
]


def test_cumulative_success_by_seed() -> None:
    curves = success_by_trial(eval_episodes(LOG), 2)
    assert curves["reflexion"]["per_seed"] == {"0": [0.0, 0.5], "1": [0.0, 0.0]}
    assert curves["retroformer"]["per_seed"] == {"0": [0.5, 1.0], "1": [0.0, 0.5]}
    assert curves["trajectory-oracle"]["per_seed"] == {"0": [0.5, 1.0], "1": [0.0, 1.0]}


def test_table_means_spread_gap_and_usage() -> None:
    table = agent_table(LOG, trials=2)
    assert list(table["agents"]) == ["reflexion", "retroformer", "trajectory-oracle"]
    reflexion, retro = table["agents"]["reflexion"], table["agents"]["retroformer"]
    assert reflexion["success_by_trial"] == [0.0, 0.25]
    assert retro["success_by_trial"] == [0.25, 0.75]
    assert reflexion["spread"] == pytest.approx(0.25)  # finals 0.5 and 0.0
    assert retro["per_seed"] == {"0": 1.0, "1": 0.5} and retro["tasks"] == 4
    # (0.75 - 0.25) / (1.0 - 0.25)
    assert table["gap_closed"] == pytest.approx(2 / 3)
    # Retroformer played 7 trials over 4 tasks: 7 * (10 + 1) actor tokens, 3 reflections of 2.
    assert retro["actor_prompt_tokens_per_task"] == pytest.approx(70 / 4)
    assert retro["reflection_tokens_per_task"] == pytest.approx(6 / 4)
    assert table["seeds"] == [0, 1]
    text = format_agent_table(table)
    assert "gap closed" in text and "0.67" in text and "0.750" in text


def test_no_gap_without_the_three_agents_or_an_oracle_above_reflexion() -> None:
    only_two = [r for r in LOG if r["mode"] != "trajectory-oracle"]
    assert agent_table(only_two, trials=2)["gap_closed"] is None
    flat = [r for r in LOG if r["mode"] != "trajectory-oracle"]
    flat += [{**r, "mode": "trajectory-oracle"} for r in LOG if r["mode"] == "reflexion"]
    assert agent_table(flat, trials=2)["gap_closed"] is None
