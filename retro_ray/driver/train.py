"""``retro-ray train``: the Retroformer training loop, one single controller.

Each iteration reads like the paper:

1. **collect**: the rollout pool plays train-split tasks; at each failed trial of a task's main
   chain it samples ``m`` reflections from the ``train`` adapter of the Serve app and plays one
   next trial per reflection (reward ``G(k+1) - G(k)``); every trial lands in the Parquet log;
2. **learn**: the iteration's reflection groups become one batch (group baseline) for the
   long-lived Ray Train learner, which updates the LoRA adapter;
3. **publish**: the learner publishes the adapter to the registry as ``train``; the Serve app
   hot-swaps it in before the next collection (synchronous: strictly on-policy by default);
4. **promote**: every ``promote_every`` iterations the gate evaluates ``train`` against ``prod``
   on the validation split and moves ``prod`` only if it is not worse.

Resumable: a rerun with the same run directory skips collected iterations (the log) and applied
batches (the learner's checkpoint cursor).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from retro_ray.config import Config, to_dict
from retro_ray.envs.registry import make_env_from_config


def log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def connect_ray(num_cpus: int | None = None) -> None:
    """Join the cluster of a submitted job (RAY_ADDRESS) or a running session; else start a
    local one with logical CPUs declared (2-core machines deadlock on real CPU accounting)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=num_cpus or 8, include_dashboard=False)


def resolve_models(cfg: Config) -> Config:
    """Fill in the zoo's models where the config names none (built on first use)."""
    if cfg.actor.model_dir is not None and cfg.serve.model_dir is not None:
        return cfg
    from retro_ray.zoo.build import build_zoo

    zoo = build_zoo(cfg.serve.zoo_recipe)
    actor = cfg.actor
    if actor.policy == "llm" and actor.model_dir is None:
        actor = dataclasses.replace(actor, model_dir=str(zoo.actor_dir))
    serve = cfg.serve
    if serve.model_dir is None:
        serve = dataclasses.replace(serve, model_dir=str(zoo.retrospective_dir))
    return dataclasses.replace(cfg, actor=actor, serve=serve)


def with_reflector_endpoint(cfg: Config, url: str) -> Config:
    endpoint = dataclasses.replace(cfg.reflector.endpoint, base_url=url, model=cfg.registry.name)
    reflector = dataclasses.replace(cfg.reflector, kind="llm", endpoint=endpoint)
    return dataclasses.replace(cfg, reflector=reflector)


def train_tasks(cfg: Config) -> list[Any]:
    env = make_env_from_config(cfg.env)
    n = cfg.train.failed_trials_per_iteration * cfg.train.iterations
    return env.tasks("train", n, cfg.env.seed)  # type: ignore[attr-defined]


def wait_until_served(controller: Any, version: int, timeout_s: float = 120.0) -> float:
    """Seconds until the Serve app's ``train`` alias points at ``version`` on every replica."""
    import ray

    start = time.monotonic()
    while ray.get(controller.table.remote())["aliases"].get("train", 0) < version:
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"adapter version {version} not served after {timeout_s:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - start


def run_train(cfg: Config) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from retro_ray.learner.distributed import DistributedLearner
    from retro_ray.learner.metrics import LearnerGauges
    from retro_ray.learner.offline import group_batch, load_groups
    from retro_ray.learner.train_loop import RegistryTarget
    from retro_ray.rollout.pool import RolloutPool
    from retro_ray.serve import launch
    from retro_ray.serve.gate import gated_promote

    start = time.monotonic()
    cfg = resolve_models(cfg)
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    registry_cfg = dataclasses.replace(cfg.registry, root=str(Path(cfg.registry.root).resolve()))
    cfg = dataclasses.replace(cfg, registry=registry_cfg)
    connect_ray()
    tokenizer = AutoTokenizer.from_pretrained(cfg.serve.model_dir)
    tasks = train_tasks(cfg)
    per_iteration = cfg.train.failed_trials_per_iteration
    metrics_path = run_dir / "metrics.jsonl"
    log(f"serving the retrospective model ({cfg.serve.backend} backend)")
    app = launch.start(cfg)
    gauges = LearnerGauges(cfg.run.name)
    history: list[dict[str, Any]] = []
    try:
        collect_cfg = with_reflector_endpoint(cfg, app.url)
        target = RegistryTarget(registry_cfg.root, registry_cfg.name, registry_cfg.max_lora_rank)
        learner = DistributedLearner(
            cfg.serve.model_dir,
            cfg.learner,
            run_dir / "learner",
            registry=target,
            seed=cfg.run.seed,
        ).start()
        with (
            learner,
            RolloutPool(collect_cfg, "train", cfg.run.name, run_dir / "experience") as pool,
        ):
            applied = learner.state().get("acked", 0)
            for it in range(cfg.train.iterations):
                chunk = tasks[it * per_iteration : (it + 1) * per_iteration]
                t0 = time.monotonic()
                report = pool.collect(chunk, iteration=it)
                groups = load_groups(pool.log.read(cfg.run.name, it))
                record: dict[str, Any] = {
                    "iteration": it,
                    "groups": len(groups),
                    "collect_s": time.monotonic() - t0,
                }
                if groups and it >= applied:
                    batch, stats = group_batch(
                        groups,
                        tokenizer,
                        tokenizer.pad_token_id,
                        cfg.learner,
                        loss_name=cfg.learner.loss.name,
                    )
                    seq = learner.submit(batch, collected_step=it, info=stats)
                    learner.wait_applied(seq + 1)
                    version = app.registry.state().aliases.get("train", 0)
                    record.update(
                        stats, version=version, swap_s=wait_until_served(app.controller, version)
                    )
                    for step_metrics in learner.metrics()[-1:]:  # the batch just applied
                        gauges.set({**step_metrics, "adapter_version": version})
                        record.update({f"learner_{k}": v for k, v in step_metrics.items()})
                record["success_rate"] = report.success_rate
                record["seconds"] = time.monotonic() - t0
                history.append(record)
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                log(
                    f"iteration {it + 1}/{cfg.train.iterations}: {len(groups)} groups, "
                    f"reward {record.get('reward_mean', float('nan')):.3f}, "
                    f"train version {record.get('version', '-')}, {record['seconds']:.1f}s"
                )
                if (it + 1) % cfg.train.promote_every == 0 or it + 1 == cfg.train.iterations:
                    decision = asyncio.run(
                        gated_promote(app.registry, collect_cfg, "train", out_dir=run_dir / "gate")
                    )
                    log(f"promotion gate: {decision.reason}")
    finally:
        launch.stop(app)
    aliases = app.registry.state().aliases
    summary = {
        "run": cfg.run.name,
        "iterations": len(history),
        "train_version": aliases.get("train", 0),
        "prod_version": aliases.get("prod", 0),
        "reward_by_iteration": [h.get("reward_mean") for h in history],
        "wall_time_s": time.monotonic() - start,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
