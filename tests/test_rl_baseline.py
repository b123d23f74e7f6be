"""The RL baseline (issue 19): the token / Discrete wrapper (no Ray), the table row, and RLlib PPO
run for a few iterations on the tiny recipe's tokenizer."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from retro_ray.evaluation.table import format_agent_table, with_baseline
from retro_ray.report.curve import baseline_curve
from retro_ray.rl.actions import FAMILIES, check_options
from retro_ray.rl.token_env import MASKED_ACTION, TokenActionEnv

FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def tokenizer(zoo_tiny) -> str:
    return str(zoo_tiny.actor_dir)


def make(name: str, tokenizer: str, **extra) -> TokenActionEnv:
    return TokenActionEnv({"name": name, "tokenizer": tokenizer, "max_tokens": 96, **extra})


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_open_slot_is_an_action_the_env_parses(name: str, tokenizer: str) -> None:
    env = make(name, tokenizer)
    rng = random.Random(0)
    assert env.action_space.n == FAMILIES[name].layout.size
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            assert obs in env.observation_space
            open_slots = np.flatnonzero(obs["action_mask"])
            assert [env.slots[i] is not None for i in range(len(env.slots))] == list(
                obs["action_mask"].astype(bool)
            )
            obs, _, terminated, truncated, info = env.step(int(rng.choice(open_slots)))
            assert not env.log[-1][1].startswith("Invalid action"), env.log[-1]
            assert not info["masked"]
            done = terminated or truncated


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_masked_slot_is_a_wasted_step(name: str, tokenizer: str) -> None:
    env = make(name, tokenizer)
    obs, _ = env.reset(seed=3)
    closed = int(np.flatnonzero(obs["action_mask"] == 0)[0])
    _, reward, _, _, info = env.step(closed)
    assert info["masked"] and info["action"] == MASKED_ACTION and reward == 0.0
    assert env.log[-1][1].startswith("Invalid action")
    with pytest.raises(ValueError, match="outside Discrete"):
        env.step(env.action_space.n)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_slots_can_express_winning_play(name: str, tokenizer: str) -> None:
    """Play the expert's action when it is a slot, else slot 0 (a search that shows what the
    expert needs): every task is won, so the layout loses no solution."""
    env = make(name, tokenizer)
    tasks = env.tasks("train", 30)
    for task in tasks:
        env.reset(options={"task_id": task.task_id})
        done, info = False, {}
        while not done:
            expert = env.text_env.env.expert_action()  # type: ignore[attr-defined]
            index = env.slots.index(expert) if expert in env.slots else 0
            _, _, terminated, truncated, info = env.step(index)
            done = terminated or truncated
        assert info["won"], (task.task_id, env.log)


def test_tokens_are_the_zoo_tokenizers_ids_padded(tokenizer: str) -> None:
    env = make("lookup", tokenizer)
    obs, _ = env.reset(seed=0)
    ids = env.encoder.tokenizer.encode(env.first_observation, add_special_tokens=False).ids
    assert obs["tokens"][: len(ids)].tolist() == ids
    assert obs["tokens"].shape == (96,) and obs["tokens"][-1] == env.encoder.pad_id


def test_bad_input_names_the_fix(tokenizer: str) -> None:
    from retro_ray.envs.builtin.lookup import LookupOptions

    with pytest.raises(ValueError, match="name slots"):
        check_options("lookup", LookupOptions(n_candidates=6, hops=1))
    with pytest.raises(ValueError, match="no discrete action layout"):
        make("hotpotqa", tokenizer)
    with pytest.raises(ValueError, match="no tokenizer"):
        TokenActionEnv({"name": "lookup", "tokenizer": "/nonexistent"})


def _table(label: str, success: list[float], seeds: list[int]) -> dict:
    row = {"agent": label, "decoding": None, "success_by_trial": success, "ci95": [0.1, 0.9]}
    return {"agents": {label: {**row, "tasks": 10}}, "best": {label: label}, "seeds": seeds,
            "trials": len(success)}  # fmt: skip


def test_the_table_gains_the_rl_row_with_training_episodes() -> None:
    table = with_baseline(
        _table("react", [0.3, 0.3], [0]),
        {**_table("rl-ppo", [0.2, 0.4], [0]), "training_episodes": {"rl-ppo": 3321}},
        {"retroformer": 3320},
    )
    text = format_agent_table(table)
    line = next(x for x in text.splitlines() if x.startswith("RL (RLlib PPO)"))
    assert "0.400" in line and line.rstrip().endswith("3321")
    assert "train episodes" in text.splitlines()[0]
    with pytest.raises(ValueError, match="same trials"):
        with_baseline(_table("react", [0.3, 0.3], [0]), _table("rl-ppo", [0.2], [0]))


def test_baseline_curve_points() -> None:
    records = [
        {"episodes": 800, "success_by_trial": [0.1, 0.3]},
        {"episodes": 0, "success_by_trial": [0.0, 0.1]},
    ]
    assert baseline_curve(records) == [
        {"episodes": 0, "success": 0.1},
        {"episodes": 800, "success": 0.3},
    ]


def test_ppo_iterations_report_rllibs_policy_loss_and_mean_return(
    ray_cluster, tokenizer: str, tmp_path
) -> None:
    """A few PPO iterations through ``retro-ray rl-baseline``'s code: RLlib's own metrics (the
    learner's policy loss, the env runners' mean episode return) reach metrics.jsonl, the
    learning curve and the evaluation row are written, the RLlib checkpoint restores."""
    from ray.rllib.algorithms.algorithm import Algorithm

    from retro_ray.config import load_config
    from retro_ray.rl.ppo import run_rl_baseline

    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "run.name=rl",
            "env.name=lookup",
            "env.num_tasks=8",
            "trials.max_trials=2",
            "rl.episodes=60",
            "rl.eval_every=30",
            "rl.eval_seeds=1",
            f"rl.tokenizer={tokenizer}",
            "rl.max_tokens=96",
            "rl.num_env_runners=1",
            "rl.train_batch_size=128",
            "rl.minibatch_size=64",
            "rl.num_epochs=2",
            "rl.embed_dim=16",
            "rl.hidden=32",
        ],
    )
    summary = run_rl_baseline(cfg, log=lambda line: None)
    run_dir = tmp_path / "rl"
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) >= 2
    for record in metrics:
        assert math.isfinite(record["policy_loss"])
        assert record["episode_return_mean"] is not None
        assert 0.0 <= record["episode_return_mean"] <= 1.0
    assert metrics[-1]["episodes"] == summary["training_episodes"] >= 60
    curve = [json.loads(x) for x in (run_dir / "curve.jsonl").read_text().splitlines()]
    assert curve[0]["episodes"] == 0 and curve[-1]["episodes"] == summary["training_episodes"]
    assert len(curve) >= 3
    table = json.loads((run_dir / "eval" / "table.json").read_text())
    assert table["agents"]["rl-ppo"]["tasks"] == 8 and table["trials"] == 2
    assert table["training_episodes"] == {"rl-ppo": summary["training_episodes"]}
    restored = Algorithm.from_checkpoint(summary["checkpoint"])
    try:
        assert type(restored.get_module()).__name__ == "TokenPolicyModule"
    finally:
        restored.stop()


def test_report_draws_the_rl_curve_beside_retroformers(tmp_path) -> None:
    """``retro-ray report RUN --baseline RL_RUN``: the baseline's rows join the evaluation and
    its curve is drawn with Retroformer's (0 episodes: Reflexion; the training log's rows:
    Retroformer)."""
    from retro_ray.report import build_report
    from retro_ray.rollout.experience import ExperienceLog
    from tests.test_report import MAX_TRIALS, eval_row, write_eval, write_train

    run = tmp_path / "retro"
    write_train(run)
    write_eval(run)
    (run / "eval" / "table.json").write_text(json.dumps({"trials": MAX_TRIALS, "agents": {}}))
    rl = tmp_path / "rl"
    log = ExperienceLog(rl / "eval" / "experience")
    for seed in (0, 1):
        for i, solved_at in enumerate([1, None, 0, 2]):
            task = f"lookup-test-{seed}-{i}"
            played = MAX_TRIALS if solved_at is None else solved_at + 1
            rows = [eval_row("rl-ppo", task, k, k == solved_at) for k in range(played)]
            log.write_episode("eval-rl-ppo", seed, task, rows)
    table = {"trials": MAX_TRIALS, "seeds": [0, 1], "conditions": {"rl-ppo": "eval-rl-ppo"}}
    (rl / "eval" / "table.json").write_text(json.dumps(table))
    curve = [{"episodes": 0, "success_by_trial": [0.0, 0.1, 0.2]},
             {"episodes": 120, "success_by_trial": [0.2, 0.5, 0.75]}]  # fmt: skip
    (rl / "curve.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve))

    report = build_report(run, tmp_path / "out", baselines=[rl])
    agents = report["evaluation"]["agents"]
    assert agents["rl-ppo"]["mean"] == [0.25, 0.5, 0.75]
    curves = report["learning_curves"]
    train_rows = ExperienceLog(run / "experience").read(columns=["task_id"]).num_rows
    assert curves["retroformer"] == [
        {"episodes": 0, "success": agents["reflexion"]["mean"][-1]},
        {"episodes": train_rows, "success": agents["retroformer"]["mean"][-1]},
    ]
    assert curves["rl-ppo"][-1] == {"episodes": 120, "success": 0.75}
    assert (tmp_path / "out" / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "RL (RLlib PPO)" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.parametrize("seen", ["You see a cup.", "In sofa 1 you see a cup."])
def test_household_slots_read_both_forms_of_a_look(seen: str) -> None:
    """An object a look showed becomes a take slot, whether the look names its container
    (``named_looks``) or not."""
    from retro_ray.rl.actions import household_slots

    first = "You see sofa 1, desk 2. Task: put the key in the box."
    slots = household_slots(first, [("look sofa 1", seen)])
    assert "take cup" in slots and "put cup box" in slots
    assert "take cup" not in household_slots(first, [("look sofa 1", "You see nothing.")])
