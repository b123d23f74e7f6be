"""``mixture``: the three families as one environment, for one reflector trained across families.

Its tasks are the families' own tasks dealt out in turn; played through the real trial loop and
evaluation, each family's figures in the mixture's table equal those of the family played alone.
"""

from __future__ import annotations

import pytest

from retro_ray.config import ConfigError, load_config
from retro_ray.envs.builtin import HouseholdEnv, LookupEnv, MixtureEnv, MixtureOptions, ShopEnv
from retro_ray.envs.registry import make_env
from retro_ray.evaluation.conditions import Condition
from retro_ray.evaluation.play import evaluate
from retro_ray.evaluation.table import format_agent_table
from retro_ray.run_config import load_run_config


def test_tasks_are_each_familys_own_dealt_in_turn() -> None:
    env = make_env("mixture")
    tasks = env.tasks("test", 8, seed=3)
    assert [t.env for t in tasks] == ["lookup", "household", "shop"] * 2 + ["lookup", "household"]
    assert [t.task_id for t in tasks if t.env == "household"] == [
        t.task_id for t in HouseholdEnv().tasks("test", 3, seed=3)
    ]
    assert [t.task_id for t in tasks if t.env == "shop"] == [
        t.task_id for t in ShopEnv().tasks("test", 2, seed=3)
    ]
    assert all(t.split == "test" for t in tasks)
    assert env.tasks("test", 8, seed=3) == tasks  # deterministic


def test_each_call_goes_to_the_tasks_family() -> None:
    env = MixtureEnv(MixtureOptions(per_family={"household": {"n_containers": 9}}))
    lookup_task, household_task = env.tasks("train", 2)
    first = env.reset(household_task)
    assert first == make_env("household", {"n_containers": 9}).reset(household_task)
    assert env.max_steps == HouseholdEnv().max_steps
    assert env.expert_action().startswith("look")
    env.reset(lookup_task)
    assert env.max_steps == LookupEnv().max_steps
    nine = make_env("household", {"n_containers": 9})
    assert env.ground_truth_reflection(household_task) == nine.ground_truth_reflection(
        household_task
    )


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("families=[]", "at least one"),
        ("families=[lookup, lookup]", "twice"),
        ("families=[lookup, mixture]", "itself"),
        ("families=[lookup, nowhere]", "unknown environment"),
        ("per_family.shop.n_items=3", "not in families"),
        ("per_family.household.n_containers=99", "n_containers"),
        ("per_family.household.no_such_knob=1", "no_such_knob"),
    ],
)
def test_bad_options_name_the_problem_before_any_work(override: str, problem: str) -> None:
    # The shop case runs a mixture without shop; the others keep the default three families.
    without_shop = ["env.options.families=[lookup, household]"] if "shop" in override else []
    with pytest.raises(ConfigError, match=problem):
        load_run_config(None, ["env.name=mixture", *without_shop, f"env.options.{override}"])


def scripted(env: str, tasks: int) -> object:
    return load_config(
        None,
        [
            f"env.name={env}",
            f"env.num_tasks={tasks}",
            "env.seed=0",
            "actor.policy=scripted",
            "trials.max_trials=2",
        ],
    )


def test_mixture_table_by_family_equals_each_family_alone(tmp_path) -> None:
    """Through the real trial loop and evaluation: every family's row of the mixture's table is
    the table of that family played alone on the same tasks (its own step limit and oracle)."""
    conditions = [Condition("react"), Condition("trajectory-oracle")]
    mixed = evaluate(scripted("mixture", 18), conditions, [0], tmp_path / "mix", progress=False)
    assert list(mixed["families"]) == ["household", "lookup", "shop"]
    assert mixed["agents"]["react"]["tasks"] == 18
    for family in ("lookup", "household", "shop"):
        alone = evaluate(scripted(family, 6), conditions, [0], tmp_path / family, progress=False)
        part = mixed["families"][family]
        for label in ("react", "trajectory-oracle"):
            assert part["agents"][label]["tasks"] == 6
            assert part["agents"][label]["success_by_trial"] == pytest.approx(
                alone["agents"][label]["success_by_trial"]
            ), (family, label)
    oracle = [mixed["families"][f]["agents"]["trajectory-oracle"] for f in mixed["families"]]
    assert any(o["success_by_trial"][1] > o["success_by_trial"][0] for o in oracle)
    text = format_agent_table(mixed)
    assert "\nhousehold:\n" in text and "\nshop:\n" in text
