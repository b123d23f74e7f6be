"""What is evaluated: agents, decodings, and the key of everything that made an episode.

One vocabulary everywhere (CLI, JSON, Parquet ``mode``, report, README):

==========================  ==================================================================
agent                       reflections from
==========================  ==================================================================
``react``                   nobody: retries without reflection
``vague``                   true but useless advice (code)
``reflexion``               a frozen reflector (the untrained retrospective base, or any model)
``retroformer``             the trained adapter
``trajectory-oracle``       the best reflection derivable from the failed trial (code)
``ground-truth-oracle``     the hidden solution (code; an upper bound only)
==========================  ==================================================================

An agent that asks an LLM for its reflections (``reflexion``, ``retroformer``) is evaluated with
two **decodings**: ``greedy`` (temperature 0) and ``sampled`` (the training temperature and
top_p), so that each is compared at its best. A **condition** is an (agent, decoding) pair, shown
as its label: ``react``, ``reflexion-greedy``, ``retroformer-sampled``...

An evaluated episode is reused only when everything that made it is the same: the condition, the
reflector's and the actor's content (a hash of the weights, never an alias that moves), the
sampling settings, the number of trials and the environment. :func:`condition_key` hashes all of
that; the evaluation log partitions by ``eval-<label>-<key>``, so a changed adapter or a different
``--trials`` lands in a new partition and is played afresh, and the table reads only the current
partitions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from retro_ray.agents.build import AGENTS, config_for_agent
from retro_ray.config import Config, to_dict

LLM_AGENTS = ("reflexion", "retroformer")
"""Agents whose reflections come from an LLM: evaluated with every decoding."""
DECODINGS = ("greedy", "sampled")
TABLE_AGENTS = ("react", "reflexion", "retroformer", "trajectory-oracle", "ground-truth-oracle")
"""The agents of the paper's table, in its order."""


@dataclass(frozen=True)
class Condition:
    agent: str
    decoding: str | None = None  # None for agents without an LLM reflector

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; expected one of {', '.join(AGENTS)}")
        if (self.decoding is None) != (self.agent not in LLM_AGENTS):
            raise ValueError(f"agent {self.agent!r} takes a decoding iff it is one of {LLM_AGENTS}")
        if self.decoding is not None and self.decoding not in DECODINGS:
            raise ValueError(f"unknown decoding {self.decoding!r}; expected one of {DECODINGS}")

    @property
    def label(self) -> str:
        return self.agent if self.decoding is None else f"{self.agent}-{self.decoding}"


def conditions_for(agents: list[str] | tuple[str, ...], decodings=DECODINGS) -> list[Condition]:
    """Every (agent, decoding) to evaluate, agents in the given order."""
    for decoding in decodings:
        if decoding not in DECODINGS:
            raise ValueError(f"unknown decoding {decoding!r}; expected one of {DECODINGS}")
    return [
        Condition(agent, decoding)
        for agent in agents
        for decoding in (decodings if agent in LLM_AGENTS else (None,))
    ]


def split_label(label: str) -> tuple[str, str | None]:
    """(agent, decoding) of a condition label; a label without a known decoding suffix is an
    agent on its own (``react``; or a row written before decodings were recorded)."""
    for decoding in DECODINGS:
        agent = label.removesuffix(f"-{decoding}")
        if agent != label and agent in LLM_AGENTS:
            return agent, decoding
    return label, None


def condition_config(cfg: Config, condition: Condition) -> Config:
    """The configuration the condition plays with: the agent's reflector (see
    :func:`~retro_ray.agents.build.config_for_agent`) at the condition's decoding."""
    cfg = config_for_agent(cfg, condition.agent)
    if condition.decoding is None:
        return cfg
    temperature, top_p = (
        (0.0, 1.0) if condition.decoding == "greedy" else (cfg.train.temperature, cfg.train.top_p)
    )
    endpoint = dataclasses.replace(cfg.reflector.endpoint, temperature=temperature, top_p=top_p)
    return dataclasses.replace(cfg, reflector=dataclasses.replace(cfg.reflector, endpoint=endpoint))


def condition_key(cfg: Config, condition: Condition, identities: dict[str, str]) -> str:
    """A short hash of everything that made a condition's episodes (see the module docstring).
    ``identities`` maps model names to their content identity (:func:`model_identity`); a model
    not listed there is known by its name (an endpoint model that we cannot hash)."""
    played = condition_config(cfg, condition)
    tree = to_dict(played)
    reflector = played.reflector
    what = {
        "condition": condition.label,
        "env": {k: v for k, v in tree["env"].items() if k not in ("seed", "split", "num_tasks")},
        "trials": tree["trials"]["max_trials"],
        "memory_size": tree["trials"]["memory_size"],
        "max_steps": tree["trials"]["max_steps"],
        "actor": _model_of(tree["actor"], played.actor.endpoint.model, identities),
        "reflector": None
        if reflector.kind != "llm"
        else {
            "model": identities.get(reflector.endpoint.model, reflector.endpoint.model),
            "endpoint": {
                k: v for k, v in tree["reflector"]["endpoint"].items() if k != "api_key_env"
            },
            "instruction": reflector.instruction,
            "max_chars": reflector.max_chars,
            "trajectory_max_chars": reflector.trajectory_max_chars,
        },
    }
    blob = json.dumps(what, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _model_of(actor: dict[str, Any], model: str, identities: dict[str, str]) -> Any:
    if actor["policy"] != "llm":
        return actor["policy"]
    if actor.get("model_dir"):
        return model_identity(actor["model_dir"])
    endpoint = {k: v for k, v in actor["endpoint"].items() if k != "api_key_env"}
    return {"model": identities.get(model, model), "endpoint": endpoint}


@cache
def model_identity(path: str | Path) -> str:
    """The content identity of a local model or adapter directory: a sha256 over its files'
    names and bytes (a tiny model hashes in milliseconds; for a directory over 2 GiB, over each
    file's name, size and first and last MiB, which still changes whenever the weights do)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    total = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(root)).encode() + b"\0")
        size = p.stat().st_size
        with p.open("rb") as f:
            if total <= 2 << 30:
                digest.update(f.read())
            else:
                digest.update(str(size).encode() + f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                digest.update(f.read())
    return digest.hexdigest()[:16]


def eval_run_id(condition: Condition, key: str) -> str:
    """The experience-log partition of a condition's episodes."""
    return f"eval-{condition.label}-{key}"
