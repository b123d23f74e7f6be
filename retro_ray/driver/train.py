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

With ``train.overlap`` the driver does not wait for step 2 and 3: it submits batch ``i`` and
collects iteration ``i + 1`` at once, while the learner trains and the Serve app hot-swaps the new
adapter in mid-collection (each row records the ``adapter_version`` that wrote it). Before it
submits batch ``i + 1`` it waits until batch ``i`` is applied and served, so one batch at most is in
flight and the data is at most one learner step behind the weights it updates (``ppo_clip``'s
ratio against the logged sampler log-probs corrects for it: the learner keeps the sampler's
log-probs as the old ones for a batch sampled by an older adapter, see
``retro_ray.learner.policy``; so overlap needs ``learner.loss.name=ppo_clip``). Each iteration's
record in ``metrics.jsonl`` holds the versions its collection used and that ``staleness``; a batch
staler than ``learner.max_staleness`` is dropped, never trained on.

Timing per record: ``collect_s`` (the collection), ``learn_wait_s`` and ``swap_s`` (how long the
driver waited for the iteration's batch to be applied, then served; with overlap that wait comes
after the next collection, so it is near 0 when learning is the shorter of the two) and
``seconds`` (the driver's time on the iteration, the promotion gate aside).

Resumable: a rerun with the same run directory skips collected iterations (the log) and applied
batches (the learner's checkpoint cursor), and runs again a gate that raised or never ran (gate
outcomes live in ``gates.jsonl``, apart from the iteration records).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retro_ray.config import Config, ConfigError
from retro_ray.driver.resume import record_config
from retro_ray.durable import append_jsonl, read_jsonl
from retro_ray.envs.registry import make_env_from_config
from retro_ray.ray_cluster import cluster_cpus, connect_ray
from retro_ray.registry import PROD_ALIAS, TRAIN_ALIAS


def log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


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
    """The reflector pointed at this run's Serve app, with the app's own token variable: the
    configured key (a cloud reflector's ``OPENAI_API_KEY``) must not travel to the local app."""
    endpoint = dataclasses.replace(
        cfg.reflector.endpoint,
        base_url=url,
        model=cfg.registry.name,
        api_key_env=cfg.serve.api_key_env,
    )
    reflector = dataclasses.replace(cfg.reflector, kind="llm", endpoint=endpoint)
    return dataclasses.replace(cfg, reflector=reflector)


def train_tasks(cfg: Config) -> list[Any]:
    env = make_env_from_config(cfg.env)
    n = cfg.train.failed_trials_per_iteration * cfg.train.iterations
    return env.tasks("train", n, cfg.env.seed)  # type: ignore[attr-defined]


class SwapFailed(RuntimeError):
    """The Serve app could not hot-swap an adapter version in: the message names the replica,
    the version and the error."""


def wait_until_served(
    read_table: Callable[[], dict[str, Any]], version: int, timeout_s: float = 600.0
) -> float:
    """Seconds until the Serve app's ``train`` alias points at ``version`` on every replica.

    ``read_table``: the controller's ``table()``. A failed swap is retried by the controller
    with backoff; each failed attempt is logged here with its replica and error, and once the
    controller gives up (or ``timeout_s`` passes) :class:`SwapFailed` says which and why."""
    start, reported = time.monotonic(), 0
    while (table := read_table())["aliases"].get(TRAIN_ALIAS, 0) < version:
        failure = table.get("failure")
        if failure is not None and failure["aliases"].get(TRAIN_ALIAS, 0) < version:
            failure = None  # an older revision's: not about this version
        if failure is not None and failure["gave_up"]:
            raise SwapFailed(
                f"the Serve app could not serve adapter version {version} "
                f"({failure['attempts']} attempts): {failure['reason']}"
            )
        if failure is not None and failure["attempts"] > reported:
            reported = failure["attempts"]
            log(
                f"hot-swap of adapter version {version} failed (attempt {reported}): "
                f"{failure['reason']}; retrying in {failure['retry_in_s']:.1f}s"
            )
        if time.monotonic() - start > timeout_s:
            why = failure["reason"] if failure else "no replica reported an error"
            raise SwapFailed(f"adapter version {version} not served after {timeout_s:.0f}s: {why}")
        time.sleep(0.2)
    return time.monotonic() - start


def adapter_versions(rows: Any, adapter_name: str) -> list[int]:
    """The registry versions that wrote the rows' reflections, sorted: the Serve app names each
    response ``<adapter_name>@<version>`` (``retro@3``; ``retro@0`` is the base model). Rows
    without a reflection, or written by another reflector, are left out."""
    if "adapter_version" not in rows.column_names:
        return []
    prefix = f"{adapter_name}@"
    found = set()
    for name in rows.column("adapter_version").to_pylist():
        if isinstance(name, str) and name.startswith(prefix) and name[len(prefix) :].isdigit():
            found.add(int(name[len(prefix) :]))
    return sorted(found)


@dataclass
class InFlight:
    """A batch the learner has not applied yet, and its iteration's record (finished when it is)."""

    seq: int
    record: dict[str, Any]


@dataclass
class BatchFlow:
    """Batches from the driver to the learner, with the staleness bound checked on the rows.

    Staleness is counted in learner steps (batches applied): the learner's cursor when the batch
    is submitted minus the step of the oldest adapter that wrote its rows (the registry records
    each version's step; version numbers alone drift from steps when a restarted learner
    publishes its checkpoint again)."""

    learner: Any  # DistributedLearner
    app: Any  # the Serve app (launch.start): its registry and controller
    gauges: Any  # LearnerGauges
    max_staleness: int
    adapter_name: str
    steps: dict[int, int] = field(default_factory=lambda: {0: 0})  # version -> learner step

    def read_served_table(self) -> dict[str, Any]:
        import ray

        return ray.get(self.app.controller.table.remote())

    def step_of(self, version: int) -> int:
        if version not in self.steps:
            self.steps[version] = self.app.registry.get(version).step
        return self.steps[version]

    def submit(
        self, batch: Any, stats: dict[str, float], record: dict[str, Any]
    ) -> InFlight | None:
        """Queue the batch, recording its staleness; ``None`` (and a warning) when it is staler
        than ``max_staleness`` and is dropped. Call with no batch in flight."""
        cursor = int(self.learner.state()["acked"])  # steps in the weights the batch updates
        versions = record["collect_versions"]
        oldest = min((self.step_of(v) for v in versions), default=None)
        record.update(
            submit_step=cursor,
            submit_version=self.app.registry.state().aliases.get(TRAIN_ALIAS, 0),
            staleness=None if oldest is None else cursor - oldest,
        )
        if oldest is None:
            log(
                f"iteration {record['iteration']}: no {self.adapter_name}@N rows, staleness unknown"
            )
        elif cursor - oldest > self.max_staleness:
            log(
                f"WARNING: dropping iteration {record['iteration']}'s batch: staleness "
                f"{cursor - oldest} > learner.max_staleness {self.max_staleness} (collected with "
                f"versions {versions}, learner at step {cursor})"
            )
            record["dropped"] = True
            return None
        collected_step = cursor if oldest is None else oldest
        seq = self.learner.submit(batch, collected_step=collected_step, info=stats)
        return InFlight(seq, record)

    def settle(self, flight: InFlight) -> dict[str, Any]:
        """Wait until the batch is applied and its adapter served; its record, with the seconds
        the driver waited for each (``learn_wait_s``, ``swap_s``) and the learner's metrics."""
        record = flight.record
        t0 = time.monotonic()
        self.learner.wait_applied(flight.seq + 1)
        record["learn_wait_s"] = time.monotonic() - t0
        record["version"] = version = self.app.registry.state().aliases.get(TRAIN_ALIAS, 0)
        record["swap_s"] = wait_until_served(self.read_served_table, version)
        step_metrics = self.applied_metrics(flight.seq)
        if step_metrics:
            self.gauges.set({**step_metrics, "adapter_version": version})
            record.update({f"learner_{k}": v for k, v in step_metrics.items()})
        return record

    def applied_metrics(self, seq: int, timeout_s: float = 10.0) -> dict[str, float]:
        """The learner's metrics of batch ``seq`` (their ``cursor``; rank 0 records them just
        after the acknowledgement, so they may lag ``wait_applied`` a moment); {} if none come."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [m for m in self.learner.metrics() if int(m.get("cursor", -1)) == seq]
            if found or time.monotonic() > deadline:
                return found[-1] if found else {}
            time.sleep(0.1)


def earlier_records(metrics_path: Path) -> dict[int, dict[str, Any]]:
    """The iterations an earlier run of this directory finished (``metrics.jsonl``): a resumed
    run keeps their records instead of writing them again (their gates: ``GateLog``). A torn
    last line (the driver died mid-write) is skipped: that iteration is simply not finished."""
    return {r["iteration"]: r for r in read_jsonl(metrics_path)}


def check_online(cfg: Config) -> None:
    """What online training needs beyond a valid tree; checked before any cluster work."""
    if cfg.learner.checkpoint_every != 1:
        raise ConfigError(
            f"learner.checkpoint_every: bad value {cfg.learner.checkpoint_every}; retro-ray train "
            "publishes each adapter with its checkpoint, and the next collection waits for it: "
            "set learner.checkpoint_every=1 (larger values are for offline training)"
        )
    if cfg.train.overlap and cfg.learner.loss.name != "ppo_clip":
        raise ConfigError(
            f"learner.loss.name: bad value {cfg.learner.loss.name!r} with train.overlap: true; "
            "overlap trains on batches sampled by the previous adapter, and only ppo_clip's "
            "importance ratio (against the sampler's log-probs) corrects for that: set "
            "learner.loss.name=ppo_clip or train.overlap=false"
        )


def run_train(cfg: Config) -> dict[str, Any]:
    check_online(cfg)
    from transformers import AutoTokenizer

    from retro_ray.driver.gate import GateLog
    from retro_ray.learner.distributed import DistributedLearner
    from retro_ray.learner.metrics import LearnerGauges
    from retro_ray.learner.offline import group_batch, load_groups
    from retro_ray.learner.train_loop import RegistryTarget
    from retro_ray.rollout.pool import RolloutPool
    from retro_ray.serve import launch

    start = time.monotonic()
    cfg = resolve_models(cfg)
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for change in record_config(run_dir, cfg):  # a resume under another config is refused
        log(f"resuming with {change}")
    registry_cfg = dataclasses.replace(cfg.registry, root=str(cfg.registry_dir.resolve()))
    cfg = dataclasses.replace(cfg, registry=registry_cfg)
    connect_ray()
    tokenizer = AutoTokenizer.from_pretrained(cfg.serve.model_dir)
    tasks = train_tasks(cfg)
    per_iteration, iterations = cfg.train.failed_trials_per_iteration, cfg.train.iterations
    metrics_path = run_dir / "metrics.jsonl"
    log(f"serving the retrospective model ({cfg.serve.backend} backend)")
    app = launch.start(cfg)
    gauges = LearnerGauges(cfg.run.name)
    history: list[dict[str, Any]] = []

    def write(record: dict[str, Any]) -> None:
        history.append(record)
        append_jsonl(metrics_path, record)  # fsynced; a torn line of a crash repaired first
        log(
            f"iteration {record['iteration'] + 1}/{iterations}: {record['groups']} groups, "
            f"reward {record.get('reward_mean', float('nan')):.3f}, "
            f"train version {record.get('version', '-')}, {record['seconds']:.1f}s"
        )

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
            flow = BatchFlow(learner, app, gauges, cfg.learner.max_staleness, registry_cfg.name)
            applied_before = learner.state().get("acked", 0)  # batches of an earlier run
            earlier = earlier_records(metrics_path)
            gates = GateLog(run_dir / "gates.jsonl", cfg.train.promote_every, iterations)
            in_flight: InFlight | None = None  # overlap: the batch training during collection
            for it in range(iterations):
                chunk = tasks[it * per_iteration : (it + 1) * per_iteration]
                t0 = time.monotonic()
                report = pool.collect(chunk, iteration=it)
                rows = pool.log.read(cfg.run.name, it)
                groups = load_groups(rows)
                record: dict[str, Any] = {
                    "iteration": it,
                    "groups": len(groups),
                    "collect_s": time.monotonic() - t0,
                    "collect_versions": adapter_versions(rows, registry_cfg.name),
                    "success_rate": report.success_rate,
                    "cpus": cluster_cpus(),  # retro-ray report: core-hours of training
                }
                if in_flight is not None:  # overlap: the batch trained during this collection
                    write(flow.settle(in_flight))
                    in_flight = None
                # A batch an earlier run dropped as too stale is not in the learner's cursor.
                fresh = bool(groups) and not earlier.get(it, {}).get("dropped")
                submitted = False
                if fresh and applied_before > 0:  # in the learner's checkpoint already
                    applied_before -= 1
                elif fresh:
                    batch, stats = group_batch(
                        groups,
                        tokenizer,
                        tokenizer.pad_token_id,
                        cfg.learner,
                        loss_name=cfg.learner.loss.name,
                    )
                    record.update(stats)
                    in_flight = flow.submit(batch, stats, record)
                    submitted = True
                if it in earlier and not submitted:  # finished by an earlier run
                    history.append(earlier[it])
                    if gates.due(it):  # its gate raised, or the driver died before it
                        decision = gates.run(it, app.registry, collect_cfg, run_dir / "gate")
                        log(f"promotion gate (resumed): {decision.reason}")
                    continue
                if in_flight is not None and (not cfg.train.overlap or it + 1 == iterations):
                    flow.settle(in_flight)  # synchronous, or the last batch before the gate
                    in_flight = None
                record["seconds"] = time.monotonic() - t0  # the driver's time, the gate aside
                if in_flight is None:
                    write(record)  # else once its batch is applied, after the next collection
                if gates.due(it):  # outcome in gates.jsonl, apart from the iteration's record
                    decision = gates.run(it, app.registry, collect_cfg, run_dir / "gate")
                    log(f"promotion gate: {decision.reason}")
    finally:
        launch.stop(app)
    aliases = app.registry.state().aliases
    summary = {
        "run": cfg.run.name,
        "iterations": len(history),
        "overlap": cfg.train.overlap,
        "train_version": aliases.get(TRAIN_ALIAS, 0),
        "prod_version": aliases.get(PROD_ALIAS, 0),
        "reward_by_iteration": [h.get("reward_mean") for h in history],
        "collect_s": sum(h["collect_s"] for h in history),
        "learn_wait_s": sum(h.get("learn_wait_s", 0.0) for h in history),
        "wall_time_s": time.monotonic() - start,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
