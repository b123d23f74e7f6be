"""The trial loop end to end: a user's environment by import path, an LLM actor and an LLM
reflector behind our loopback OpenAI-compatible server, outages, resume."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from retro_ray.agents.build import build_trial_loop
from retro_ray.config import load_config
from retro_ray.evaluation.conditions import Condition
from retro_ray.evaluation.play import evaluate, read_rows
from retro_ray.llm.base import EndpointError
from retro_ray.rollout.experience import ExperienceLog
from tests.support.openai_server import OpenAIServer

GUESS_ENV = "tests.support.guess_env:GuessEnv"


def follow_notes_actor(prompt: str) -> str:
    """A scripted actor LLM: guesses the smallest number the notes do not rule out."""
    ruled_out = {int(n) for n in re.findall(r"Do not guess (\d+)", prompt)}
    return f"guess {min(set(range(1, 6)) - ruled_out)}\n"


def diagnosing_reflector(prompt: str) -> str:
    """A scripted reflector LLM: names the wrong guess of the trajectory it was shown."""
    (guess,) = re.findall(r"> guess (\d+)\nWrong\.", prompt)
    return f"Do not guess {guess}."


def guess_config(actor_url: str, reflector_url: str, tmp_path, **extra: str):
    return load_config(
        None,
        [
            f"env.name={GUESS_ENV}",
            "env.num_tasks=8",
            "env.split=test",
            f"actor.endpoint.base_url={actor_url}",
            f"reflector.endpoint.base_url={reflector_url}",
            "actor.endpoint.backoff_s=0.01",
            "actor.endpoint.max_retries=2",
            "trials.max_trials=5",
            "trials.memory_size=5",
            "trials.concurrency=1",
            f"run.output_dir={tmp_path}",
            *[f"{k}={v}" for k, v in extra.items()],
        ],
    )


@pytest.fixture()
def servers():
    with (
        OpenAIServer(follow_notes_actor, models=("actor",)) as actor,
        OpenAIServer(diagnosing_reflector, models=("retrospective",)) as reflector,
    ):
        yield actor, reflector


REFLEXION = Condition("reflexion", "greedy")
COLUMNS = ("task_id", "trial", "won", "return_after", "memory", "actor_prompt_tokens")


def play(cfg, out, condition: Condition = REFLEXION) -> tuple[dict, dict[str, list[dict]]]:
    """``retro-ray eval``'s path for one condition: its table, and its trials per task."""
    table = evaluate(cfg, [condition], [cfg.env.seed], out, progress=False)
    rows = read_rows(
        ExperienceLog(out / "experience"), table["conditions"], table["seeds"], None, COLUMNS
    )
    tasks: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["task_id"], r["trial"])):
        tasks.setdefault(row["task_id"], []).append(row)
    return table["agents"][condition.label], tasks


def test_reflections_flow_into_the_next_trial(servers, tmp_path) -> None:
    actor, reflector = servers
    cfg = guess_config(actor.base_url, reflector.base_url, tmp_path)
    summary, results = play(cfg, tmp_path / "out")
    assert summary["tasks"] == 8 and len(results) == 8
    # Ruling out one number per failed trial finds any secret in 1..5 within five trials.
    assert summary["success_by_trial"][-1] == 1.0
    for trials in results.values():
        assert [t["won"] for t in trials] == [False] * (len(trials) - 1) + [True]
        assert [t["return_after"] for t in trials][-1] == 1.0
        for k, t in enumerate(trials[1:], start=1):
            assert t["memory"] == [f"Do not guess {j}." for j in range(1, k + 1)]
        assert all(t["actor_prompt_tokens"] > 0 for t in trials)
    # The reflector saw each failed trajectory and its return; the actor saw the notes.
    assert any("Return: 0.00" in req.body["prompt"] for req in reflector.requests)
    assert any("Do not guess 1." in req.body["prompt"] for req in actor.requests)
    # success is cumulative and non-decreasing trial by trial
    s = summary["success_by_trial"]
    assert all(a <= b for a, b in itertools.pairwise(s)) and s[0] < 1.0


def test_react_agent_has_no_reflections(servers, tmp_path) -> None:
    actor, reflector = servers
    cfg = guess_config(actor.base_url, reflector.base_url, tmp_path)
    summary, _ = play(cfg, tmp_path / "react", Condition("react"))
    assert not reflector.requests
    # Without notes the actor guesses 1 every time: success stays flat after trial 1.
    assert len(set(summary["success_by_trial"])) == 1


def test_endpoint_recovers_after_500s(servers, tmp_path) -> None:
    actor, reflector = servers
    actor.fail_next(2, status=500)
    cfg = guess_config(actor.base_url, reflector.base_url, tmp_path)
    summary, _ = play(cfg, tmp_path / "out")
    assert summary["success_by_trial"][-1] == 1.0


def test_endpoint_that_stays_down_stops_the_run_and_keeps_finished_work(servers, tmp_path) -> None:
    actor, reflector = servers
    calls = {"n": 0}

    def dies_after_a_while(prompt: str) -> str:
        calls["n"] += 1
        if calls["n"] == 12:  # a few tasks are finished by now; then the endpoint goes down
            actor.fail_next(10**6, status=503)
        return follow_notes_actor(prompt)

    actor.responder = dies_after_a_while
    cfg = guess_config(actor.base_url, reflector.base_url, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(EndpointError) as err:
        play(cfg, out)
    assert actor.base_url in str(err.value)
    kept = {p: p.stat().st_mtime_ns for p in (out / "experience").rglob("part-*.parquet")}
    assert 1 <= len(kept) < 8  # finished tasks kept, the interrupted one not counted as failed
    rows = ExperienceLog(out / "experience").read(columns=["task_id", "trial", "won"]).to_pylist()
    last = {r["task_id"]: r for r in sorted(rows, key=lambda r: r["trial"])}
    assert all(r["won"] for r in last.values())

    # The endpoint comes back: a rerun resumes, skipping the finished tasks.
    actor.reset()
    actor.responder = follow_notes_actor
    summary, _ = play(cfg, out)
    assert summary["tasks"] == 8 and summary["success_by_trial"][-1] == 1.0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # not played again


def test_unparsable_output_is_an_invalid_action(tmp_path) -> None:
    with OpenAIServer(lambda prompt: "   \n\n") as actor:
        cfg = guess_config(
            actor.base_url,
            actor.base_url,
            tmp_path,
            **{"reflector.kind": "none", "trials.max_trials": "1"},
        )
        loop = build_trial_loop(cfg)
        (task,) = loop.env_factory().tasks("test", 1)  # type: ignore[attr-defined]
        result = asyncio.run(loop.run_task(task))
    (trial,) = result.trials
    assert trial.invalid_actions == 1 and not trial.won
    assert "empty" in trial.trajectory
