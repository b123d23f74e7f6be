"""Deterministic bad input is not an outage: a request the endpoint rejects (a prompt past its
context window), a lone surrogate in a model's text, an empty or enormous reflection. The episode
is recorded as failed with the reason, every other episode goes on, and the log stays writable.
Real episodes against the loopback OpenAI-compatible server; no Ray."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retro_ray.config import load_config
from retro_ray.envs.base import Step, Task, Trajectory
from retro_ray.envs.registry import make_env_from_config
from retro_ray.llm.openai_client import OpenAIClient
from retro_ray.reflection.prompt import reflection_prompt
from retro_ray.rollout.episodes import EpisodeRunner, EpisodeSpec
from retro_ray.rollout.experience import (
    SCHEMA,
    SCHEMA_VERSION,
    ExperienceLog,
    ExperienceRow,
    episode_file_name,
)
from tests.support.openai_server import OpenAIServer

GUESS_ENV = "tests.support.guess_env:GuessEnv"
OVERFLOW = "This model's maximum context length is 2048 tokens; you requested 9000 tokens."


def follow_notes_actor(prompt: str) -> str:
    ruled_out = {int(n) for n in re.findall(r"Do not guess (\d+)", prompt)}
    return f"guess {min(set(range(1, 6)) - ruled_out)}\n"


def diagnosis(prompt: str) -> str:
    (guess,) = re.findall(r"> guess (\d+)\nWrong\.", prompt)
    return f"Do not guess {guess}."


def scripted_reflector() -> tuple:
    """Reflections in call order (tasks run one after another): a note that makes the actor's
    next prompt too long, an empty one, one with a lone surrogate, an enormous one; then plain
    diagnoses. Its server rejects any reflection prompt showing a wrong ``guess 3``."""
    calls = itertools.count(1)
    specials = {
        1: lambda p: "OVERFLOW " + diagnosis(p),
        2: lambda p: "",
        3: lambda p: "\ud800 " + diagnosis(p),
        4: lambda p: diagnosis(p) + " " + "x" * 100_000,
    }

    def respond(prompt: str) -> str:
        return specials.get(next(calls), diagnosis)(prompt)

    def reject(prompt: str) -> str | None:
        return OVERFLOW if "> guess 3\nWrong." in prompt else None

    return respond, reject


def test_bad_input_fails_its_episode_with_the_reason_and_the_run_goes_on(tmp_path: Path) -> None:
    respond, reject = scripted_reflector()
    with (
        OpenAIServer(
            follow_notes_actor, reject=lambda p: OVERFLOW if "OVERFLOW" in p else None
        ) as actor,
        OpenAIServer(respond, models=("retrospective",), reject=reject) as reflector,
    ):
        cfg = load_config(
            None,
            [
                f"env.name={GUESS_ENV}",
                "env.split=test",
                f"actor.endpoint.base_url={actor.base_url}",
                f"reflector.endpoint.base_url={reflector.base_url}",
                "trials.max_trials=5",
                "trials.memory_size=5",
                f"run.output_dir={tmp_path}",
            ],
        )
        tasks = make_env_from_config(cfg.env).tasks("test", 5, 0)
        log = ExperienceLog(tmp_path / "log")
        runner = EpisodeRunner(cfg, "reflexion", "eval", log)

        async def run_all() -> None:
            for task in tasks:  # one after another: the scripted reflections go in order
                await runner.run(EpisodeSpec(task, iteration=0))

        asyncio.run(run_all())

    frame = log.read("eval", 0).to_pandas()
    assert set(frame["task_id"]) == {t.task_id for t in tasks}  # every episode is in the log
    failures = frame[frame["failure"].notna()]
    by_task = dict(zip(failures["task_id"], failures["failure"], strict=True))
    assert len(by_task) == 3, by_task
    reasons = sorted(by_task.values())
    assert reasons[0].startswith("actor request rejected: LLM endpoint " + actor.base_url)
    assert "HTTP 400" in reasons[0] and "maximum context length" in reasons[0]
    assert reasons[1].startswith("reflector request rejected: LLM endpoint " + reflector.base_url)
    assert reasons[2].startswith("the reflector returned an empty reflection")
    for task_id, rows in frame.groupby("task_id"):
        last = rows.sort_values("trial").iloc[-1]
        if task_id in by_task:  # the episode stopped at its failure, unsolved
            assert last["failure"] == by_task[task_id] and not rows["won"].any()
        else:
            assert rows["won"].any()  # the others played on, and solved their task
    reflections = [r for r in frame["reflection"].dropna()]
    assert any(r.startswith("\ufffd Do not guess") for r in reflections)  # sanitised
    assert max(map(len, reflections)) <= cfg.reflector.max_chars  # the enormous one, cut


def test_lone_surrogates_are_replaced_before_parquet(tmp_path: Path) -> None:
    row = ExperienceRow(
        task_id="t1",
        split="test",
        env="lookup",
        mode="reflexion",
        trial=1,
        sample=0,
        won=False,
        return_after=0.0,
        reflection="half an emoji \ud83d then text",
        memory=["ok", "\udfff"],
        trajectory="> look\n\ud800",
        prompt="a pair \ud83d\ude00 joins",
    )
    log = ExperienceLog(tmp_path)
    log.write_episode("r", 0, "t1", [row])
    (back,) = log.read("r", 0).to_pylist()
    assert back["reflection"] == "half an emoji \ufffd then text"
    assert back["memory"] == ["ok", "\ufffd"] and back["trajectory"] == "> look\n\ufffd"
    assert back["prompt"] == "a pair \U0001f600 joins"


def test_files_of_schema_version_1_stay_readable(tmp_path: Path) -> None:
    """Version 2 added ``failure``; a log written before it reads with that column null."""
    old_schema = pa.schema([f for f in SCHEMA if f.name != "failure"])
    rows = {f.name: [None] for f in old_schema}
    rows.update(
        schema_version=[1],
        task_id=["t0"],
        split=["test"],
        env=["lookup"],
        mode=["react"],
        trial=[0],
        sample=[0],
        won=[True],
        return_after=[1.0],
        memory=[[]],
    )
    directory = tmp_path / "run=old" / "iteration=0"
    directory.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pydict(rows, schema=old_schema), directory / episode_file_name("old", 0, "t0")
    )
    log = ExperienceLog(tmp_path)
    log.write_episode(
        "old", 0, "t1", [ExperienceRow("t1", "test", "lookup", "react", 0, 0, True, 1.0)]
    )
    table = log.read("old", 0)
    assert sorted(table.column("schema_version").to_pylist()) == [1, SCHEMA_VERSION]
    assert table.column("failure").to_pylist() == [None, None]
    assert log.finished_tasks("old", 0) == {"t0", "t1"}


def test_reflection_prompt_cuts_the_first_observation_like_the_trajectory() -> None:
    task = Task("lookup", "t1", "test")
    trajectory = Trajectory(task, 0, "Find the item. " + "catalogue line\n" * 2000)
    trajectory.steps.append(Step("search[item]", "result " * 1000, 0.0))
    prompt = reflection_prompt("Reflect.", trajectory, [], trajectory_max_chars=400)
    assert "Find the item." in prompt
    assert len(prompt) < 2 * 400 + 100


def test_a_rejected_reflection_request_ends_the_training_episode(tmp_path: Path) -> None:
    """The branching rule: the reflector's 400 on one task stops that episode's main chain with
    the reason on its row; the other episodes branch as usual."""
    cfg = load_config(
        None,
        [
            "env.name=lookup",
            "env.split=train",
            "actor.policy=scripted",
            "trials.max_trials=3",
            "train.group_size=2",
            f"run.output_dir={tmp_path}",
        ],
    )
    tasks = make_env_from_config(cfg.env).tasks("train", 6, 0)
    env = make_env_from_config(cfg.env)
    doomed = tasks[0]
    marker = env.reset(doomed)

    def reject(prompt: str) -> str | None:
        return OVERFLOW if marker in prompt and prompt.endswith("Reflection:") else None

    with OpenAIServer(lambda p: "Try another one.", models=("train",), reject=reject) as server:
        cfg = load_config(
            None,
            [
                "env.name=lookup",
                "env.split=train",
                "actor.policy=scripted",
                "trials.max_trials=3",
                "train.group_size=2",
                f"reflector.endpoint.base_url={server.base_url}",
                f"run.output_dir={tmp_path}",
            ],
        )
        client = OpenAIClient(cfg.reflector.endpoint, request_token_ids=True)
        log = ExperienceLog(tmp_path / "log")
        runner = EpisodeRunner(cfg, "train", "run", log, reflector_client=client)

        async def run_all() -> None:
            try:
                await asyncio.gather(*(runner.run(EpisodeSpec(t, 0)) for t in tasks))
            finally:
                await client.aclose()  # the runner closes only the clients it made

        asyncio.run(run_all())
    frame = log.read("run", 0).to_pandas()
    mine = frame[frame["task_id"] == doomed.task_id]
    assert len(mine) == 1 and not mine["won"].any()
    assert mine["failure"].iloc[0].startswith("reflector request rejected: LLM endpoint")
    others = frame[frame["task_id"] != doomed.task_id]
    assert others["failure"].isna().all() and others["sample"].max() == 1  # branched
