"""The built-in environments: seeded, split, well-behaved, and built so that a reflection carrying
what a failed trial revealed helps the next trial more than a vague one, which helps more than none.

Pure Python, no Ray. The ordering of reflectors is tested through the real trial loop in
``test_envs_reward_reflections.py``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from retro_ray.envs.base import Task, Trajectory, split_of
from retro_ray.envs.builtin import HouseholdEnv, LookupEnv, ShopEnv
from retro_ray.envs.builtin.common import BuiltinEnv
from retro_ray.envs.registry import get_spec
from tests.support.episodes import play as play_actions

ENVS: dict[str, Callable[[], BuiltinEnv]] = {
    "lookup": LookupEnv,
    "household": HouseholdEnv,
    "shop": ShopEnv,
}
Policy = Callable[[BuiltinEnv, int], str]  # (env, step index) -> action


def play(env: BuiltinEnv, task: Task, policy: Policy, trial: int = 0) -> Trajectory:
    actions = (policy(env, step_index) for step_index in range(env.max_steps))
    return play_actions(env, task, actions, trial)


def scripted_policy(memory: list[str], seed: str) -> Policy:
    """The scripted actor seeded per step from (task, reflections), as the real trial loop does."""
    return lambda env, step: env.scripted_action(memory, random.Random(f"{seed}|step{step}"))


def success_rate(name: str, policy: Policy, n: int = 50) -> float:
    env = ENVS[name]()
    tasks = env.tasks("test", n)
    return sum(play(env, task, policy).won for task in tasks) / n


@pytest.mark.parametrize("name", sorted(ENVS))
def test_expert_always_wins_and_random_rarely(name: str) -> None:
    expert = success_rate(name, lambda env, step: env.expert_action())
    rng = random.Random(0)
    chance = success_rate(name, lambda env, step: env.random_action(rng))
    print(f"{name}: expert {expert:.2f}, random {chance:.2f}")
    assert expert == 1.0
    assert chance <= 0.25


@pytest.mark.parametrize("name", sorted(ENVS))
def test_no_reflection_repeats_the_same_trial(name: str) -> None:
    """A deterministic actor without reflections plays every trial the same way."""
    env = ENVS[name]()
    task = env.tasks("train", 1)[0]

    scripted = scripted_policy([], task.task_id)
    first, second = play(env, task, scripted), play(env, task, scripted, trial=1)
    assert [s.action for s in first.steps] == [s.action for s in second.steps]


@pytest.mark.parametrize("name", sorted(ENVS))
def test_same_task_id_same_instance_and_disjoint_splits(name: str) -> None:
    tasks = {split: ENVS[name]().tasks(split, 30) for split in ("train", "validation", "test")}
    ids = {split: {t.task_id for t in found} for split, found in tasks.items()}
    assert all(len(found) == 30 for found in ids.values())
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert all(split_of(t.task_id) == split for split, found in tasks.items() for t in found)
    assert ENVS[name]().tasks("test", 5, seed=1) != tasks["test"][:5]
    for task in tasks["test"][:10]:
        env_a, env_b = ENVS[name](), ENVS[name]()
        assert env_a.reset(task) == env_b.reset(task)
        assert env_a.ground_truth_reflection(task) == env_b.ground_truth_reflection(task)
        expert_a = play(env_a, task, lambda env, step: env.expert_action())
        expert_b = play(env_b, task, lambda env, step: env.expert_action())
        assert expert_a.render() == expert_b.render()


@pytest.mark.parametrize("name", sorted(ENVS))
def test_invalid_action_explains_and_counts(name: str) -> None:
    env = ENVS[name]()
    env.reset(env.tasks("test", 1)[0])
    result = env.step("dance wildly")
    assert result.observation.startswith("Invalid action.") and "Use" in result.observation
    assert result.reward == 0.0 and not result.done
    assert result.info == {"won": False, "score": 0.0, "steps": 1}


@pytest.mark.parametrize("name", sorted(ENVS))
def test_step_limit_ends_the_episode_lost(name: str) -> None:
    env = ENVS[name]()
    env.reset(env.tasks("test", 1)[0])
    results = [env.step("nonsense") for _ in range(env.max_steps)]
    assert [r.done for r in results] == [False] * (env.max_steps - 1) + [True]
    assert "Step limit reached." in results[-1].observation
    assert results[-1].info["won"] is False
    assert env.step("anything").done


@pytest.mark.parametrize("name", sorted(ENVS))
def test_rewards_sum_to_the_score(name: str) -> None:
    env = ENVS[name]()
    for task in env.tasks("test", 20):
        trajectory = play(env, task, scripted_policy([], task.task_id))
        assert sum(s.reward for s in trajectory.steps) == pytest.approx(trajectory.score)
        assert 0.0 <= trajectory.score <= 1.0


@pytest.mark.parametrize("name", sorted(ENVS))
def test_registered_with_documented_options(name: str) -> None:
    spec = get_spec(name)
    assert spec.options_cls is not None and spec.description
    env = spec.factory(spec.options_cls(max_steps=9))
    assert env.max_steps == 9 and env.name == name
    with pytest.raises(ValueError, match="max_steps"):
        spec.options_cls(max_steps=1).validate()


def test_trial_fits_a_small_context() -> None:
    """A whole expert trial stays short: tiny models with a small tokenizer train on these."""
    for name in ENVS:
        env = ENVS[name]()
        for task in env.tasks("test", 10):
            trajectory = play(env, task, lambda env, step: env.expert_action())
            text = trajectory.first_observation + "\n" + trajectory.render()
            assert len(text.split()) < 80, text


def test_reflections_read_back() -> None:
    """The scripted actor understands the oracle's and the ground truth's phrasing."""
    env = LookupEnv()
    task = env.tasks("test", 1)[0]
    env.reset(task)
    truth = env.ground_truth_reflection(task)
    trajectory = play(env, task, lambda env, step: env.scripted_action([truth], random.Random(0)))
    assert trajectory.won
    shop = ShopEnv()
    task = shop.tasks("test", 1)[0]
    shop.reset(task)
    assert "size" in shop.ground_truth_reflection(task).lower()


def test_named_looks_change_the_words_not_the_game() -> None:
    """``household``'s ``named_looks``: a look names its container ("In sofa 1 you see a key.");
    the scripted actor plays the same trials, and the oracle and misleading reflections read them
    the same way, as with the unnamed form."""
    from retro_ray.envs.builtin.household import HouseholdOptions

    plain, named = HouseholdEnv(), HouseholdEnv(HouseholdOptions(named_looks=True))
    looks = 0
    for task in plain.tasks("test", 40):
        memory: list[str] = []
        for trial in range(3):
            policy = scripted_policy(memory, f"{task.task_id}|{trial}")
            a, b = play(plain, task, policy, trial), play(named, task, policy, trial)
            assert [s.action for s in a.steps] == [s.action for s in b.steps]
            assert [s.reward for s in a.steps] == [s.reward for s in b.steps]
            for step_a, step_b in zip(a.steps, b.steps, strict=True):
                if step_a.observation.startswith("You see"):
                    container = step_a.action.split(" ", 1)[1]
                    held = step_a.observation.removeprefix("You see ")
                    assert step_b.observation == f"In {container} you see {held}"
                    looks += 1
            rng_a, rng_b = random.Random(trial), random.Random(trial)
            assert plain.misleading_reflection(a, rng_a) == named.misleading_reflection(b, rng_b)
            oracle = plain.trajectory_oracle(a, memory)
            assert oracle == named.trajectory_oracle(b, memory)
            memory.append(oracle)
    assert looks > 40
