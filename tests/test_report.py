"""``retro-ray report``: numbers, figures and page from a run directory written with the real
experience-log writer. Every expected number below is worked out by hand from the episodes.

Evaluation (3 trials at most, 4 tasks per seed, seeds 0 and 1); ``solved_at`` is the 0-based trial
of the first win (None: never). Actor prompt tokens of trial k: 100 for ReAct, 100 + 200 k for the
reflecting agents (reflections in the prompt); completion 10 per trial; reflection tokens 50 + 5
per trial played with a reflection (k >= 1, not ReAct).

    agent         seed 0 solved_at   seed 1 solved_at   success by trial (seed 0 | seed 1)
    react         0, -, -, -         0, 0, -, -         .25 .25 .25 | .50 .50 .50
    reflexion     0, -, -, -         0, 0, -, -         .25 .25 .25 | .50 .50 .50
    retroformer   0, 1, 2, -         0, 0, 1, 1         .25 .50 .75 | .50 1.0 1.0
    traj-oracle   0, 1, 1, 1         0, 0, 1, 1         .25 1.0 1.0 | .50 1.0 1.0

Both reflectors lost trial 0 of five task draws: seed 0 tasks 1, 2, 3 and seed 1 tasks 2, 3; in
trial 1 Retroformer then won seed 0 task 1 and seed 1 tasks 2 and 3 (Reflexion won none).

Training (3 iterations x 2 tasks, 3 rows each: 18 trials): actor 100 prompt + 10 completion tokens
per trial, reflector 50 + 5 on the 12 trials played with a reflection; ``metrics.jsonl`` records
2 CPUs, summary.json 240 s of wall time. The registry (RUN_DIR/registry) is a real
``AdapterRegistry``: three versions; three gate decisions (retro@1 promoted, retro@2 rejected,
retro@3 passed in approval mode and approved by a person); then a rollback to retro@1.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import pytest

from retro_ray.cli import EXIT_CONFIG, main
from retro_ray.registry import AdapterRegistry
from retro_ray.report import build_report
from retro_ray.report.answer import cost_sentence, training_clause
from retro_ray.report.build import registry_root
from retro_ray.report.data import Prices, cost_per_point, eval_episodes, success_by_trial
from retro_ray.report.history import gate_decisions
from retro_ray.report.reflections import reflection_examples, trajectory_excerpt
from retro_ray.report.text import label, tokens, usd
from retro_ray.report.training_stats import training_cost
from retro_ray.rollout.experience import ExperienceLog, ExperienceRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
OUTCOMES = {  # agent -> seed -> solved_at per task
    "react": {0: [0, None, None, None], 1: [0, 0, None, None]},
    "reflexion": {0: [0, None, None, None], 1: [0, 0, None, None]},
    "retroformer": {0: [0, 1, 2, None], 1: [0, 0, 1, 1]},
    "trajectory-oracle": {0: [0, 1, 1, 1], 1: [0, 0, 1, 1]},
}
MAX_TRIALS = 3


TRAINED_ADVICE = "<i>Search</i> the other person & check the year"  # model output: escaped


def reflection_of(agent: str, task: str, trial: int) -> str | None:
    if agent == "react" or trial == 0:
        return None
    if agent.startswith("retroformer"):
        return f"{TRAINED_ADVICE} ({task}, after trial {trial})"
    return f"Be more careful ({task}, after trial {trial})"


def eval_row(agent: str, task: str, trial: int, won: bool) -> ExperienceRow:
    reflects = agent != "react" and trial > 0
    outcome = "Correct." if won else "Wrong answer."
    return ExperienceRow(
        task_id=task,
        split="test",
        env="lookup",
        mode=agent,
        trial=trial,
        sample=0,
        won=won,
        return_after=float(won),
        actor_prompt_tokens=100 + (200 * trial if agent != "react" else 0),
        actor_completion_tokens=10,
        reflection_prompt_tokens=50 if reflects else 0,
        reflection_completion_tokens=5 if reflects else 0,
        reflection=reflection_of(agent, task, trial),
        adapter_version=("retro@3" if agent.startswith("retroformer") else "retro@0")
        if reflects
        else None,
        trajectory=f"> Search[{task}]\n{task} was seen in trial {trial}.\n> Finish[x]\n{outcome}",
    )


def write_eval(run_dir: Path, outcomes: dict = OUTCOMES) -> None:
    log = ExperienceLog(run_dir / "eval" / "experience")
    for agent, seeds in outcomes.items():
        for seed, solved in seeds.items():
            for i, solved_at in enumerate(solved):
                task = f"lookup-test-{seed}-{i}"
                played = MAX_TRIALS if solved_at is None else solved_at + 1
                rows = [eval_row(agent, task, k, k == solved_at) for k in range(played)]
                log.write_episode(f"eval-{agent}", seed, task, rows)


TRAIN_REWARDS = {  # iteration -> rewards of the two reflection samples of tasks a and b
    0: ([0.0, 1.0], [0.0, 0.0]),
    1: ([1.0, 1.0], [1.0, -1.0]),
    2: ([1.0, 1.0], [1.0, 1.0]),
}
TRAIN_FINISH_S = {0: (30, 50), 1: (90, 110), 2: (150, 180)}  # seconds after T0, tasks a and b


def write_train(run_dir: Path) -> None:
    log = ExperienceLog(run_dir / "experience")
    for it, per_task in TRAIN_REWARDS.items():
        for name, rewards, finish in zip("ab", per_task, TRAIN_FINISH_S[it], strict=True):
            task = f"lookup-train-{it}-{name}"
            times = {"started_at": T0 + timedelta(seconds=60 * it)}
            times["finished_at"] = T0 + timedelta(seconds=finish)
            common = {"split": "train", "env": "lookup", "mode": "train", "task_id": task}
            common |= {"actor_prompt_tokens": 100, "actor_completion_tokens": 10}
            reflector = {"reflection_prompt_tokens": 50, "reflection_completion_tokens": 5}
            rows = [
                ExperienceRow(**common, trial=0, sample=0, won=False, return_after=0.5, **times)
            ]
            for sample, reward in enumerate(rewards):
                rows.append(
                    ExperienceRow(
                        **common,
                        trial=1,
                        sample=sample,
                        won=reward > 0,
                        return_before=0.5,
                        return_after=0.5 + reward / 2,
                        reward=reward,
                        adapter_version=f"retro@{it}",
                        **reflector,
                        **times,
                    )
                )
            log.write_episode("demo-run", it, task, rows)


GATE_RETURNS = (("retro@1", "retro@0", 0.4, 0.3), ("retro@2", "retro@1", 0.2, 0.4))
GATE_RETURNS += (("retro@3", "retro@1", 0.5, 0.4),)
MARGIN = 0.02


def write_metrics(run_dir: Path) -> None:
    records = [
        {"iteration": 0, "groups": 2, "collect_s": 50.0, "seconds": 55.0, "success_rate": 0.5},
        {"iteration": 1, "groups": 2, "collect_s": 50.0, "seconds": 60.0, "reward_mean": 0.5},
        {"iteration": 2, "groups": 2, "collect_s": 60.0, "seconds": 61.5, "version": 3},
    ]
    for record in records:
        record["cpus"] = 2
    # A gate decision the driver also kept in its record (the registry holds it: shown once),
    # and a gate timing, which is no decision.
    candidate, current, cand_return, cur_return = GATE_RETURNS[1]
    records[1]["gate"] = {"candidate": candidate, "current": current, "promote": False}
    records[1]["gate"] |= {"candidate_return": cand_return, "current_return": cur_return}
    records[2]["gate_s"] = 3.0
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def write_base_model(root: Path) -> Path:
    """The shapes a registry checks adapters against: a Llama ``config.json`` (hidden 8)."""
    root.mkdir(parents=True)
    config = {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2}
    config |= {"num_hidden_layers": 1, "model_type": "llama"}
    (root / "config.json").write_text(json.dumps(config))
    return root


def write_adapter(root: Path, seed: int) -> Path:
    """A rank-2 LoRA adapter of ``q_proj`` for ``write_base_model``'s model (safetensors)."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    (root / "adapter_config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": torch.randn(2, 8, generator=generator),
        f"{prefix}.lora_B.weight": torch.randn(8, 2, generator=generator),
    }
    save_file(tensors, str(root / "adapter_model.safetensors"))
    return root


def gate(
    registry: AdapterRegistry,
    decision: tuple[str, str, float, float],
    iteration: int,
    approver: str = "",
) -> None:
    """A gate run as the driver records it: the decision as a registry ``gate`` event and a
    line of RUN_DIR/gates.jsonl, then the alias moves on a pass (in approval mode: after a
    person approved)."""
    candidate, current, cand_return, cur_return = decision
    passed = cand_return >= cur_return - MARGIN
    outcome = ("pending" if approver else "promote") if passed else "reject"
    fields = {"promote": outcome == "promote", "candidate": candidate, "current": current}
    fields |= {"candidate_return": cand_return, "current_return": cur_return, "margin": MARGIN}
    fields |= {"reason": f"candidate {candidate} return {cand_return:.4f} vs {current}"}
    fields |= {"outcome": outcome, "candidate_tasks": 20, "current_tasks": 20}
    registry.record("gate", iteration=iteration, **fields)
    append_gate_log(registry.root.parent, {"iteration": iteration, **fields})
    if outcome == "pending":
        registry.request_promotion(candidate, reason=fields["reason"])
        registry.approve(candidate, by=approver, reason="read 20 of its reflections")
    elif outcome == "promote":
        registry.promote(candidate, reason=fields["reason"])


def append_gate_log(run_dir: Path, entry: dict) -> None:
    with (run_dir / "gates.jsonl").open("a") as f:
        f.write(json.dumps({**entry, "time": time.time()}) + "\n")


def write_registry(run_dir: Path, scratch: Path) -> AdapterRegistry:
    """RUN_DIR/registry (the default root) with the run's history, written by the registry."""
    registry = AdapterRegistry(
        run_dir / "registry", write_base_model(scratch / "base"), max_lora_rank=4, run="demo-run"
    )
    for seed in range(3):
        registry.publish(write_adapter(scratch / f"adapter{seed}", seed))
    gate(registry, GATE_RETURNS[0], iteration=0)
    gate(registry, GATE_RETURNS[1], iteration=1)
    gate(registry, GATE_RETURNS[2], iteration=2, approver="alice")
    error = "TimeoutError: validation took too long"
    append_gate_log(run_dir, {"iteration": 3, "outcome": "error", "error": error})
    registry.rollback(reason="customers saw worse answers")
    registry.record("promote", alias="prod", version=2, run="another-run", reason="not ours")
    return registry


def write_gate_episodes(run_dir: Path) -> None:
    """The gate's validation episodes: 4 in an experience log, 2 in an older results.jsonl."""
    log = ExperienceLog(run_dir / "gate" / "experience")
    for i in range(4):
        row = ExperienceRow(f"lookup-val-{i}", "validation", "lookup", "gate", 0, 0, True, 1.0)
        log.write_episode("gate-retro@3", 0, f"lookup-val-{i}", [row])
    (run_dir / "gate" / "retro_at_0").mkdir(parents=True)
    (run_dir / "gate" / "retro_at_0" / "results.jsonl").write_text('{"task_id": "a"}\n{}\n')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run") / "demo-run"
    write_train(root)
    write_eval(root)
    write_metrics(root)
    write_registry(root, tmp_path_factory.mktemp("adapters"))
    write_gate_episodes(root)
    (root / "eval" / "table.json").write_text(json.dumps({"trials": MAX_TRIALS, "agents": {}}))
    summary = {"run": "demo-run", "iterations": 3, "train_version": 3, "prod_version": 3}
    (root / "summary.json").write_text(json.dumps(summary | {"wall_time_s": 240.0}))
    return root


@pytest.fixture(scope="module")
def report(run_dir: Path) -> dict:
    return build_report(run_dir)


def test_success_by_trial_per_agent_and_seed(report: dict) -> None:
    evaluation = report["evaluation"]
    assert evaluation["trials"] == MAX_TRIALS and evaluation["baseline"] == "react"
    agents = evaluation["agents"]
    assert list(agents) == ["react", "reflexion", "retroformer", "trajectory-oracle"]
    retro = agents["retroformer"]
    assert retro["per_seed"] == {"0": [0.25, 0.5, 0.75], "1": [0.5, 1.0, 1.0]}
    assert retro["mean"] == [0.375, 0.75, 0.875]
    assert retro["std"] == [0.125, 0.25, 0.125]  # population std over the two seeds
    assert retro["spread"] == 0.125 and retro["seeds"] == [0, 1]
    assert retro["tasks_per_seed"] == {"0": 4, "1": 4}
    assert agents["react"]["mean"] == [0.375] * 3 and agents["react"]["spread"] == 0.125
    # The oracle never plays a third trial, yet its curve reaches trial 3: solved stays solved.
    oracle = agents["trajectory-oracle"]
    assert oracle["mean"] == [0.375, 1.0, 1.0] and oracle["std"] == [0.125, 0.0, 0.0]


def test_tokens_per_task(report: dict) -> None:
    tokens = report["evaluation"]["tokens_per_task"]
    # ReAct: seed 0 plays 1+3+3+3 = 10 trials, seed 1 1+1+3+3 = 8; 100 prompt + 10 completion.
    assert tokens["react"]["actor_prompt"] == (1000 / 4 + 800 / 4) / 2 == 225.0
    assert tokens["react"]["actor_completion"] == 22.5 and tokens["react"]["actor"] == 247.5
    assert tokens["react"]["reflection"] == 0.0 and tokens["react"]["trials"] == 2.25
    # Retroformer seed 0: 100 + (100+300) + 900 + 900 = 2300; seed 1: 100+100+400+400 = 1000.
    retro = tokens["retroformer"]
    assert retro["actor_prompt"] == (2300 / 4 + 1000 / 4) / 2 == 412.5
    assert retro["actor_completion"] == 18.75 and retro["actor"] == 431.25
    # Played with a reflection: seed 0 1+2+2 = 5 trials, seed 1 1+1 = 2; 55 tokens each.
    assert retro["reflection"] == (5 * 55 / 4 + 2 * 55 / 4) / 2 == 48.125
    assert tokens["reflexion"]["actor"] == (2800 / 4 + 2000 / 4) / 2 + 22.5 == 622.5


def test_tokens_and_dollars_per_point_gained_count_actor_and_reflector(report: dict) -> None:
    cost = report["evaluation"]["cost"]
    assert list(cost) == ["reflexion", "retroformer"]
    retro = cost["retroformer"]
    assert retro["gain_points"] == 50.0  # 87.5 % - 37.5 % at trial 3
    assert retro["extra_actor_tokens_per_task"] == 431.25 - 247.5 == 183.75
    assert retro["extra_prompt_tokens_per_task"] == 187.5
    assert retro["extra_completion_tokens_per_task"] == -3.75
    # Reflector: 50 + 5 tokens on 5 (seed 0) and 2 (seed 1) trials of 4 tasks; ReAct none.
    assert retro["extra_reflection_prompt_tokens_per_task"] == (250 / 4 + 100 / 4) / 2 == 43.75
    assert retro["extra_reflection_completion_tokens_per_task"] == 4.375
    assert retro["extra_reflection_tokens_per_task"] == 48.125
    assert retro["extra_tokens_per_task"] == 183.75 + 48.125 == 231.875
    assert retro["tokens_per_point"] == 231.875 / 50 and retro["actor_tokens_per_point"] == 3.675
    actor_usd = (187.5 * 0.15 - 3.75 * 0.60) / 1e6  # default prices, USD per million tokens
    reflector_usd = (43.75 * 0.15 + 4.375 * 0.60) / 1e6  # reflector prices default to actor's
    assert retro["extra_actor_cost_per_task_usd"] == pytest.approx(actor_usd, rel=1e-12)
    assert retro["extra_reflector_cost_per_task_usd"] == pytest.approx(reflector_usd, rel=1e-12)
    extra_cost = actor_usd + reflector_usd
    assert retro["extra_cost_per_task_usd"] == pytest.approx(extra_cost, rel=1e-12)
    assert retro["cost_per_point_per_1k_tasks_usd"] == pytest.approx(
        1000 * extra_cost / 50, rel=1e-12
    )
    # Reflexion spends 375 more actor and 68.75 more reflector tokens for the same success.
    reflexion = cost["reflexion"]
    assert reflexion["gain_points"] == 0.0 and reflexion["no_gain"]
    assert reflexion["tokens_per_point"] is None
    assert reflexion["cost_per_point_per_1k_tasks_usd"] is None
    assert reflexion["extra_actor_tokens_per_task"] == 375.0
    assert reflexion["extra_tokens_per_task"] == 375.0 + (6 * 55 / 4 + 4 * 55 / 4) / 2
    answer = report["answer"]
    assert answer.startswith("At trial 3, against ReAct, counting actor and reflector tokens:")
    assert (
        "Retroformer gains 50.0 points for 232 extra tokens per task (+184 actor, +48 reflector)"
        in answer
    )
    assert f"i.e. {tokens(231.875 / 50)} tokens per point" in answer
    assert f"or {usd(1000 * extra_cost / 50)} per point per 1,000 tasks" in answer
    assert "Reflexion shows no gain over ReAct (+0.0 points)" in answer


def test_the_training_run_is_counted_once(report: dict) -> None:
    cost = report["training"]["cost"]
    assert (cost["episodes"], cost["trials"], cost["iterations"]) == (6, 18, 3)
    assert cost["gate_episodes"] == 6  # 4 Parquet episodes + 2 results.jsonl lines
    assert cost["wall_time_s"] == 240.0 and cost["wall_time_source"] == "summary.json wall_time_s"
    assert cost["cpus"] == 2 and cost["core_hours"] == pytest.approx(240 / 3600 * 2)
    assert (cost["actor_tokens"], cost["reflection_tokens"]) == (18 * 110, 12 * 55)
    actor_usd = (1800 * 0.15 + 180 * 0.60) / 1e6
    reflector_usd = (600 * 0.15 + 60 * 0.60) / 1e6
    assert cost["actor_cost_usd"] == pytest.approx(actor_usd, rel=1e-12)
    assert cost["token_cost_usd"] == pytest.approx(actor_usd + reflector_usd, rel=1e-12)
    assert report["answer"].endswith(
        "Training the adapter cost once: 6 episodes (18 trials), plus 6 validation episodes "
        "played by the promotion gate, 4.0 min of wall time on 2 CPUs (0.133 core-hours), and "
        f"2,640 actor and reflector tokens ({usd(actor_usd + reflector_usd)})."
    )


def test_training_cost_without_a_summary_or_cpu_count() -> None:
    metrics = [{"iteration": 0, "seconds": 30.0}, {"iteration": 1, "seconds": 42.0}]
    rows = [{"iteration": 0, "task_id": "t", "actor_prompt_tokens": 7}]
    cost = training_cost(rows, metrics, {"wall_time_s": 50.0}, Prices())
    # A resumed run: its summary covers the last process only, the iterations add up to more.
    assert (
        cost["wall_time_s"] == 72.0 and cost["wall_time_source"] == "sum of metrics.jsonl seconds"
    )
    assert cost["cpus"] is None and cost["core_hours"] is None
    assert "core-hours unknown: the run did not record its CPU count" in training_clause(cost)
    assert training_cost([], [], None, Prices()) is None
    assert "one-off training cost is not counted" in training_clause(None)


def test_cost_per_point_negative_gain_and_cheaper_agent() -> None:
    base = {"actor_prompt": 100.0, "actor_completion": 10.0, "actor": 110.0}
    base |= {"reflection_prompt": 0.0, "reflection_completion": 0.0, "reflection": 0.0}
    more = {"actor_prompt": 300.0, "actor_completion": 20.0, "actor": 320.0}
    more |= {"reflection_prompt": 8.0, "reflection_completion": 1.0, "reflection": 9.0}
    worse = cost_per_point(0.40, 0.50, more, base, Prices())
    assert worse["gain_points"] == pytest.approx(-10.0) and worse["no_gain"]
    assert worse["tokens_per_point"] is None
    better = cost_per_point(0.70, 0.50, more, base, Prices(1.0, 2.0, 10.0, 20.0))
    assert better["gain_points"] == pytest.approx(20.0)
    assert better["tokens_per_point"] == pytest.approx(219 / 20)
    assert better["actor_tokens_per_point"] == pytest.approx(210 / 20)
    extra = (200 * 1.0 + 10 * 2.0 + 8 * 10.0 + 1 * 20.0) / 1e6
    assert better["extra_cost_per_task_usd"] == pytest.approx(extra)
    assert better["cost_per_point_per_1k_tasks_usd"] == pytest.approx(1000 * extra / 20)
    cheaper = cost_per_point(0.70, 0.50, base, more, Prices())
    assert cheaper["tokens_per_point"] == pytest.approx(-219 / 20)


def test_prices_name_the_bad_flag() -> None:
    assert Prices(1.0, 2.0).reflector_prompt == 1.0 and Prices(1.0, 2.0).reflector_completion == 2.0
    assert Prices(1.0, 2.0).as_dict()["reflector_prices_default_to_actor"]
    assert not Prices(1.0, 2.0, 0.0).as_dict()["reflector_prices_default_to_actor"]
    with pytest.raises(ValueError, match="--price-reflector-completion: bad price -1"):
        Prices(reflector_completion_per_mtok=-1)
    with pytest.raises(ValueError, match="--price-prompt: bad price nan"):
        Prices(float("nan"))


def test_the_answer_for_free_points_and_a_cheaper_token_mix() -> None:
    zero = {"reflection_prompt": 0.0, "reflection_completion": 0.0, "reflection": 0.0}
    base = {"actor_prompt": 100.0, "actor_completion": 10.0, "actor": 110.0, **zero}
    # More prompt tokens (cheap) but fewer completion tokens (dear): more tokens, less money.
    mix = {"actor_prompt": 125.0, "actor_completion": 0.0, "actor": 125.0}
    mix |= {"reflection_prompt": 5.0, "reflection_completion": 0.0, "reflection": 5.0}
    fewer = {"actor_prompt": 90.0, "actor_completion": 10.0, "actor": 100.0}
    fewer |= {"reflection_prompt": 4.0, "reflection_completion": 1.0, "reflection": 5.0}
    evaluation = {
        "baseline": "react",
        "trials": 2,
        "agents": {},
        "cost": {
            "reflexion": cost_per_point(0.6, 0.5, mix, base, Prices()),
            "retroformer": cost_per_point(0.7, 0.5, fewer, base, Prices()),
        },
    }
    answer = cost_sentence(evaluation)
    saved = usd(-1000 * (30 * 0.15 - 10 * 0.60) / 1e6)
    assert saved == "$0.00150"
    assert (
        "Reflexion gains 10.0 points for 20 extra tokens per task (+15 actor, +5 reflector), "
        "i.e. 2.00 tokens per point" in answer
    )
    assert f"at no extra cost at the assumed prices (its cheaper token mix saves {saved}" in answer
    assert (
        "Retroformer gains 20.0 points while using 5 fewer tokens per task (-10 actor, "
        "+5 reflector; no extra cost)" in answer
    )
    assert usd(0.000517) == "$0.000517" and usd(-12.3456) == "-$12.35" and usd(1234.4) == "$1,234"
    assert (
        tokens(3.675) in ("3.67", "3.68") and tokens(0.4412) == "0.441" and tokens(1234) == "1,234"
    )


def test_an_unsolved_task_that_stopped_early_stays_unsolved() -> None:
    rows = [  # ReAct played one trial of t1 (lost), three of t2 (won at the third)
        {"mode": "react", "iteration": 0, "task_id": "t1", "trial": 0, "won": False},
        {"mode": "react", "iteration": 0, "task_id": "t2", "trial": 0, "won": False},
        {"mode": "react", "iteration": 0, "task_id": "t2", "trial": 1, "won": False},
        {"mode": "react", "iteration": 0, "task_id": "t2", "trial": 2, "won": True},
    ]
    success = success_by_trial(eval_episodes(rows))
    assert success["react"]["mean"] == [0.0, 0.0, 0.5]
    # A branch (sample 1) is not the main chain; the curve extends to the configured trials.
    branch = {"mode": "react", "iteration": 0, "task_id": "t1", "trial": 1, "won": True}
    success = success_by_trial(eval_episodes([*rows, {**branch, "sample": 1}]), n_trials=4)
    assert success["react"]["mean"] == [0.0, 0.0, 0.5, 0.5]


def test_training_reward_throughput_and_seconds(report: dict) -> None:
    training = report["training"]
    reward = training["reward_by_iteration"]
    assert [r["iteration"] for r in reward] == [0, 1, 2] and [r["n"] for r in reward] == [4] * 3
    # Iteration 0: rewards 0, 1, 0, 0 -> mean 1/4, sample std 1/2, standard error 1/2 / 2.
    assert reward[0]["mean"] == 0.25 and reward[0]["sem"] == pytest.approx(0.25)
    assert reward[0]["positive_share"] == 0.25 and reward[0]["negative_share"] == 0.0
    # Iteration 1: 1, 1, 1, -1 -> mean 1/2, sample std 1, standard error 1/2.
    assert reward[1]["mean"] == 0.5 and reward[1]["sem"] == pytest.approx(0.5)
    assert reward[1]["positive_share"] == 0.75 and reward[1]["negative_share"] == 0.25
    assert reward[2]["mean"] == 1.0 and reward[2]["sem"] == 0.0
    tp = training["throughput"]
    # 6 episodes (18 trials) from 0 s to 180 s: 2 episodes and 6 trials per minute.
    assert tp["span_s"] == 180.0 and tp["bin_s"] == 5 and len(tp["minutes"]) == 36
    assert tp["mean_episodes_per_min"] == 2.0 and tp["mean_trials_per_min"] == 6.0
    assert tp["episodes_per_min"][6] == 12.0 and tp["trials_per_min"][6] == 36.0  # a at 30 s
    assert tp["episodes_per_min"][35] == 12.0  # the last finish (180 s) is in the last bin
    assert sum(tp["episodes_per_min"]) * 5 / 60 == pytest.approx(6)
    assert [(r["episodes"], r["trials"], r["span_s"]) for r in tp["per_iteration"]] == [
        (2, 6, 50.0),
        (2, 6, 50.0),
        (2, 6, 60.0),
    ]
    assert [r["other_s"] for r in training["iteration_seconds"]] == [5.0, 10.0, 1.5]


def test_figures_are_valid_pngs(report: dict, run_dir: Path) -> None:
    out = run_dir / "report"
    assert report["out_dir"] == str(out.resolve())
    assert set(report["figures"]) == {"success_by_trial", "cost", "reflection_reward", "throughput"}
    for name in report["figures"].values():
        path = out / name
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        height, width, channels = matplotlib.image.imread(path).shape
        assert height > 300 and width > 500 and channels in (3, 4)


def test_page_and_json(report: dict, run_dir: Path) -> None:
    out = run_dir / "report"
    page = (out / "index.html").read_text()
    assert report["index_html"] == str((out / "index.html").resolve())
    assert "<title>retro-ray report: demo-run</title>" in page
    for name in ("success_by_trial", "cost", "reflection_reward", "throughput"):
        assert f'<img src="{name}.png"' in page
    assert "87.5 <span class='sd'>± 12.5</span>" in page  # Retroformer, trial 3
    per_point = tokens(report["evaluation"]["cost"]["retroformer"]["tokens_per_point"])
    assert f"<td>+50.0</td><td>431</td><td>48</td><td>+232</td><td>{per_point}</td>" in page
    assert (
        usd(report["evaluation"]["cost"]["retroformer"]["cost_per_point_per_1k_tasks_usd"]) in page
    )
    assert "<td>no gain</td>" in page
    assert "$0.15 per million prompt tokens" in page and "$0.60 per million completion" in page
    assert "Actor, set with <code>--price-prompt/--price-completion</code>" in page
    assert (
        "Reflector, set with <code>--price-reflector-prompt/--price-reflector-completion</code>"
        in page
    )
    assert "by default the actor's prices" in page
    assert "Training the adapter cost once: 6 episodes (18 trials)" in page
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))


def test_cli_prints_the_page_or_the_json(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "custom"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str((out / "index.html").resolve())
    args = ["report", str(run_dir), "--out", str(out), "--json", "--price-prompt", "1"]
    assert main([*args, "--price-completion", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prices"]["prompt_per_mtok"] == 1.0
    assert printed["prices"]["reflector_prompt_per_mtok"] == 1.0  # the actor's, by default
    assert printed["prices"]["reflector_completion_per_mtok"] == 2.0
    retro = printed["evaluation"]["cost"]["retroformer"]
    actor = (187.5 - 3.75 * 2) / 1e6
    assert retro["extra_cost_per_task_usd"] == pytest.approx(actor + (43.75 + 4.375 * 2) / 1e6)
    reflector = ["--price-reflector-prompt", "3", "--price-reflector-completion", "4"]
    assert main([*args, "--price-completion", "2", *reflector]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert not printed["prices"]["reflector_prices_default_to_actor"]
    retro = printed["evaluation"]["cost"]["retroformer"]
    assert retro["extra_reflector_cost_per_task_usd"] == pytest.approx(
        (43.75 * 3 + 4.375 * 4) / 1e6
    )
    assert main([*args, "--price-reflector-prompt", "-1"]) == EXIT_CONFIG
    assert "--price-reflector-prompt: bad price -1" in capsys.readouterr().err


def test_without_evaluation_the_page_says_how_to_run_one(tmp_path: Path) -> None:
    run = tmp_path / "train-only"
    write_train(run)
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "cost.png").write_bytes(b"old")
    report = build_report(run, tmp_path / "stale")
    assert report["evaluation"] is None and report["run"] == "demo-run"  # the log's only run
    assert set(report["figures"]) == {"reflection_reward", "throughput"}
    assert not (tmp_path / "stale" / "cost.png").exists()
    assert "No evaluation was run" in report["answer"]
    assert f"retro-ray eval --run {run}" in report["answer"]
    page = (tmp_path / "stale" / "index.html").read_text()
    assert "No evaluation was run" in page and "success_by_trial.png" not in page


def test_run_name_is_escaped(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    write_metrics(run)
    (run / "summary.json").write_text(json.dumps({"run": "<b>x</b>", "iterations": 3}))
    report = build_report(run)
    assert set(report["figures"]) == {"throughput"}  # metrics.jsonl alone: seconds per iteration
    page = Path(report["index_html"]).read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


def test_cli_errors_for_an_empty_or_missing_run_dir(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err
    assert "no log to report on" in err and "retro-ray train" in err
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"run directory {missing} does not exist" in err
    assert not (tmp_path / "report").exists()  # nothing written for an empty run directory


EXAMPLE_ORDER = [  # different trial-2 outcomes first, then the rest; each by task id
    (0, "lookup-test-0-1"),
    (1, "lookup-test-1-2"),
    (1, "lookup-test-1-3"),
    (0, "lookup-test-0-2"),
    (0, "lookup-test-0-3"),
]


def test_base_and_trained_reflections_side_by_side(report: dict, run_dir: Path) -> None:
    examples = report["examples"]
    assert (examples["base_agent"], examples["trained_agent"]) == ("reflexion", "retroformer")
    assert (examples["eligible"], examples["differing"]) == (5, 3)
    assert [(e["seed"], e["task_id"]) for e in examples["examples"]] == EXAMPLE_ORDER
    first = examples["examples"][0]
    assert first["differs"] and first["base"]["won"] is False and first["trained"]["won"] is True
    assert first["trained"]["return"] == 1.0 and first["base"]["return"] == 0.0
    assert first["trained"]["adapter_version"] == "retro@3"
    assert first["trained"]["reflection"] == f"{TRAINED_ADVICE} (lookup-test-0-1, after trial 1)"
    assert first["base"]["reflection"] == "Be more careful (lookup-test-0-1, after trial 1)"
    # The excerpt keeps the actions and the outcome, not the observations in between.
    assert first["trained"]["excerpt"] == "> Search[lookup-test-0-1]\n> Finish[x]\nCorrect."
    assert first["base"]["failed_excerpt"].endswith("> Finish[x]\nWrong answer.")
    assert not examples["examples"][3]["differs"]
    page = (run_dir / "report" / "index.html").read_text()
    assert "What was learned" in page and "5 such task draws, 3 with different outcomes" in page
    assert "&lt;i&gt;Search&lt;/i&gt; the other person &amp; check the year" in page
    assert TRAINED_ADVICE not in page  # model output never reaches the page unescaped
    assert "Retroformer: trained adapter <code>retro@3</code>" in page


def test_examples_are_deterministic_and_limited() -> None:
    rows = []
    for agent, outcomes in (
        ("reflexion", (False, False, True)),
        ("retroformer", (True, False, True)),
    ):
        for task, won in zip(("t3", "t1", "t2"), outcomes, strict=True):
            rows.append({"mode": agent, "iteration": 0, "task_id": task, "trial": 0, "won": False})
            rows.append(
                {"mode": agent, "iteration": 0, "task_id": task, "trial": 1, "won": won}
                | {"return_after": float(won), "reflection": f"{agent} on {task}"}
            )
    # A task Reflexion won at trial 0 has nothing to reflect on; a branch is not the main chain.
    rows.append({"mode": "reflexion", "iteration": 0, "task_id": "t0", "trial": 0, "won": True})
    rows.append({"mode": "retroformer", "iteration": 0, "task_id": "t0", "trial": 0, "won": False})
    rows.append({"mode": "retroformer", "iteration": 0, "task_id": "t0", "trial": 1, "won": True})
    branch = {"mode": "retroformer", "iteration": 0, "task_id": "t1", "trial": 1, "sample": 1}
    rows.append(branch | {"won": True, "return_after": 1.0})
    for r in rows:
        r.setdefault("return_after", 0.0)
    picked = reflection_examples(rows, "reflexion", "retroformer", limit=2)
    assert picked["eligible"] == 3 and picked["differing"] == 1
    assert [e["task_id"] for e in picked["examples"]] == ["t3", "t1"]
    assert picked["examples"][1]["trained"]["won"] is False  # sample 0, not the branch
    assert picked == reflection_examples(list(reversed(rows)), "reflexion", "retroformer", limit=2)


def test_trajectory_excerpt_keeps_the_start_and_the_end() -> None:
    long = "\n".join([*(f"> step {i:02d}\nobservation {i}" for i in range(40)), "Correct."])
    text = trajectory_excerpt(long, max_chars=60)
    assert len(text) <= 60 and text.startswith("> step 00\n") and text.endswith("\nCorrect.")
    assert "\n…\n" in text and "observation" not in text
    assert trajectory_excerpt("x" * 100, max_chars=10) == "x" * 9 + "…"
    assert trajectory_excerpt(None) == "" and trajectory_excerpt("> a\nb") == "> a\nb"


def test_gate_decisions_and_registry_history(report: dict, run_dir: Path) -> None:
    registry = report["registry"]
    assert registry["root"] == str(run_dir / "registry") and registry["found"]
    assert registry["published_versions"] == [1, 2, 3]
    gates = registry["gate"]
    assert [(g["iteration"], g["candidate"], g["current"], g["outcome"]) for g in gates] == [
        (0, "retro@1", "retro@0", "promote"),
        (1, "retro@2", "retro@1", "reject"),
        (2, "retro@3", "retro@1", "pending"),  # approval mode
        (3, None, None, "error"),  # the gate raised: only the driver's log has it
    ]
    # Each decision once, although gates.jsonl, events.jsonl and metrics.jsonl all hold #1.
    assert {g["source"] for g in gates} == {"gates.jsonl"}
    assert gates[1]["candidate_return"] == 0.2 and gates[1]["margin"] == MARGIN
    assert gates[1]["other"]["candidate_tasks"] == 20
    assert gates[3]["reason"] == "TimeoutError: validation took too long"
    events = [(e["event"], e["version"], e["previous"]) for e in registry["events"]]
    assert events[:2] == [("promote", 1, None), ("pending", 3, None)]
    assert events[2:] == [("approve", 3, 1), ("rollback", 1, 3)]
    approval = registry["events"][2]
    assert approval["by"] == "alice" and approval["reason"] == "read 20 of its reflections"
    assert approval["other"]["gate_reason"].startswith("candidate retro@3 return 0.5000")
    assert registry["other_runs"] == 1
    assert any("1 events of other runs left out" in n for n in report["notes"])
    page = (run_dir / "report" / "index.html").read_text()
    assert "Promotion gate and registry history" in page and "3 versions published" in page
    assert page.count("<td>keep current</td>") == 1  # the gate's one rejection
    assert "<td>wait for approval</td>" in page and "<td>error</td>" in page
    assert "<td>approve</td><td>prod</td><td>3</td><td>1</td><td>alice</td>" in page
    assert "<td>rollback</td><td>prod</td><td>1</td><td>3</td>" in page  # event, alias, to, from
    assert "customers saw worse answers" in page and "not ours" not in page


def test_gate_decisions_from_metrics_alone_and_torn_event_lines(tmp_path: Path) -> None:
    metrics = [
        {"iteration": 1, "gate": {"candidate": "retro@2", "current": "retro@0", "promote": True}},
        {"iteration": 2, "gate_candidate": "retro@3", "gate_current": "retro@2"}
        | {"gate_promote": False, "gate_reason": "worse"},
        {"iteration": 3, "gate_s": 4.0},
    ]
    gates = gate_decisions(metrics, [])
    assert [(g["iteration"], g["candidate"], g["promote"]) for g in gates] == [
        (1, "retro@2", True),
        (2, "retro@3", False),
    ]
    run = tmp_path / "run"
    run.mkdir()
    write_metrics(run)
    root = tmp_path / "elsewhere"
    root.mkdir()
    line = {"time": 1.0, "event": "rollback", "alias": "prod", "version": 1, "previous": 2}
    (root / "events.jsonl").write_text(json.dumps(line) + '\n{"time": 2.0, "event": "prom')
    (run / "config.json").write_text(json.dumps({"registry": {"root": str(root)}}))
    assert registry_root(run, json.loads((run / "config.json").read_text())) == root
    report = build_report(run)
    assert [e["event"] for e in report["registry"]["events"]] == ["rollback"]
    # An event the registry's reader cannot take (no version) is shown from the raw lines.
    with (root / "events.jsonl").open("a") as f:
        f.write('\n{"time": 3.0, "event": "approve", "version": "x", "by": "bob"}\n')
    report = build_report(run)
    assert [(e["event"], e["by"]) for e in report["registry"]["events"]] == [
        ("rollback", None),
        ("approve", "bob"),
    ]
    assert any("its events read line by line" in n for n in report["notes"])
    assert report["registry"]["events"][0]["time"] == "1970-01-01T00:00:01+00:00"
    assert any("line 2 is not a JSON object; skipped" in n for n in report["notes"])
    assert [g["candidate"] for g in report["registry"]["gate"]] == ["retro@2"]  # metrics.jsonl


DECODINGS = {  # label -> seed 0 solved_at per task: the sampled Reflexion and greedy Retroformer win
    "react": {0: [0, None, None, None]},
    "reflexion-greedy": {0: [0, None, None, None]},
    "reflexion-sampled": {0: [0, 1, None, None]},
    "retroformer-greedy": {0: [0, 1, 1, 2]},
    "retroformer-sampled": {0: [0, 1, None, None]},
}


def test_agents_evaluated_with_two_decodings(tmp_path: Path) -> None:
    run = tmp_path / "decodings"
    write_eval(run, DECODINGS)
    report = build_report(run)
    evaluation = report["evaluation"]
    assert list(evaluation["agents"]) == list(DECODINGS)
    assert evaluation["baseline"] == "react"
    assert evaluation["best"]["reflexion"] == "reflexion-sampled"
    assert evaluation["best"]["retroformer"] == "retroformer-greedy"
    assert list(evaluation["cost"]) == list(DECODINGS)[1:]  # every decoding in the table
    answer = report["answer"]
    assert "Reflexion (sampled) gains 25.0 points" in answer
    assert "Retroformer (greedy) gains 75.0 points" in answer
    assert "(greedy) shows" not in answer and "Retroformer (sampled)" not in answer
    examples = report["examples"]
    assert (examples["base_agent"], examples["trained_agent"]) == (
        "reflexion-sampled",
        "retroformer-greedy",
    )
    assert [e["task_id"] for e in examples["examples"]][:1] == ["lookup-test-0-2"]
    page = Path(report["index_html"]).read_text()
    assert "<td>Reflexion (greedy)</td>" in page and "<td>Retroformer (sampled)</td>" in page
    assert label("trajectory-oracle-greedy") == "trajectory oracle (greedy)"
    assert report["training"]["cost"] is None and report["registry"]["found"] is False


def test_the_driver_records_the_cpus_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    from retro_ray.driver.train import cluster_cpus

    # A local run counts this machine's cores, not the logical CPUs its local Ray declares.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_cpus() == os.cpu_count()


def test_only_the_partitions_of_the_last_table_are_read(tmp_path: Path) -> None:
    """An evaluation log keeps an older adapter's episodes under the same label (another
    partition key); the report reads the partitions table.json names, as the table does."""
    run = tmp_path / "reevaluated"
    log = ExperienceLog(run / "eval" / "experience")
    partitions = {"react": "eval-react-k1", "retroformer-greedy": "eval-retroformer-greedy-new"}
    old = "eval-retroformer-greedy-old"
    for i in range(2):
        task = f"lookup-test-0-{i}"
        log.write_episode(partitions["react"], 0, task, [eval_row("react", task, 0, i == 0)])
        won_at_1 = [eval_row("retroformer-greedy", task, k, k == 1) for k in range(2)]
        log.write_episode(partitions["retroformer-greedy"], 0, task, won_at_1)
        log.write_episode(old, 0, task, [eval_row("retroformer-greedy", task, 0, True)])
    table = {"trials": 2, "seeds": [0], "conditions": partitions}
    (run / "eval" / "table.json").write_text(json.dumps(table))
    report = build_report(run)
    agents = report["evaluation"]["agents"]
    assert agents["retroformer-greedy"]["mean"] == [0.0, 1.0]  # the old partition: [1.0, 1.0]
    assert agents["retroformer-greedy"]["tasks_per_seed"] == {"0": 2}
    assert agents["react"]["mean"] == [0.5, 0.5]
