"""``retro-ray eval``: the evaluation table on the test split, every agent, several seeds.

Each (agent, seed) plays the test-split tasks drawn with that seed through the real trial loop
(:class:`~retro_ray.rollout.episodes.EpisodeRunner`, one reflection per failed trial), and every
trial lands in the Parquet experience log under ``<out>/experience`` as run ``eval-<agent>``,
iteration ``<seed>``. A rerun skips the tasks already there, and ``retro-ray report`` reads the
same files. The table itself is :func:`retro_ray.driver.eval_table.agent_table` over that log.

Two executors:

- ``local``: every agent and seed at once on one event loop in this process, sharing one client
  per model (local torch models batch requests across all of them);
- ``ray``: each agent's episodes spread over the rollout pool (endpoint models, large sweeps).

``--run RUN_DIR`` evaluates what a training run produced: its configuration, its actor and
retrospective base, and the registry's ``prod`` adapter (``train`` if none was promoted), loaded
in this process; Reflexion is the same base model without the adapter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retro_ray.agents.build import actor_client, config_for_agent, openai_client
from retro_ray.agents.results import Progress
from retro_ray.aio import gather_all
from retro_ray.config import Config, load_config
from retro_ray.driver.eval_table import EVAL_COLUMNS, agent_table
from retro_ray.evaluate import task_list
from retro_ray.llm.base import LLMClient, PinnedAdapter
from retro_ray.rollout.episodes import EpisodeRunner, EpisodeSpec
from retro_ray.rollout.experience import ExperienceLog

EXECUTORS = ("local", "ray")
TRAINED_ADAPTER = "trained"
"""Name under which ``--run`` loads the trained adapter into the local retrospective model."""


def eval_run_id(agent: str) -> str:
    return f"eval-{agent}"


def seed_config(cfg: Config, seed: int) -> Config:
    """The test split drawn with ``seed``; the agents' own randomness seeded alike."""
    env = dataclasses.replace(cfg.env, split="test", seed=seed)
    return dataclasses.replace(cfg, env=env, run=dataclasses.replace(cfg.run, seed=seed))


def evaluation_seeds(cfg: Config, n: int) -> list[int]:
    if n < 1:
        raise ValueError(f"--seeds must be >= 1, got {n}")
    return [cfg.env.seed + i for i in range(n)]


@dataclass
class Clients:
    """Models shared by every (agent, seed) of a local evaluation; what is missing is built from
    the configuration (and closed again at the end)."""

    actor: LLMClient | None = None
    reflectors: dict[str, LLMClient] = field(default_factory=dict)  # agent -> its reflector


async def play_local(
    cfg: Config,
    agents: Sequence[str],
    seeds: Sequence[int],
    log: ExperienceLog,
    clients: Clients | None = None,
    progress: bool = True,
) -> None:
    """Play every unfinished (agent, seed, task) on this event loop; each lands in ``log``."""
    given = clients or Clients()
    clients = Clients(given.actor, dict(given.reflectors))  # the caller's stays as it was
    built: list[LLMClient] = []
    if clients.actor is None and cfg.actor.policy == "llm":
        clients.actor = actor_client(cfg.actor)
        built.append(clients.actor)
    for agent in agents:
        agent_cfg = config_for_agent(cfg, agent)
        if agent not in clients.reflectors and agent_cfg.reflector.kind == "llm":
            clients.reflectors[agent] = openai_client(agent_cfg.reflector.endpoint)
            built.append(clients.reflectors[agent])
    jobs = []
    for agent in agents:
        for seed in seeds:
            seed_cfg = seed_config(cfg, seed)
            runner = EpisodeRunner(
                seed_cfg,
                agent,
                eval_run_id(agent),
                log,
                actor_client=clients.actor,
                reflector_client=clients.reflectors.get(agent),
            )
            done = log.finished_tasks(eval_run_id(agent), seed)
            todo = [t for t in task_list(seed_cfg) if t.task_id not in done]
            jobs.append((runner, seed, todo))
    meter = Progress(sum(len(todo) for *_, todo in jobs), "eval") if progress else None
    semaphore = asyncio.Semaphore(cfg.trials.concurrency * len(jobs))

    async def one(runner: EpisodeRunner, spec: EpisodeSpec) -> None:
        async with semaphore:
            summary = await runner.run(spec)
        if meter is not None:
            meter.update([summary])

    try:
        await gather_all([one(r, EpisodeSpec(t, seed)) for r, seed, todo in jobs for t in todo])
    finally:
        for client in built:
            aclose = getattr(client, "aclose", None)
            if aclose is not None:
                await aclose()


def play_on_ray(
    cfg: Config, agents: Sequence[str], seeds: Sequence[int], log_root: Path, progress: bool = True
) -> None:
    """Each agent's episodes over the rollout pool; one pool per agent, reused across seeds."""
    from retro_ray.driver.train import connect_ray
    from retro_ray.rollout.pool import RolloutPool

    connect_ray()
    for agent in agents:
        with RolloutPool(cfg, agent, eval_run_id(agent), log_root, progress=progress) as pool:
            for seed in seeds:
                pool.collect(task_list(seed_config(cfg, seed)), iteration=seed)


def evaluate_agents(
    cfg: Config,
    agents: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    executor: str = "local",
    clients: Clients | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Play what is missing, then the table over the whole log (written to ``table.json``,
    with ``extra`` fields)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    start = time.monotonic()
    log = ExperienceLog(out_dir / "experience")
    if executor == "ray":
        play_on_ray(cfg, agents, seeds, log.root, progress)
    else:
        asyncio.run(play_local(cfg, agents, seeds, log, clients, progress))
    wanted = {eval_run_id(a) for a in agents}
    columns = ("run", "iteration", *EVAL_COLUMNS)
    rows = log.read(columns=columns).to_pylist()
    rows = [r for r in rows if r["run"] in wanted and r["iteration"] in seeds]
    table = agent_table(rows, cfg.trials.max_trials)
    table.update(
        env=cfg.env.name,
        tasks_per_seed=cfg.env.num_tasks,
        reflectors={a: _reflector_name(cfg, a) for a in agents},
        log=str(log.root),
        seconds=round(time.monotonic() - start, 1),
        **(extra or {}),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.json").write_text(json.dumps(table, indent=2))
    return table


def _reflector_name(cfg: Config, agent: str) -> str:
    reflector = config_for_agent(cfg, agent).reflector
    return reflector.endpoint.model if reflector.kind == "llm" else reflector.kind


# -- a training run's models, in this process ---------------------------------------------------


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The configuration a training run recorded (``config.json``), with ``overrides``."""
    path = run_dir / "config.json"
    if not path.exists():
        raise ValueError(
            f"{run_dir} is not a training run directory (no config.json); "
            "pass the run directory that retro-ray train printed"
        )
    return load_config(path, list(overrides))


def trained_version(cfg: Config, run_dir: Path) -> tuple[Any, int]:
    """The run's registry (its own, ``<run_dir>/registry``, unless ``registry.root`` is set) and
    its ``prod`` version (``train`` when nothing was promoted)."""
    from retro_ray.registry import PROD_ALIAS, TRAIN_ALIAS, AdapterRegistry

    root = Path(cfg.registry.root) if cfg.registry.root is not None else run_dir / "registry"
    registry = AdapterRegistry(
        root, cfg.serve.model_dir, cfg.registry.name, run=cfg.run.name, shared=cfg.registry.shared
    )
    aliases = registry.state().aliases
    version = aliases.get(PROD_ALIAS) or aliases.get(TRAIN_ALIAS, 0)
    if not version:
        raise ValueError(f"the registry {root} holds no adapter: train first")
    return registry, version


def evaluate_run(
    run_dir: Path,
    agents: Sequence[str],
    n_seeds: int,
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_agents` on a training run's local models (see the module docstring)."""
    from retro_ray.llm.torch_backend import TorchBackend

    cfg = run_config(run_dir, overrides)
    if cfg.actor.model_dir is None or cfg.serve.model_dir is None:
        raise ValueError(
            f"{run_dir} used endpoint models; evaluate it with --config and the endpoints"
        )
    registry, version = trained_version(cfg, run_dir)
    name = registry.version_name(version)
    reflector = dataclasses.replace(
        cfg.reflector,
        endpoint=dataclasses.replace(cfg.reflector.endpoint, model=registry.version_name(0)),
        trained_model=name,
    )
    cfg = dataclasses.replace(cfg, reflector=reflector)
    log_line(f"evaluating {name} from {run_dir} ({n_seeds} seeds x {cfg.env.num_tasks} tasks)")
    retro = TorchBackend(cfg.serve.model_dir, max_batch_size=64, name="retrospective")
    asyncio.run(retro.load_adapter(TRAINED_ADAPTER, registry.path(version)))
    clients = Clients(
        actor=TorchBackend(cfg.actor.model_dir, max_batch_size=64, name="actor"),
        reflectors={
            "reflexion": PinnedAdapter(retro, None),
            "retroformer": PinnedAdapter(retro, TRAINED_ADAPTER),
        },
    )
    seeds = evaluation_seeds(cfg, n_seeds)
    out_dir = out_dir or run_dir / "eval"
    return evaluate_agents(cfg, agents, seeds, out_dir, clients=clients, extra={"adapter": name})


def log_line(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)
