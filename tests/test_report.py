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
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import pytest

from retro_ray.cli import EXIT_CONFIG, main
from retro_ray.report import Prices, build_report
from retro_ray.report.data import cost_per_point, eval_episodes, success_by_trial
from retro_ray.report.html import cost_sentence
from retro_ray.report.text import tokens, usd
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


def eval_row(agent: str, task: str, trial: int, won: bool) -> ExperienceRow:
    reflects = agent != "react" and trial > 0
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
    )


def write_eval(run_dir: Path) -> None:
    log = ExperienceLog(run_dir / "eval" / "experience")
    for agent, seeds in OUTCOMES.items():
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
                        **times,
                    )
                )
            log.write_episode("demo-run", it, task, rows)


def write_metrics(run_dir: Path) -> None:
    records = [
        {"iteration": 0, "groups": 2, "collect_s": 50.0, "seconds": 55.0, "success_rate": 0.5},
        {"iteration": 1, "groups": 2, "collect_s": 50.0, "seconds": 60.0, "reward_mean": 0.5},
        {"iteration": 2, "groups": 2, "collect_s": 60.0, "seconds": 61.5, "version": 3},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run") / "demo-run"
    write_train(root)
    write_eval(root)
    write_metrics(root)
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


def test_tokens_and_dollars_per_point_gained(report: dict) -> None:
    cost = report["evaluation"]["cost"]
    assert list(cost) == ["reflexion", "retroformer"]
    retro = cost["retroformer"]
    assert retro["gain_points"] == 50.0  # 87.5 % - 37.5 % at trial 3
    assert retro["extra_actor_tokens_per_task"] == 431.25 - 247.5 == 183.75
    assert retro["extra_prompt_tokens_per_task"] == 187.5
    assert retro["extra_completion_tokens_per_task"] == -3.75
    assert retro["tokens_per_point"] == 183.75 / 50 == 3.675
    extra_cost = (187.5 * 0.15 - 3.75 * 0.60) / 1e6  # default prices, USD per million tokens
    assert retro["extra_cost_per_task_usd"] == pytest.approx(extra_cost, rel=1e-12)
    assert retro["cost_per_point_per_1k_tasks_usd"] == pytest.approx(
        1000 * extra_cost / 50, rel=1e-12
    )
    # Reflexion spends 375 more actor tokens per task than ReAct for exactly the same success.
    reflexion = cost["reflexion"]
    assert reflexion["gain_points"] == 0.0 and reflexion["no_gain"]
    assert reflexion["tokens_per_point"] is None
    assert reflexion["cost_per_point_per_1k_tasks_usd"] is None
    assert reflexion["extra_actor_tokens_per_task"] == 375.0
    answer = report["answer"]
    assert answer.startswith("At trial 3, against ReAct:")
    assert "Retroformer gains 50.0 points for 184 extra actor tokens per task" in answer
    assert "3.67 actor tokens per point" in answer or "3.68 actor tokens per point" in answer
    assert "Reflexion shows no gain over ReAct (+0.0 points)" in answer


def test_cost_per_point_negative_gain_and_cheaper_agent() -> None:
    base = {"actor_prompt": 100.0, "actor_completion": 10.0, "actor": 110.0, "reflection": 0.0}
    more = {"actor_prompt": 300.0, "actor_completion": 20.0, "actor": 320.0, "reflection": 9.0}
    worse = cost_per_point(0.40, 0.50, more, base, Prices())
    assert worse["gain_points"] == pytest.approx(-10.0) and worse["no_gain"]
    assert worse["tokens_per_point"] is None
    better = cost_per_point(0.70, 0.50, more, base, Prices(1.0, 2.0))
    assert better["gain_points"] == pytest.approx(20.0)
    assert better["tokens_per_point"] == pytest.approx(210 / 20)
    assert better["extra_cost_per_task_usd"] == pytest.approx((200 * 1.0 + 10 * 2.0) / 1e6)
    assert better["cost_per_point_per_1k_tasks_usd"] == pytest.approx(1000 * 220e-6 / 20)
    cheaper = cost_per_point(0.70, 0.50, base, more, Prices())
    assert cheaper["tokens_per_point"] == pytest.approx(-210 / 20)


def test_the_answer_for_free_points_and_a_cheaper_token_mix() -> None:
    base = {"actor_prompt": 100.0, "actor_completion": 10.0, "actor": 110.0, "reflection": 0.0}
    # More prompt tokens (cheap) but fewer completion tokens (dear): more tokens, less money.
    mix = {"actor_prompt": 130.0, "actor_completion": 0.0, "actor": 130.0, "reflection": 5.0}
    fewer = {"actor_prompt": 90.0, "actor_completion": 10.0, "actor": 100.0, "reflection": 5.0}
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
    assert "Reflexion gains 10.0 points for 20 extra actor tokens per task, i.e. 2.00" in answer
    assert f"at no extra cost at the assumed prices (its cheaper token mix saves {saved}" in answer
    assert "Retroformer gains 20.0 points while using 10 fewer actor tokens per task" in answer
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
    assert f"<td>+50.0</td><td>431</td><td>+184</td><td>{per_point}</td>" in page
    assert (
        usd(report["evaluation"]["cost"]["retroformer"]["cost_per_point_per_1k_tasks_usd"]) in page
    )
    assert "<td>no gain</td>" in page
    assert "$0.15 per million prompt tokens" in page and "$0.60 per million completion" in page
    assert "assumed price, set with <code>--price-prompt/--price-completion</code>" in page.lower()
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))


def test_cli_prints_the_page_or_the_json(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "custom"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str((out / "index.html").resolve())
    args = ["report", str(run_dir), "--out", str(out), "--json", "--price-prompt", "1"]
    assert main([*args, "--price-completion", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prices"] == {"prompt_per_mtok": 1.0, "completion_per_mtok": 2.0}
    retro = printed["evaluation"]["cost"]["retroformer"]
    assert retro["extra_cost_per_task_usd"] == pytest.approx((187.5 - 3.75 * 2) / 1e6)


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
