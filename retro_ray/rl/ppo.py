"""``retro-ray rl-baseline``: RLlib PPO (new API stack) on the token / Discrete wrapper, trained on
the train split, evaluated on the test split like every agent of ``retro-ray eval``.

RLlib does the RL: EnvRunner actors (``rl.num_env_runners``, spread over the Ray cluster) sample
``TokenActionEnv`` episodes of train-split tasks, the LearnerGroup (``rl.num_learners`` remote
learners, or one in the driver) runs PPO's update on :class:`retro_ray.rl.module.TokenPolicyModule`,
and checkpoints are RLlib's own (``Algorithm.save_to_path``, ``<run dir>/checkpoint``). This
module only drives it: train until ``rl.episodes`` training episodes were consumed (RLlib's own
``num_episodes_lifetime``), evaluate before training and after the iteration that crosses each
multiple of ``rl.eval_every`` episodes and the budget (an iteration consumes whole batches, so a
point can sit up to one iteration past its mark; its x is the count consumed), write the results.

Run directory (``run.output_dir/run.name``):

- ``metrics.jsonl``: one record per PPO iteration, RLlib's figures (policy loss, value loss,
  entropy, mean episode return, episodes and env steps consumed so far);
- ``curve/experience``: every evaluation's trials (run ``eval-rl-ppo-at-<episodes>``, iteration =
  evaluation seed); ``curve.jsonl``: one point per evaluation (episodes consumed, success by
  trial) - the learning curve ``retro-ray report`` plots beside Retroformer's;
- ``eval/experience`` (run ``eval-rl-ppo``) and ``eval/table.json``: the final evaluation, the
  table row "RL (RLlib PPO)";
- ``summary.json``: budget, episodes consumed, final success, wall time.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

from retro_ray.config import Config, to_dict
from retro_ray.durable import append_jsonl
from retro_ray.evaluation.discrete_policy import RL_AGENT, evaluate_policy
from retro_ray.evaluation.success import eval_episodes, success_by_trial
from retro_ray.evaluation.table import agent_table
from retro_ray.rl.token_env import TokenActionEnv, TokenEncoder
from retro_ray.rollout.experience import ExperienceLog

logger = logging.getLogger(__name__)
Log = Callable[[str], None]

FINAL_RUN = f"eval-{RL_AGENT}"


def tokenizer_path(cfg: Config) -> str:
    if cfg.rl.tokenizer:
        return cfg.rl.tokenizer
    from retro_ray.zoo.build import build_zoo

    return str(build_zoo(cfg.rl.zoo_recipe).actor_dir)


def env_config(cfg: Config, tokenizer: str, split: str) -> dict[str, Any]:
    return {
        "name": cfg.env.name,
        "options": dict(cfg.env.options),
        "data_path": cfg.env.data_path,
        "split": split,
        "seed": cfg.env.seed,
        "task_pool": cfg.rl.train_tasks if split == "train" else cfg.env.num_tasks,
        "tokenizer": tokenizer,
        "max_tokens": cfg.rl.max_tokens,
    }


def ppo_config(cfg: Config, tokenizer: str) -> Any:
    """RLlib's ``PPOConfig`` for the run (new API stack: RLModule, EnvRunners, LearnerGroup)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from retro_ray.rl.module import TokenPolicyModule

    rl = cfg.rl
    encoder = TokenEncoder(tokenizer, rl.max_tokens)
    return (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(TokenActionEnv, env_config=env_config(cfg, tokenizer, "train"))
        .env_runners(
            num_env_runners=rl.num_env_runners,
            num_envs_per_env_runner=rl.envs_per_env_runner,
            num_cpus_per_env_runner=rl.cpus_per_env_runner,
        )
        .learners(num_learners=rl.num_learners, num_cpus_per_learner=1 if rl.num_learners else 0)
        .training(
            train_batch_size_per_learner=rl.train_batch_size,
            minibatch_size=rl.minibatch_size,
            num_epochs=rl.num_epochs,
            lr=rl.lr,
            gamma=rl.gamma,
            entropy_coeff=rl.entropy_coeff,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=TokenPolicyModule,
                model_config={
                    "vocab_size": encoder.vocab_size,
                    "pad_id": encoder.pad_id,
                    "embed_dim": rl.embed_dim,
                    "hidden": rl.hidden,
                },
            )
        )
        .debugging(seed=cfg.run.seed)
    )


def iteration_record(result: dict[str, Any], iteration: int, seconds: float) -> dict[str, Any]:
    """RLlib's own figures of one ``Algorithm.train()`` result."""
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        EPISODE_RETURN_MEAN,
        LEARNER_RESULTS,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
        NUM_EPISODES_LIFETIME,
    )

    runners = result.get(ENV_RUNNER_RESULTS, {})
    learner = result.get(LEARNER_RESULTS, {}).get("default_policy", {})

    def number(value: Any) -> float | None:
        return None if value is None else float(value)

    return {
        "iteration": iteration,
        "episodes": int(runners.get(NUM_EPISODES_LIFETIME, 0)),
        "env_steps": int(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)),
        "episode_return_mean": number(runners.get(EPISODE_RETURN_MEAN)),
        "policy_loss": number(learner.get("policy_loss")),
        "vf_loss": number(learner.get("vf_loss")),
        "entropy": number(learner.get("entropy")),
        "seconds": seconds,
    }


class Evaluator:
    """Plays the test tasks with a module and writes the trials to an experience log: seed ``s``
    (``env.seed``, ``env.seed + 1``, ... as ``retro-ray eval --seeds``) plays the split's
    ``env.num_tasks`` tasks drawn with seed ``s``."""

    def __init__(self, cfg: Config, tokenizer: str) -> None:
        self.seeds = [cfg.env.seed + i for i in range(cfg.rl.eval_seeds)]
        self.envs, self.tasks = {}, {}
        for seed in self.seeds:
            config = {**env_config(cfg, tokenizer, cfg.env.split), "seed": seed}
            self.envs[seed] = env = TokenActionEnv(config)
            self.tasks[seed] = [
                t.task_id for t in env.tasks(cfg.env.split, cfg.env.num_tasks, seed)
            ]
        self.trials = cfg.trials.max_trials

    def run(self, module: Any, log: ExperienceLog, run_id: str) -> dict[str, Any]:
        import torch
        from ray.rllib.core.columns import Columns

        def logits(obs: dict[str, torch.Tensor]) -> torch.Tensor:
            return module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]

        module.eval()
        played = evaluate_policy(self.envs, logits, self.tasks, self.trials, RL_AGENT)
        rows = []
        for seed, per_task in played.items():
            for task_id, task_rows in per_task.items():
                log.write_episode(run_id, seed, task_id, task_rows)
                rows += [{**r.__dict__, "iteration": seed} for r in task_rows]
        curve = success_by_trial(eval_episodes(rows), self.trials)[RL_AGENT]
        return {"success_by_trial": curve["mean"], "rows": rows}


def run_rl_baseline(cfg: Config, log: Log = print) -> dict[str, Any]:
    """Train and evaluate; returns the summary (also ``<run dir>/summary.json``)."""
    from retro_ray.ray_cluster import connect_ray

    start = time.monotonic()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str))
    tokenizer = tokenizer_path(cfg)
    evaluator = Evaluator(cfg, tokenizer)  # checks env.name and its options before Ray starts
    connect_ray()
    algo = ppo_config(cfg, tokenizer).build_algo()
    curve_log = ExperienceLog(run_dir / "curve" / "experience")
    curve_path, metrics_path = run_dir / "curve.jsonl", run_dir / "metrics.jsonl"
    for path in (curve_path, metrics_path):  # a rerun starts over: RLlib trains afresh
        path.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "curve", ignore_errors=True)
    budget, episodes, iteration, next_eval = cfg.rl.episodes, 0, 0, 0
    checkpoint = (run_dir / "checkpoint").resolve()  # RLlib wants an absolute path
    try:
        while True:
            if episodes >= next_eval:
                point = evaluator.run(algo.get_module(), curve_log, f"{FINAL_RUN}-at-{episodes}")
                append_jsonl(
                    curve_path,
                    {
                        "episodes": episodes,
                        "iteration": iteration,
                        "success_by_trial": point["success_by_trial"],
                    },
                )
                log(
                    f"[rl] {episodes} episodes: test success by trial "
                    + " ".join(f"{s:.3f}" for s in point["success_by_trial"])
                )
                next_eval = (episodes // cfg.rl.eval_every + 1) * cfg.rl.eval_every
            if episodes >= budget:
                break
            t0 = time.monotonic()
            result = algo.train()
            iteration += 1
            record = iteration_record(result, iteration, time.monotonic() - t0)
            episodes = record["episodes"]
            append_jsonl(metrics_path, record)
            log(
                f"[rl] iteration {iteration}: {episodes}/{budget} episodes, return "
                f"{record['episode_return_mean']}, policy loss {record['policy_loss']}"
            )
            if iteration % cfg.rl.checkpoint_every == 0:
                algo.save_to_path(str(checkpoint))
            if episodes >= budget:
                next_eval = episodes  # the last point sits at the budget
        algo.save_to_path(str(checkpoint))
        final = evaluator.run(
            algo.get_module(), ExperienceLog(run_dir / "eval" / "experience"), FINAL_RUN
        )
    finally:
        algo.stop()
    table = agent_table(final["rows"], cfg.trials.max_trials)
    table["training_episodes"] = {RL_AGENT: episodes}
    table["conditions"] = {RL_AGENT: FINAL_RUN}  # the partition the rows live in (report)
    (run_dir / "eval" / "table.json").write_text(json.dumps(table, indent=2))
    summary = {
        "run": cfg.run.name,
        "env": cfg.env.name,
        "agent": RL_AGENT,
        "episode_budget": budget,
        "training_episodes": episodes,
        "iterations": iteration,
        "success_by_trial": final["success_by_trial"],
        "eval_tasks": cfg.env.num_tasks,
        "eval_seeds": len(evaluator.seeds),
        "trials": cfg.trials.max_trials,
        "checkpoint": str(checkpoint),
        "wall_time_s": time.monotonic() - start,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
