"""Play evaluation conditions on the test split and build the table: ``retro-ray eval``.

Each (condition, seed) plays the tasks drawn with that seed through the real trial loop
(:class:`~retro_ray.rollout.episodes.EpisodeRunner`, one reflection per failed trial, no
branching). Every trial lands in the Parquet experience log under ``<out>/experience``, partition
``run=eval-<label>-<key>/iteration=<seed>`` (see :mod:`retro_ray.evaluation.conditions` for the
key), which is also the resume marker: a rerun plays only what is missing. ``table.json`` records
which partitions the table was built from, so ``retro-ray report`` reads the same rows.

Every sampled request carries a seed derived from (evaluation seed, task, trial, sample), so a
rerun of the same evaluation replays the same samples (see ``retro_ray.llm.base.derive_seed``).

Two executors:

- ``local``: every condition and seed at once on one event loop in this process, sharing one
  client per model (local torch models batch requests across all of them);
- ``ray``: each condition's episodes spread over the rollout pool (endpoint models, big sweeps).

:func:`evaluate_run` evaluates what a training run produced: its configuration, its actor and
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

from retro_ray.agents.build import actor_client, openai_client
from retro_ray.agents.results import Progress
from retro_ray.aio import gather_all
from retro_ray.config import Config
from retro_ray.envs.registry import make_env_from_config
from retro_ray.evaluation.conditions import (
    DECODINGS,
    Condition,
    condition_config,
    condition_key,
    conditions_for,
    eval_run_id,
    model_identity,
)
from retro_ray.evaluation.success import EVAL_COLUMNS
from retro_ray.evaluation.table import agent_table, split_by_family
from retro_ray.llm.base import LLMClient, PinnedAdapter
from retro_ray.rollout.episodes import EpisodeRunner, EpisodeSpec
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.run_config import load_run_config

EXECUTORS = ("local", "ray")
TRAINED_ADAPTER = "trained"
"""Name under which :func:`evaluate_run` loads the trained adapter into the local model."""
TABLE_FILE = "table.json"


def task_list(cfg: Config) -> list:
    """The tasks of ``cfg.env`` (its split, number and seed)."""
    env = make_env_from_config(cfg.env)
    tasks_fn = getattr(env, "tasks", None)
    if tasks_fn is None:
        raise ValueError(f"environment {cfg.env.name!r} has no tasks(split, n, seed) method")
    return tasks_fn(cfg.env.split, cfg.env.num_tasks, cfg.env.seed)


def seed_config(cfg: Config, seed: int, split: str = "test") -> Config:
    """The ``split`` tasks drawn with ``seed``; the agents' own randomness seeded alike."""
    env = dataclasses.replace(cfg.env, split=split, seed=seed)
    return dataclasses.replace(cfg, env=env, run=dataclasses.replace(cfg.run, seed=seed))


def evaluation_seeds(cfg: Config, n: int) -> list[int]:
    if n < 1:
        raise ValueError(f"--seeds must be >= 1, got {n}")
    return [cfg.env.seed + i for i in range(n)]


@dataclass(frozen=True)
class Plan:
    """One condition to play: its configuration and its log partition."""

    condition: Condition
    cfg: Config
    run_id: str


def plans_for(
    cfg: Config, conditions: Sequence[Condition], identities: dict[str, str] | None = None
) -> list[Plan]:
    identities = identities or {}
    return [
        Plan(c, condition_config(cfg, c), eval_run_id(c, condition_key(cfg, c, identities)))
        for c in conditions
    ]


@dataclass
class Clients:
    """Models shared by every condition and seed of a local evaluation; what is missing is built
    from the configuration (and closed again at the end)."""

    actor: LLMClient | None = None
    reflectors: dict[str, LLMClient] = field(default_factory=dict)  # agent -> its reflector


async def play_local(
    plans: Sequence[Plan],
    seeds: Sequence[int],
    log: ExperienceLog,
    clients: Clients | None = None,
    progress: bool = True,
    split: str = "test",
) -> None:
    """Play every unfinished (condition, seed, task) on this event loop; each lands in ``log``."""
    given = clients or Clients()
    clients = Clients(given.actor, dict(given.reflectors))  # the caller's stays as it was
    built: list[LLMClient] = []
    if plans and clients.actor is None and plans[0].cfg.actor.policy == "llm":
        clients.actor = actor_client(plans[0].cfg.actor)
        built.append(clients.actor)
    for plan in plans:
        agent = plan.condition.agent
        if agent not in clients.reflectors and plan.cfg.reflector.kind == "llm":
            clients.reflectors[agent] = openai_client(plan.cfg.reflector.endpoint)
            built.append(clients.reflectors[agent])
    jobs = []
    for plan in plans:
        for seed in seeds:
            seed_cfg = seed_config(plan.cfg, seed, split)
            runner = EpisodeRunner(
                seed_cfg,
                plan.condition.agent,
                plan.run_id,
                log,
                actor_client=clients.actor,
                reflector_client=clients.reflectors.get(plan.condition.agent),
            )
            done = log.finished_tasks(plan.run_id, seed)
            todo = [t for t in task_list(seed_cfg) if t.task_id not in done]
            jobs.append((runner, seed, todo))
    meter = Progress(sum(len(todo) for *_, todo in jobs), "eval") if progress else None
    concurrency = plans[0].cfg.trials.concurrency if plans else 1
    semaphore = asyncio.Semaphore(concurrency * max(1, len(jobs)))

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
    plans: Sequence[Plan],
    seeds: Sequence[int],
    log_root: Path,
    progress: bool = True,
    split: str = "test",
) -> None:
    """Each condition's episodes over the rollout pool; one pool per condition."""
    from retro_ray.ray_cluster import connect_ray
    from retro_ray.rollout.pool import RolloutPool

    connect_ray()
    for plan in plans:
        agent = plan.condition.agent
        with RolloutPool(plan.cfg, agent, plan.run_id, log_root, progress=progress) as pool:
            for seed in seeds:
                pool.collect(task_list(seed_config(plan.cfg, seed, split)), iteration=seed)


def read_rows(
    log: ExperienceLog,
    plans: Sequence[Plan] | dict[str, str],
    seeds: Sequence[int],
    tasks: dict[int, set[str]] | None = None,
    columns: Sequence[str] = EVAL_COLUMNS,
) -> list[dict[str, Any]]:
    """The rows of the given partitions (``plans``, or ``{label: run_id}``), seeds and (when
    given) task ids per seed, with ``mode`` set to the condition label: only what the table is
    about, never an older adapter's or a longer task list's episodes."""
    labels = (
        {p.run_id: p.condition.label for p in plans}
        if not isinstance(plans, dict)
        else {run: label for label, run in plans.items()}
    )
    wanted = ["run", "iteration", *(c for c in columns if c not in ("run", "iteration"))]
    rows = []
    for row in log.read(columns=wanted).to_pylist():
        if row["run"] not in labels or row["iteration"] not in seeds:
            continue
        if tasks is not None and row["task_id"] not in tasks[row["iteration"]]:
            continue
        rows.append({**row, "mode": labels[row["run"]]})
    return rows


def play_and_tabulate(
    cfgs: Sequence[Config],
    conditions: Sequence[Condition],
    seeds: Sequence[int],
    log: ExperienceLog,
    executor: str = "local",
    clients: Clients | None = None,
    identities: dict[str, str] | None = None,
    progress: bool = True,
    split: str = "test",
) -> list[dict[str, Any]]:
    """Play what is missing of every configuration (one per environment: all of them at once on
    the local executor, so local models batch across them), then one table per configuration
    over its current partitions and tasks."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    plans = [plans_for(cfg, conditions, identities) for cfg in cfgs]
    flat = [p for family in plans for p in family]
    if executor == "ray":
        play_on_ray(flat, seeds, log.root, progress, split)
    else:
        asyncio.run(play_local(flat, seeds, log, clients, progress, split))
    tables = []
    for cfg, family in zip(cfgs, plans, strict=True):
        tasks = {s: {t.task_id for t in task_list(seed_config(cfg, s, split))} for s in seeds}
        rows = read_rows(log, family, seeds, tasks)
        order = [p.condition.label for p in family]
        table = ordered(agent_table(rows, cfg.trials.max_trials), order)
        families = split_by_family(rows)
        if len(families) > 1:  # a mixture: its figures by family too
            table["families"] = {
                name: ordered(agent_table(part, cfg.trials.max_trials), order)
                for name, part in families.items()
            }
        table.update(
            env=cfg.env.name,
            split=split,
            tasks_per_seed=cfg.env.num_tasks,
            conditions={p.condition.label: p.run_id for p in family},
            reflectors={p.condition.label: _reflector_name(p.cfg) for p in family},
            log=str(log.root),
        )
        tables.append(table)
    return tables


def ordered(table: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``table`` with its agents in the order the conditions were listed."""
    table["agents"] = {k: table["agents"][k] for k in order if k in table["agents"]}
    return table


def evaluate(
    cfg: Config,
    conditions: Sequence[Condition],
    seeds: Sequence[int],
    out_dir: Path,
    executor: str = "local",
    clients: Clients | None = None,
    identities: dict[str, str] | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """:func:`play_and_tabulate` for one configuration, the log under ``<out_dir>/experience``
    and the table written to ``<out_dir>/table.json`` (with ``extra`` fields)."""
    start = time.monotonic()
    log = ExperienceLog(out_dir / "experience")
    (table,) = play_and_tabulate(
        [cfg], conditions, seeds, log, executor, clients, identities, progress, split
    )
    table.update(seconds=round(time.monotonic() - start, 1), **(extra or {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TABLE_FILE).write_text(json.dumps(table, indent=2))
    return table


def _reflector_name(cfg: Config) -> str:
    reflector = cfg.reflector
    return reflector.endpoint.model if reflector.kind == "llm" else reflector.kind


def current_rows(eval_dir: Path, columns: Sequence[str] = EVAL_COLUMNS) -> list[dict[str, Any]]:
    """The rows the last table in ``eval_dir`` was built from (``mode`` = condition label), for
    readers such as ``retro-ray report``; empty when there is no table."""
    path = eval_dir / TABLE_FILE
    if not path.is_file():
        return []
    table = json.loads(path.read_text())
    conditions = table.get("conditions") or {}
    return read_rows(
        ExperienceLog(eval_dir / "experience"), conditions, table["seeds"], None, columns
    )


# -- a training run's models, in this process ---------------------------------------------------


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The configuration a training run recorded (``config.json``), with ``overrides``."""
    path = run_dir / "config.json"
    if not path.exists():
        raise ValueError(
            f"{run_dir} is not a training run directory (no config.json); "
            "pass the run directory that retro-ray train printed"
        )
    return load_run_config(path, list(overrides))


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
    decodings: Sequence[str] = DECODINGS,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate` on a training run's local models (see the module docstring)."""
    from retro_ray.llm.torch_backend import TorchBackend

    cfg = run_config(run_dir, overrides)
    llm_actor = cfg.actor.policy == "llm"  # else a rule-based actor: no model to load
    if (llm_actor and cfg.actor.model_dir is None) or cfg.serve.model_dir is None:
        raise ValueError(
            f"{run_dir} used endpoint models; evaluate it with --config and the endpoints"
        )
    registry, version = trained_version(cfg, run_dir)
    base, name = registry.version_name(0), registry.version_name(version)
    reflector = dataclasses.replace(
        cfg.reflector,
        endpoint=dataclasses.replace(cfg.reflector.endpoint, model=base),
        trained_model=name,
    )
    cfg = dataclasses.replace(cfg, reflector=reflector)
    identities = {
        base: model_identity(cfg.serve.model_dir),
        name: model_identity(registry.path(version)),
    }
    log_line(f"evaluating {name} from {run_dir} ({n_seeds} seeds x {cfg.env.num_tasks} tasks)")
    retro = TorchBackend(cfg.serve.model_dir, max_batch_size=64, name="retrospective")
    asyncio.run(retro.load_adapter(TRAINED_ADAPTER, registry.path(version)))
    clients = Clients(
        actor=TorchBackend(cfg.actor.model_dir, max_batch_size=64, name="actor")
        if llm_actor
        else None,
        reflectors={
            "reflexion": PinnedAdapter(retro, None),
            "retroformer": PinnedAdapter(retro, TRAINED_ADAPTER),
        },
    )
    return evaluate(
        cfg,
        conditions_for(list(agents), tuple(decodings)),
        evaluation_seeds(cfg, n_seeds),
        out_dir or run_dir / "eval",
        clients=clients,
        identities=identities,
        progress=progress,
        extra={"adapter": name, "adapter_identity": identities[name]},
    )


def log_line(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)
