"""``retro-ray train``: the Retroformer training loop on Ray, one single controller.

The loop itself, its stages (collect, learn, publish, swap, gate), overlap, the staleness bound
and resuming are ``retro_ray.driver.loop.TrainingLoop``; this module gives it the Ray executors:
the rollout pool (Ray actors playing the branching rule), the Serve app (the ``train`` adapter,
hot-swapped from the registry), the long-lived Ray Train learner (publishing each adapter to the
registry) and the promotion gate (``train`` against ``prod`` on the validation split, outcomes in
``gates.jsonl``). The single-process learning proof runs the same loop with in-process executors
(``retro_ray.driver.local``).

Timing per record in ``metrics.jsonl``: ``collect_s`` (the collection), ``learn_wait_s`` and
``swap_s`` (how long the driver waited for the iteration's batch to be applied, then served; with
overlap that wait comes after the next collection, so it is near 0 when learning is the shorter
of the two) and ``seconds`` (the driver's time on the iteration, the promotion gate aside).

Resumable: a rerun with the same run directory skips collected iterations (the log) and applied
batches (the learner's checkpoint cursor), and runs again a gate that raised or never ran (gate
outcomes live in ``gates.jsonl``, apart from the iteration records).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retro_ray.config import ActorConfig, Config, ConfigError
from retro_ray.driver.loop import (  # noqa: F401  (earlier_records: the resume tests use it)
    TrainingLoop,
    earlier_records,
    log,
)
from retro_ray.driver.resume import record_config
from retro_ray.envs.registry import make_env_from_config
from retro_ray.ray_cluster import (  # noqa: F401  (connect_ray re-exported)
    cluster_cpus,
    connect_ray,
    one_torch_thread,
)
from retro_ray.registry import PROD_ALIAS, TRAIN_ALIAS, AdapterRegistry


def resolve_models(cfg: Config) -> Config:
    """Fill in the zoo's models where the config names none (built on first use): the
    retrospective model when ``serve.model_dir`` is unset, the actor when it is an LLM with neither
    a ``model_dir`` nor an endpoint of its own (``uses_zoo_actor``)."""
    fill_actor = uses_zoo_actor(cfg.actor)
    if not fill_actor and cfg.serve.model_dir is not None:
        return cfg
    for warning in zoo_actor_knob_warnings(cfg) if fill_actor else []:
        log(f"warning: {warning}")
    from retro_ray.zoo.build import build_zoo

    zoo = build_zoo(cfg.serve.zoo_recipe)
    actor = cfg.actor
    if fill_actor:
        actor = dataclasses.replace(actor, model_dir=str(zoo.actor_dir))
    serve = cfg.serve
    if serve.model_dir is None:
        serve = dataclasses.replace(serve, model_dir=str(zoo.retrospective_dir))
    return dataclasses.replace(cfg, actor=actor, serve=serve)


def zoo_actor_knob_warnings(cfg: Config) -> list[str]:
    """Where the config plays a family at other knobs than the zoo's actor was trained at
    (``Recipe.env_options``, e.g. the ``families`` recipe's household looks that name their
    container), one line each naming the key, both values and the fix. A harder setting is a fair
    test, so these warn rather than stop the run; an observation form the actor never saw
    usually means a config that forgot the recipe's knob."""
    from retro_ray.envs.registry import build_options, get_spec
    from retro_ray.zoo.recipes import get_recipe

    recipe = get_recipe(cfg.serve.zoo_recipe)
    env = cfg.env
    played = {env.name: (env.options, "env.options")}
    if env.name == "mixture":
        mixture = build_options(get_spec("mixture"), env.options)
        played = {
            family: (mixture.per_family.get(family) or {}, f"env.options.per_family.{family}")
            for family in mixture.families
        }
    warnings = []
    for family, (options, key) in played.items():
        fixed = recipe.fixed_options(family)
        built = build_options(get_spec(family), options, key=key) if fixed else None
        for option, value in fixed.items():
            if (actual := getattr(built, option)) != value:
                warnings.append(
                    f"{key}.{option} is {json.dumps(actual)}, but the zoo's {recipe.name!r} actor "
                    f"(serve.zoo_recipe) was trained at {json.dumps(value)}: it may not follow "
                    f"advice here. To play it as trained, set {key}.{option}={json.dumps(value)}"
                )
    return warnings


def uses_zoo_actor(actor: ActorConfig) -> bool:
    """An LLM actor that names no model: no ``model_dir`` and the endpoint's placeholder base URL
    and model name (the embedded default). An actor endpoint the config names (a cloud chat
    model, a vLLM server) is what the run uses; before, it was replaced by the zoo's tiny actor."""
    placeholder = ActorConfig().endpoint
    endpoint = actor.endpoint
    return (
        actor.policy == "llm"
        and actor.model_dir is None
        and (endpoint.base_url, endpoint.model) == (placeholder.base_url, placeholder.model)
    )


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


@dataclass
class ServeAppServing:
    """The Serve app as the loop's serving side: its registry, and the controller's alias table
    polled until every replica serves a version (:func:`wait_until_served`)."""

    app: Any  # retro_ray.serve.launch.RunningApp

    @property
    def registry(self) -> AdapterRegistry:
        return self.app.registry

    def read_served_table(self) -> dict[str, Any]:
        import ray

        return ray.get(self.app.controller.table.remote())

    def wait_until_served(self, version: int) -> float:
        return wait_until_served(self.read_served_table, version)


def prepare_run(cfg: Config) -> Config:
    """The run's config with its models and registry root resolved; the run directory created and
    its config recorded (a resume under another config is refused)."""
    cfg = resolve_models(cfg)
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for change in record_config(run_dir, cfg):
        log(f"resuming with {change}")
    registry_cfg = dataclasses.replace(cfg.registry, root=str(cfg.registry_dir.resolve()))
    return dataclasses.replace(cfg, registry=registry_cfg)


def start_learner(cfg: Config, run_dir: Path) -> Any:
    """The long-lived Ray Train learner, publishing every adapter to the run's registry."""
    from retro_ray.learner.distributed import DistributedLearner
    from retro_ray.learner.train_loop import RegistryTarget

    registry = cfg.registry
    assert registry.root is not None and cfg.serve.model_dir is not None  # prepare_run resolved
    target = RegistryTarget(registry.root, registry.name, registry.max_lora_rank)
    return DistributedLearner(
        cfg.serve.model_dir, cfg.learner, run_dir / "learner", registry=target, seed=cfg.run.seed
    ).start()


def summarize(
    cfg: Config, history: list[dict[str, Any]], registry: AdapterRegistry, start: float
) -> dict[str, Any]:
    """``summary.json``: the run's versions, rewards and time."""
    aliases = registry.state().aliases
    run_dir = cfg.run_dir.resolve()
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


def run_train(cfg: Config) -> dict[str, Any]:
    """The training loop on Ray: serve, start the learner and the rollout pool, run the
    iterations, stop serving, write the summary."""
    check_online(cfg)

    from retro_ray.driver.gate import GateLog
    from retro_ray.learner.metrics import LearnerGauges
    from retro_ray.rollout.pool import RolloutPool
    from retro_ray.serve import launch

    start = time.monotonic()
    cfg = prepare_run(cfg)
    run_dir = cfg.run_dir.resolve()
    connect_ray()
    one_torch_thread()
    tasks = train_tasks(cfg)
    log(f"serving the retrospective model ({cfg.serve.backend} backend)")
    app = launch.start(cfg)
    try:
        collect_cfg = with_reflector_endpoint(cfg, app.url)
        gates = GateLog(run_dir / "gates.jsonl", cfg.train.promote_every, cfg.train.iterations)

        def promote(it: int) -> str:
            return gates.run(it, app.registry, collect_cfg, run_dir / "gate").reason

        with (
            start_learner(cfg, run_dir) as learner,
            RolloutPool(collect_cfg, "train", cfg.run.name, run_dir / "experience") as pool,
        ):
            history = TrainingLoop(
                collector=pool,
                learner=learner,
                serving=ServeAppServing(app),
                tokenizer=None,  # the log holds the engine's prompt and reflection ids
                learner_cfg=cfg.learner,
                train_cfg=cfg.train,
                run_id=cfg.run.name,
                run_dir=run_dir,
                tasks=tasks,
                gates=gates,
                promote=promote,
                gauges=LearnerGauges(cfg.run.name),
            ).run()
    finally:
        launch.stop(app)
    return summarize(cfg, history, app.registry, start)
