"""Actors, reflectors and trial loops built from the configuration tree; the evaluation agents."""

from __future__ import annotations

import dataclasses
from typing import Literal

from retro_ray.agents.actors import (
    Actor,
    ChatActor,
    ExpertActor,
    LLMActor,
    RandomActor,
    ScriptedActor,
    expert_demonstration,
    expert_trajectory,
)
from retro_ray.agents.reflectors import (
    GroundTruthReflector,
    LLMReflector,
    PromptFormat,
    Reflector,
    TrajectoryOracleReflector,
    VagueReflector,
)
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import ActorConfig, Config, EndpointConfig, ReflectorConfig
from retro_ray.envs.benchmark import BenchmarkEnv
from retro_ray.envs.registry import make_env_from_config
from retro_ray.llm.base import ChatClient, LLMClient, SamplingParams
from retro_ray.llm.templates import dir_has_chat_template, has_chat_template

Agent = Literal[
    "react", "reflexion", "retroformer", "vague", "trajectory-oracle", "ground-truth-oracle"
]
AGENTS: tuple[str, ...] = Agent.__args__  # type: ignore[attr-defined]

# What each evaluation agent changes in the reflector configuration.
_AGENT_REFLECTOR_KIND = {
    "react": "none",
    "reflexion": "llm",
    "retroformer": "llm",
    "vague": "vague",
    "trajectory-oracle": "trajectory_oracle",
    "ground-truth-oracle": "ground_truth_oracle",
}


def config_for_agent(cfg: Config, agent: str) -> Config:
    """The configuration an evaluation agent runs with: ``react`` has no reflector, ``reflexion``
    asks the configured (frozen) model, ``retroformer`` the trained one, the others the code
    reflectors of the environment."""
    if agent not in _AGENT_REFLECTOR_KIND:
        raise ValueError(f"unknown agent {agent!r}; expected one of {', '.join(AGENTS)}")
    reflector = dataclasses.replace(cfg.reflector, kind=_AGENT_REFLECTOR_KIND[agent])
    if agent == "retroformer":
        endpoint = dataclasses.replace(reflector.endpoint, model=reflector.trained_model)
        reflector = dataclasses.replace(reflector, endpoint=endpoint)
    return dataclasses.replace(cfg, reflector=reflector)


def openai_client(endpoint: EndpointConfig) -> LLMClient:
    from retro_ray.llm.openai_client import OpenAIClient

    return OpenAIClient(endpoint)


def actor_client(cfg: ActorConfig) -> LLMClient:
    """The actor's LLM: a local model directory (torch backend, in this process) or the endpoint."""
    if cfg.model_dir is None:
        return openai_client(cfg.endpoint)
    from retro_ray.llm.torch_backend import TorchBackend

    return TorchBackend(cfg.model_dir, name="actor")


def sampling_for(endpoint: EndpointConfig, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(
        max_tokens=endpoint.max_tokens,
        temperature=endpoint.temperature,
        top_p=endpoint.top_p,
        stop=stop,
    )


def build_actor(cfg: ActorConfig, env: object, client: LLMClient | None = None) -> Actor:
    """The actor of ``cfg.policy``; ``env`` is an environment instance (for few-shot)."""
    if cfg.policy == "expert":
        return ExpertActor()
    if cfg.policy == "random":
        return RandomActor()
    if cfg.policy == "scripted":
        return ScriptedActor()
    client = client or actor_client(cfg)
    sampling = sampling_for(cfg.endpoint, stop=("\n",))
    demo_env = env if cfg.few_shot and isinstance(env, BenchmarkEnv) else None
    if cfg.endpoint.api == "chat" and cfg.model_dir is None:
        if not isinstance(client, ChatClient):
            raise TypeError(
                f"actor.endpoint.api is chat but the actor's client {type(client).__name__} "
                "takes no conversations; use an OpenAI-compatible endpoint or api: completions"
            )
        example = expert_trajectory(demo_env) if demo_env is not None else None
        return ChatActor(client, sampling, cfg.instruction, cfg.scratchpad_max_chars, example)
    few_shot = expert_demonstration(demo_env) if demo_env is not None else None
    return LLMActor(
        client,
        sampling,
        cfg.instruction,
        cfg.scratchpad_max_chars,
        few_shot,
    )


def resolve_prompt_format(
    cfg: ReflectorConfig, client: object = None, model_dir: str | None = None
) -> PromptFormat:
    """``cfg.prompt_format``, with ``auto`` decided by the retrospective model's tokenizer: the
    local engine's (``client.tokenizer``) or the one saved in ``model_dir`` (``serve.model_dir``);
    ``completion`` when there is neither (the zoo's models have no chat template)."""
    if cfg.prompt_format != "auto":
        return cfg.prompt_format
    tokenizer = getattr(client, "tokenizer", None)
    if tokenizer is not None:
        return "chat" if has_chat_template(tokenizer) else "completion"
    if model_dir is not None:
        return "chat" if dir_has_chat_template(model_dir) else "completion"
    return "completion"


def build_reflector(
    cfg: ReflectorConfig, client: LLMClient | None = None, model_dir: str | None = None
) -> Reflector | None:
    """The reflector of ``cfg.kind``; ``model_dir``: the retrospective model's directory (for
    ``prompt_format: auto``)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "trajectory_oracle":
        return TrajectoryOracleReflector()
    if cfg.kind == "ground_truth_oracle":
        return GroundTruthReflector()
    if cfg.kind == "vague":
        return VagueReflector()
    prompt_format = resolve_prompt_format(cfg, client, model_dir)
    return LLMReflector(
        client or openai_client(cfg.endpoint),
        # a chat reply ends at the model's end-of-turn token; a completion at the line's end
        sampling_for(cfg.endpoint, stop=() if prompt_format == "chat" else ("\n",)),
        cfg.instruction,
        cfg.trajectory_max_chars,
        cfg.max_chars,
        name=cfg.endpoint.model,
        prompt_format=prompt_format,
    )


def build_trial_loop(
    cfg: Config, actor_client: LLMClient | None = None, reflector_client: LLMClient | None = None
) -> TrialLoop:
    """A trial loop wired from config; pass clients to reuse (or replace) the endpoints."""
    probe_env = make_env_from_config(cfg.env)
    return TrialLoop(
        env_factory=lambda: make_env_from_config(cfg.env),
        actor=build_actor(cfg.actor, probe_env, actor_client),
        reflector=build_reflector(cfg.reflector, reflector_client, cfg.serve.model_dir),
        max_trials=cfg.trials.max_trials,
        memory_size=cfg.trials.memory_size,
        max_steps=cfg.trials.max_steps,
        seed=cfg.run.seed,
    )
