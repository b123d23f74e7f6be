"""``RolloutWorker``: the episode runner made a Ray actor, at the edge.

An async actor: its event loop runs up to ``rollout.episodes_per_worker`` episodes at once, each
mostly waiting on LLM calls, so a worker needs only a fraction of a CPU. Ray restarts a worker
that dies (``rollout.max_restarts``); its constructor rebuilds the runner from the same arguments.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import ray

from retro_ray.config import Config, RolloutConfig
from retro_ray.llm.openai_client import OpenAIClient
from retro_ray.rollout.episodes import TRAIN_MODE, EpisodeRunner, EpisodeSpec, EpisodeSummary
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.metrics import WorkerMetrics

# Headroom above the episode slots for the pool's health checks and memory probes.
_CONTROL_CALLS = 4


class RolloutWorker:
    def __init__(self, cfg: Config, mode: str, run_id: str, log_root: str) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # never let a library grab every core
        reflector_client = None
        if mode == TRAIN_MODE and cfg.reflector.kind == "llm":
            # Training needs the engine's token ids (our Serve app / vLLM return them when asked).
            reflector_client = OpenAIClient(cfg.reflector.endpoint, request_token_ids=True)
        self.runner = EpisodeRunner(
            cfg,
            mode,
            run_id,
            ExperienceLog(Path(log_root)),
            reflector_client=reflector_client,
            observer=WorkerMetrics(mode),
        )

    async def run_episode(self, spec: EpisodeSpec) -> EpisodeSummary:
        return await self.runner.run(spec)

    async def ready(self) -> int:
        """The process id; returns once the worker (or its restarted incarnation) is up."""
        return os.getpid()

    async def process_stats(self) -> dict[str, float]:
        """Resident memory (bytes) and CPU seconds used so far: the benchmark's memory-flatness
        and CPU-per-call figures."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "rss_bytes": rss_bytes(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "pid": os.getpid(),
        }


def make_worker(rollout: RolloutConfig, cfg: Config, mode: str, run_id: str, log_root: str) -> Any:
    """One ``RolloutWorker`` actor with the resources and placement of ``rollout``."""
    options: dict[str, Any] = {
        "num_cpus": rollout.num_cpus_per_worker,
        "max_restarts": rollout.max_restarts,
        "max_task_retries": 0,  # the pool retries unfinished episodes itself, and counts them
        "max_concurrency": rollout.episodes_per_worker + _CONTROL_CALLS,
        "scheduling_strategy": rollout.scheduling_strategy,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}},
    }
    remote_cls = ray.remote(RolloutWorker)
    return remote_cls.options(**options).remote(cfg, mode, run_id, log_root)  # type: ignore[attr-defined]


def rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS is the best portable figure
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
