"""The evaluation table's arithmetic, worked by hand on a small log."""

from __future__ import annotations

import pytest

from retro_ray.evaluation.success import eval_episodes, success_by_trial
from retro_ray.evaluation.table import agent_table, format_agent_table, paired_effect


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
    assert reflexion["spread"] == pytest.approx(0.5 / 2**0.5)  # sample stdev of 0.5 and 0.0
    lo, hi = reflexion["ci95"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0
    assert retro["per_seed"] == {"0": 1.0, "1": 0.5} and retro["tasks"] == 4
    # (0.75 - 0.25) / (1.0 - 0.25)
    assert table["gap_closed"] == pytest.approx(2 / 3)
    # Retroformer played 7 trials over 4 tasks: 7 * (10 + 1) actor tokens, 3 reflections of 2.
    assert retro["actor_prompt_tokens_per_task"] == pytest.approx(70 / 4)
    assert retro["reflection_tokens_per_task"] == pytest.approx(6 / 4)
    assert table["seeds"] == [0, 1]
    text = format_agent_table(table)
    assert "gap closed" in text and "0.67" in text and "0.750" in text
    assert table["diff"] == pytest.approx(0.5)
    assert table["diff_ci95"][0] <= 0.5 <= table["diff_ci95"][1]


def test_no_gap_without_the_three_agents_or_an_oracle_above_reflexion() -> None:
    only_two = [r for r in LOG if r["mode"] != "trajectory-oracle"]
    assert agent_table(only_two, trials=2)["gap_closed"] is None
    flat = [r for r in LOG if r["mode"] != "trajectory-oracle"]
    flat += [{**r, "mode": "trajectory-oracle"} for r in LOG if r["mode"] == "reflexion"]
    assert agent_table(flat, trials=2)["gap_closed"] is None


def test_each_agent_is_compared_at_its_better_decoding() -> None:
    log = [
        *rows("reflexion-greedy", 0, {"a": [False, True], "b": [False, False]}),
        *rows("reflexion-sampled", 0, {"a": [False, False], "b": [False, False]}),
        *rows("retroformer-greedy", 0, {"a": [False, False], "b": [False, False]}),
        *rows("retroformer-sampled", 0, {"a": [True], "b": [False, True]}),
        *rows("trajectory-oracle", 0, {"a": [True], "b": [True]}),
    ]
    table = agent_table(log, trials=2)
    assert table["best"] == {
        "reflexion": "reflexion-greedy",
        "retroformer": "retroformer-sampled",
        "trajectory-oracle": "trajectory-oracle",
    }
    assert table["agents"]["reflexion-greedy"]["decoding"] == "greedy"
    # Retroformer sampled (1.0) against Reflexion greedy (0.5), not against its weaker 0.0.
    assert table["diff"] == pytest.approx(0.5) and table["gap_closed"] == pytest.approx(1.0)
    assert table["compared"]["reflexion"] == "reflexion-greedy"
    # A tie goes to greedy.
    tied = [r for r in log if not r["mode"].startswith("reflexion-greedy")]
    tied += [{**r, "mode": "reflexion-greedy"} for r in log if r["mode"] == "reflexion-sampled"]
    assert agent_table(tied, trials=2)["best"]["reflexion"] == "reflexion-greedy"


def test_paired_effect_interval_covers_training_runs() -> None:
    units = [(0, f"t{i}") for i in range(40)]
    best = {"reflexion": "r", "retroformer": "t", "trajectory-oracle": "o"}

    def run(trained_solves: int) -> dict:
        return {
            "r": {u: float(i < 10) for i, u in enumerate(units)},
            "t": {u: float(i < trained_solves) for i, u in enumerate(units)},
            "o": {u: float(i < 30) for i, u in enumerate(units)},
        }

    # Three training runs that agree: a clear gain; the interval is above zero.
    steady = paired_effect({0: run(25), 1: run(25), 2: run(25)}, best)
    assert steady["diff"] == pytest.approx(15 / 40)
    assert steady["gap_closed"] == pytest.approx(15 / 20)
    assert 0 < steady["diff_ci95"][0] < steady["diff"] < steady["diff_ci95"][1]
    assert steady["training_runs"] == 3 and steady["tasks"] == 40
    # Runs that disagree (one learned nothing): the same mean task gain is far less certain.
    shaky = paired_effect({0: run(10), 1: run(30), 2: run(35)}, best)
    width = lambda e: e["diff_ci95"][1] - e["diff_ci95"][0]  # noqa: E731
    assert width(shaky) > width(steady)
    assert paired_effect({0: {"r": {}, "t": {}}}, best) is None


def scripted_config(tasks: int, trials: int = 2):
    from retro_ray.config import load_config

    return load_config(
        None,
        [
            "env.name=lookup",
            f"env.num_tasks={tasks}",
            f"trials.max_trials={trials}",
            "actor.policy=scripted",
        ],
    )


def test_rows_are_keyed_by_what_made_them(tmp_path) -> None:
    """A rerun reuses only episodes made the same way, and the table reads only the current
    task list: fewer tasks count fewer, more trials play afresh."""
    from retro_ray.evaluation.conditions import Condition
    from retro_ray.evaluation.play import evaluate

    conditions = [Condition("react"), Condition("trajectory-oracle")]

    def files() -> set:
        return set((tmp_path / "experience").rglob("part-*.parquet"))

    first = evaluate(scripted_config(6), conditions, [0], tmp_path, progress=False)
    assert first["agents"]["react"]["tasks"] == 6
    played = files()
    assert len(played) == 12
    fewer = evaluate(scripted_config(3), conditions, [0], tmp_path, progress=False)
    assert fewer["agents"]["react"]["tasks"] == 3 and files() == played  # reused, and only 3
    assert fewer["conditions"] == first["conditions"]
    longer = evaluate(scripted_config(3, trials=3), conditions, [0], tmp_path, progress=False)
    assert set(longer["conditions"].values()).isdisjoint(first["conditions"].values())
    assert len(files()) == 12 + 6 and longer["agents"]["react"]["tasks"] == 3
    assert len(longer["agents"]["react"]["success_by_trial"]) == 3


def test_a_mixtures_figures_split_by_family() -> None:
    """A mixture's rows carry each task's own family: the table of one family is the table of its
    rows alone, and ``benchmarks.learning_effect`` pairs the runs family by family."""
    from benchmarks.learning_effect import family_effect
    from retro_ray.evaluation.table import split_by_family

    shop = [{**r, "env": "shop", "task_id": "s" + r["task_id"]} for r in LOG]
    lookup = [{**r, "env": "lookup"} for r in rows("retroformer", 0, {"z": [False, False]})]
    families = split_by_family([*shop, *lookup])
    assert list(families) == ["lookup", "shop"]
    assert len(families["shop"]) == len(LOG)
    alone = agent_table(LOG, 2)
    part = agent_table(families["shop"], 2)
    assert part["agents"]["retroformer"]["success_by_trial"] == pytest.approx(
        alone["agents"]["retroformer"]["success_by_trial"]
    )
    effect = family_effect([part, part], [families["shop"], families["shop"]], 2)
    assert effect["diff"] == pytest.approx(alone["diff"])
    assert effect["per_run_last_trial"]["retroformer"] == [0.75, 0.75]
