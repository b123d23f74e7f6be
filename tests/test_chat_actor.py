"""The actor as a chat model (``actor.endpoint.api: chat``): the ReAct scratchpad goes to the
endpoint as system / user / assistant turns, which the loopback server records as it got them."""

from __future__ import annotations

import asyncio

import pytest

from retro_ray.agents.actors import ChatActor, expert_trajectory
from retro_ray.agents.build import build_actor, build_trial_loop
from retro_ray.agents.prompts import EXAMPLE_END, NOTES_HEADER, actor_messages
from retro_ray.config import load_config
from retro_ray.envs.base import Step, Task, Trajectory
from retro_ray.envs.registry import make_env_from_config
from retro_ray.llm.base import Completion, SamplingParams
from tests.support.openai_schema import request_violations
from tests.support.openai_server import OpenAIServer

WRONG_SEARCH = "Search[Nobody Here]"
WRONG_FINISH = "Finish[Nowhere]"


def two_wrong_steps(prompt: str) -> str:
    """A scripted chat model: a useless search while the task turn is the last turn, then a wrong
    answer (the flattened conversation ends with the last turn's text)."""
    return WRONG_SEARCH if prompt.rstrip().endswith("?") else WRONG_FINISH


def chat_config(url: str, *extra: str):
    return load_config(
        None,
        [
            "env.name=lookup",
            f"actor.endpoint.base_url={url}",
            "actor.endpoint.api=chat",
            "actor.few_shot=true",
            "reflector.kind=trajectory_oracle",
            "trials.max_trials=2",
            *extra,
        ],
    )


def roles(messages: list[dict]) -> list[str]:
    return [m["role"] for m in messages]


def test_a_trial_loop_sends_the_scratchpad_as_turns() -> None:
    with OpenAIServer(two_wrong_steps) as server:
        cfg = chat_config(server.base_url)
        loop = build_trial_loop(cfg)
        assert isinstance(loop.actor, ChatActor)
        env = make_env_from_config(cfg.env)
        task = env.tasks("test", 1)[0]
        result = asyncio.run(loop.run_task(task))

    assert {r.path for r in server.requests} == {"/v1/chat/completions"}
    for request in server.requests:  # what OpenAI's schema allows a chat request to hold
        assert request_violations("/chat/completions", "post", request.body) == []
    conversations = server.conversations()
    assert len(conversations) == 4  # two trials of two steps
    example = expert_trajectory(env)
    question = env.reset(task)
    reflection = result.trials[0].reflection
    assert reflection and not result.trials[1].won

    for i, conv in enumerate(conversations):
        trial = i // 2
        # system, then strict user/assistant alternation that ends on a user turn
        assert roles(conv) == ["system"] + ["user", "assistant"] * ((len(conv) - 2) // 2) + ["user"]
        system = conv[0]["content"]
        assert system.startswith(cfg.actor.instruction)
        if trial == 0:
            assert NOTES_HEADER not in system
        else:  # the reflection of the failed trial, in the system turn
            assert system == f"{cfg.actor.instruction}\n{NOTES_HEADER}\n- {reflection}"
        # the few-shot example as the turns the expert played
        assert conv[1]["content"] == f"Example:\n{example.first_observation}"
        n = len(example.steps)
        for j, step in enumerate(example.steps):
            assert conv[2 + 2 * j] == {"role": "assistant", "content": f"> {step.action}"}
            if j < n - 1:
                assert conv[3 + 2 * j] == {"role": "user", "content": step.observation}
        task_turn = conv[1 + 2 * n]["content"]
        assert task_turn == f"{example.steps[-1].observation}\n{EXAMPLE_END}\n{question}"
        # this trial's own steps: the model's past replies as assistant turns, observations as
        # user turns
        own = conv[2 + 2 * n :]
        assert [m["content"] for m in own[::2]] == [f"> {WRONG_SEARCH}"][: len(own) // 2]

    first, second = conversations[0], conversations[1]
    assert second[: len(first)] == first  # a step adds exactly the action and its answer
    assert second[len(first)]["content"] == f"> {WRONG_SEARCH}"
    observation = second[len(first) + 1]["content"]
    assert f"> {WRONG_SEARCH}\n{observation}" in result.trials[0].trajectory


def test_long_scratchpads_drop_the_oldest_steps_and_say_so() -> None:
    task = Task(env="lookup", task_id="t", split="test")
    steps = [Step(f"Search[name {i}]", f"nothing about name {i}", 0.0) for i in range(6)]
    trajectory = Trajectory(task, 0, "Question: where?", steps)
    one_step = len("> Search[name 0]\nnothing about name 0")
    messages = actor_messages("Act.", trajectory, ["Look elsewhere."], 2 * one_step + 1)
    assert roles(messages) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "Question: where?\n(4 earlier steps not shown.)"
    assert [m["content"] for m in messages[2:]] == [
        "> Search[name 4]",
        "nothing about name 4",
        "> Search[name 5]",
        "nothing about name 5",
    ]
    assert messages[0]["content"] == f"Act.\n{NOTES_HEADER}\n- Look elsewhere."


class _TextOnly:
    async def generate(self, prompts, sampling: SamplingParams) -> list[Completion]:
        return [Completion(text="> Finish[x]") for _ in prompts]


def test_a_chat_actor_needs_a_client_that_takes_turns() -> None:
    cfg = chat_config("http://127.0.0.1:9/v1")
    env = make_env_from_config(cfg.env)
    with pytest.raises(TypeError, match="api is chat"):
        build_actor(cfg.actor, env, _TextOnly())


def test_the_example_config_plays_with_a_chat_actor_and_a_reflector_endpoint() -> None:
    """``configs/chat_actor.yaml`` (README, "Bring your own models") with its two endpoints
    pointed at loopback servers: the actor speaks in turns, the reflector's advice reaches the
    next trial's system turn."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / "chat_actor.yaml"
    advice = "Search the other person before answering."
    with (
        OpenAIServer(two_wrong_steps, models=("gpt-4o-mini",)) as actor,
        OpenAIServer(lambda prompt: advice, models=("retrospective",)) as reflector,
    ):
        cfg = load_config(
            path,
            [
                f"actor.endpoint.base_url={actor.base_url}",
                f"reflector.endpoint.base_url={reflector.base_url}",
                # what auto decides for an instruct model's tokenizer (its chat template); the
                # example's /models/reflector is not on this machine
                "reflector.prompt_format=chat",
                "trials.max_trials=2",
            ],
        )
        assert cfg.serve.backend == "vllm" and cfg.serve.model_dir == "/models/reflector"
        loop = build_trial_loop(cfg)
        env = make_env_from_config(cfg.env)
        result = asyncio.run(loop.run_task(env.tasks("test", 1)[0]))
    assert isinstance(loop.actor, ChatActor)
    assert result.trials[0].reflection == advice
    last = actor.conversations()[-1]
    assert last[0]["content"].endswith(f"{NOTES_HEADER}\n- {advice}")
    # the instruct reflector is asked in turns too, as OpenAI's schema allows
    assert [r.path for r in reflector.requests] == ["/v1/chat/completions"]
    assert request_violations("/chat/completions", "post", reflector.requests[0].body) == []
