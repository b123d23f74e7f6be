"""Rollout throughput: the Ray pool against a sequential Reflexion-style loop, same tasks, same actor.

The actor is the zoo's tiny actor, recorded once (greedy, so a replay walks the same
trajectories) and replayed by ``benchmarks.replay_server`` after ``--delay-s`` (default 200 ms): a
remote LLM whose latency dominates. Reflections come from the trajectory oracle (code), so every
LLM call is an actor call. Measured side by side in one run:

- ``sequential``: ``TrialLoop.run_tasks`` with concurrency 1 in this process (Reflexion's loop);
- the pool at total concurrency 1, 16, 64 and 256 (episodes in flight over ``--workers``):
  ``speedup_vs_sequential`` (episodes/s over the sequential loop's) and ``efficiency``
  (episodes/s over concurrency / sequential episode latency: 1.0 is perfect overlap);
- memory: resident memory of the driver and of each worker after N and after 10N more episodes
  (against a fast replay), as a ratio;
- CPU seconds per LLM call in the driver, the workers and the replay server (the profile that
  says where the pool saturates: it runs out of the machine's cores, not of concurrency).

Measured here (2 shared cores, 2 workers, 200 ms): efficiency 0.97 at 16 and 0.90 at 64
(speedup 58); at 256 it saturates near 330 actor calls/s (efficiency 0.26). py-spy on a worker:
about 70% of its CPU is the OpenAI SDK's request path (httpx, httpcore, anyio), about 8% the
Parquet writes; at about 3 ms of worker CPU per call, one event-loop thread per worker tops out
near 330 calls/s per core. More workers on more cores (or nodes) scale it; 2 cores cannot.

    python -m benchmarks.rollout --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.replay_server import prompt_key
from retro_ray.agents.build import build_trial_loop, config_for_agent
from retro_ray.config import Config
from retro_ray.envs.registry import make_env_from_config
from retro_ray.llm.base import Completion, LLMClient, SamplingParams
from retro_ray.rollout.worker import rss_bytes
from retro_ray.run_config import load_run_config

MODE = "trajectory-oracle"
CONCURRENCIES = (1, 16, 64, 256)


def bench_config(base_url: str, workers: int, per_worker: int) -> Config:
    return load_run_config(
        None,
        [
            "env.name=lookup",
            "env.split=test",
            "actor.policy=llm",
            f"actor.endpoint.base_url={base_url}",
            "actor.endpoint.max_tokens=24",
            "actor.endpoint.max_concurrency=1024",
            "reflector.kind=trajectory_oracle",
            "trials.max_trials=3",
            f"rollout.num_workers={workers}",
            f"rollout.episodes_per_worker={per_worker}",
            "rollout.num_cpus_per_worker=0.5",
        ],
    )


# -- the recording ------------------------------------------------------------------------------


class RecordingClient:
    """Passes calls to the tiny actor and remembers prompt -> text."""

    def __init__(self, inner: LLMClient) -> None:
        self.inner, self.table = inner, {}

    async def generate(self, prompts: Sequence[str], sampling: SamplingParams) -> list[Completion]:
        completions = await self.inner.generate(prompts, sampling)
        for prompt, completion in zip(prompts, completions, strict=True):
            self.table[prompt_key(prompt)] = completion.text
        return completions


def recording(n_tasks: int, cache: Path) -> Path:
    """The tiny actor's answers on the first ``n_tasks`` tasks, recorded once and cached."""
    path = cache / f"rollout-replay-lookup-{n_tasks}.jsonl"
    if path.exists():
        return path
    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.zoo.build import build_zoo

    client = RecordingClient(
        TorchBackend(build_zoo("tiny", threads=1).actor_dir, max_batch_size=128)
    )
    cfg = config_for_agent(bench_config("http://127.0.0.1:9/v1", 1, 1), MODE)
    loop = build_trial_loop(cfg, actor_client=client)
    asyncio.run(loop.run_tasks(tasks_of(cfg, n_tasks), concurrency=128))
    cache.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"key": k, "text": t}) for k, t in client.table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def tasks_of(cfg: Config, n: int) -> list:
    return make_env_from_config(cfg.env).tasks(cfg.env.split, n, cfg.env.seed)


@contextmanager
def replay_server(path: Path, delay_s: float) -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.replay_server",
            "--recording",
            str(path),
            "--delay-s",
            str(delay_s),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        port = int(line.split()[1])
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def server_stats(base_url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=5) as r:
        return json.loads(r.read())


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the measurements ---------------------------------------------------------------------------


def sequential(base_url: str, n: int) -> dict[str, Any]:
    cfg = config_for_agent(bench_config(base_url, 1, 1), MODE)
    loop = build_trial_loop(cfg)
    start = time.monotonic()
    results = asyncio.run(loop.run_tasks(tasks_of(cfg, n), concurrency=1))
    seconds = time.monotonic() - start
    calls = sum(t.steps for r in results for t in r.trials)  # one actor call per step
    return {"episodes": n, "seconds": seconds, "episodes_per_s": n / seconds, "actor_calls": calls}


def pool_run(
    base_url: str, server_pid: int, concurrency: int, workers: int, n: int, log_root: Path
) -> dict[str, Any]:
    import ray

    from retro_ray.rollout.pool import RolloutPool

    workers = min(workers, concurrency)
    cfg = bench_config(base_url, workers, -(-concurrency // workers))
    tasks = tasks_of(cfg, n)
    with RolloutPool(cfg, MODE, f"c{concurrency}", log_root, progress=False) as pool:
        pool.wait_ready()
        before = ray.get([h.process_stats.remote() for h in pool.handles])
        cpu0, server0, calls0 = own_cpu(), cpu_of(server_pid), server_stats(base_url)
        report = pool.collect(tasks)
        after = ray.get([h.process_stats.remote() for h in pool.handles])
        calls = sum(server_stats(base_url)[k] - calls0[k] for k in ("hits", "misses"))
        worker_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before, strict=True))
    return {
        "concurrency": concurrency,
        "workers": workers,
        "episodes": len(report.summaries),
        "seconds": report.seconds,
        "episodes_per_s": len(report.summaries) / report.seconds,
        "actor_calls": calls,
        "cpu_ms_per_call": {
            "driver": 1e3 * (own_cpu() - cpu0) / calls,
            "workers": 1e3 * worker_cpu / calls,
            "replay_server": 1e3 * (cpu_of(server_pid) - server0) / calls,
        },
        "machine_cpu_busy": (own_cpu() - cpu0 + worker_cpu + cpu_of(server_pid) - server0)
        / (report.seconds * (os.cpu_count() or 1)),
    }


def memory_run(base_url: str, workers: int, n: int, log_root: Path) -> dict[str, Any]:
    """RSS after n episodes, then after 10n more, on one pool (tasks reused across iterations)."""
    import ray

    from retro_ray.rollout.pool import RolloutPool

    cfg = bench_config(base_url, workers, 32)
    tasks = tasks_of(cfg, n)
    with RolloutPool(cfg, MODE, "memory", log_root, progress=False) as pool:
        pool.collect(tasks, iteration=0)
        first = [
            rss_bytes(),
            *(s["rss_bytes"] for s in ray.get([h.process_stats.remote() for h in pool.handles])),
        ]
        for iteration in range(1, 11):
            pool.collect(tasks, iteration=iteration)
        last = [
            rss_bytes(),
            *(s["rss_bytes"] for s in ray.get([h.process_stats.remote() for h in pool.handles])),
        ]
    ratios = [b / a for a, b in zip(first, last, strict=True)]
    return {
        "episodes_first": n,
        "episodes_then": 10 * n,
        "rss_mb_after_first": [round(x / 2**20, 1) for x in first],  # driver, then each worker
        "rss_mb_after_10x": [round(x / 2**20, 1) for x in last],
        "rss_ratio_driver": ratios[0],
        "rss_ratio_workers_max": max(ratios[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--delay-s", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--waves", type=int, default=4, help="episodes per concurrency slot")
    parser.add_argument("--sequential-episodes", type=int, default=5)
    parser.add_argument("--memory-episodes", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="*", default=list(CONCURRENCIES))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/retro_ray/bench")
    args = parser.parse_args()

    import ray

    n_max = max(max(args.concurrency) * args.waves, args.memory_episodes)
    path = recording(n_max, args.cache)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {
        "delay_s": args.delay_s,
        "cores": os.cpu_count(),
        "workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as tmp, replay_server(path, args.delay_s) as (url, pid):
        seq = sequential(url, args.sequential_episodes)
        latency = seq["seconds"] / seq["episodes"]
        out["sequential"] = {**seq, "episode_latency_s": latency}
        rows = []
        for c in args.concurrency:
            n = max(c * args.waves, args.waves)
            row = pool_run(url, pid, c, args.workers, n, Path(tmp) / "log")
            row["speedup_vs_sequential"] = row["episodes_per_s"] / seq["episodes_per_s"]
            row["efficiency"] = row["episodes_per_s"] / (c / latency)
            rows.append(row)
            print(
                f"concurrency {c}: {row['episodes_per_s']:.2f} episodes/s, speedup "
                f"{row['speedup_vs_sequential']:.1f}, efficiency {row['efficiency']:.2f}",
                file=sys.stderr,
            )
        out["pool"] = rows
        out["replay"] = server_stats(url)
    with tempfile.TemporaryDirectory() as tmp, replay_server(path, 0.01) as (url, _):
        out["memory"] = memory_run(url, args.workers, args.memory_episodes, Path(tmp) / "log")
    ray.shutdown()
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
