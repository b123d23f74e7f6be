"""Rollout throughput: sequential, one process at concurrency c, and the Ray pool, same tasks.

The actor is the zoo's tiny actor, recorded once (greedy, so a replay walks the same
trajectories) and replayed by ``benchmarks.replay_server`` after ``--delay-s`` (default 200 ms): a
remote LLM whose latency dominates. Reflections come from the trajectory oracle (code), so every
LLM call is an actor call. Every call must be answered from the recording (a miss stops the run;
``replay_hit_rate`` is 1.0). Measured side by side, ``--repeats`` interleaved times (medians):

- ``sequential``: ``TrialLoop.run_tasks`` with concurrency 1 in this process (Reflexion's loop);
  its episode latency is the yardstick;
- ``local@c``: the project's single-process executor (``LocalCollector``: a rollout worker's
  ``EpisodeRunner`` on one event loop, Parquet log included) with ``c`` episodes in flight;
- ``pool@c``: the Ray pool, ``c`` in flight over ``--workers`` (default: one per core);
  ``pool_aiohttp@c`` and ``pool_httpx@c``: the same at the highest ``c`` through the official
  OpenAI SDK on its aiohttp and its default httpx client (the others use the default ``direct``
  transport, ``actor.endpoint.http_transport``: the same bodies on a plain aiohttp session);
- per row: actor calls/s, ``efficiency`` (episodes/s over c / sequential episode latency: 1.0 is
  perfect overlap) and CPU ms per call in the driver, the workers and the replay server;
  ``worker_capacity_calls_per_s_per_core`` (1000 / worker CPU ms per call at the highest c) sizes
  the workers: a node needs (calls/s wanted) / capacity cores of rollout workers;
- memory: resident memory of the driver and of each worker after N and after 10N more episodes
  (against a fast replay), as a ratio.

Figures: see the README's performance section (the command, the commit and the machine's load).

    python -m benchmarks.rollout --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
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
from retro_ray.config import Config, EndpointConfig
from retro_ray.envs.registry import make_env_from_config
from retro_ray.llm.base import Completion, LLMClient, SamplingParams
from retro_ray.llm.openai_client import OpenAIClient
from retro_ray.rollout.worker import rss_bytes
from retro_ray.run_config import load_run_config

MODE = "trajectory-oracle"
TRANSPORT = EndpointConfig().http_transport
"""The default transport (``direct``): what every row but the SDK baselines uses."""
CONCURRENCIES = (1, 16, 64, 256)


def bench_config(
    base_url: str,
    workers: int,
    per_worker: int,
    transport: str = TRANSPORT,
    trials_concurrency: int = 1,
) -> Config:
    return load_run_config(
        None,
        [
            f"actor.endpoint.http_transport={transport}",
            f"trials.concurrency={trials_concurrency}",
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


def sequential(base_url: str, n: int, transport: str) -> dict[str, Any]:
    """Reflexion's loop: one episode after another in this process."""
    cfg = config_for_agent(bench_config(base_url, 1, 1, transport), MODE)
    client = OpenAIClient(cfg.actor.endpoint)
    loop = build_trial_loop(cfg, actor_client=client)

    async def play() -> list[Any]:
        try:
            return await loop.run_tasks(tasks_of(cfg, n), concurrency=1)
        finally:
            await client.aclose()

    start = time.monotonic()
    results = asyncio.run(play())
    seconds = time.monotonic() - start
    calls = sum(t.steps for r in results for t in r.trials)  # one actor call per step
    return {**throughput(n, seconds, calls), "episode_latency_s": seconds / n}


def throughput(episodes: int, seconds: float, calls: int) -> dict[str, Any]:
    """Episodes and actor calls of one measured run, and their rates."""
    return {
        "episodes": episodes,
        "seconds": seconds,
        "episodes_per_s": episodes / seconds,
        "actor_calls": calls,
        "actor_calls_per_s": calls / seconds,
    }


def local_run(
    base_url: str, server_pid: int, concurrency: int, n: int, log_root: Path, transport: str
) -> dict[str, Any]:
    """The project's own single-process executor (``LocalCollector``: a rollout worker's
    ``EpisodeRunner`` on one event loop, Parquet log included) at ``concurrency``."""
    from retro_ray.rollout.experience import ExperienceLog
    from retro_ray.rollout.local import LocalCollector

    cfg = bench_config(base_url, 1, concurrency, transport, trials_concurrency=concurrency)
    tasks = tasks_of(cfg, n)
    collector = LocalCollector(
        cfg,
        f"local{concurrency}-{time.monotonic_ns()}",
        ExperienceLog(log_root),
        actor_client=None,
        reflector_client=None,
        mode=MODE,
    )
    cpu0, server0, calls0 = own_cpu(), cpu_of(server_pid), server_stats(base_url)
    report = collector.collect(tasks, iteration=0)
    calls = served(base_url, calls0)
    return {
        "concurrency": concurrency,
        **throughput(len(report.summaries), report.seconds, calls),
        "cpu_ms_per_call": {
            "process": 1e3 * (own_cpu() - cpu0) / calls,
            "replay_server": 1e3 * (cpu_of(server_pid) - server0) / calls,
        },
    }


def pool_run(
    base_url: str,
    server_pid: int,
    concurrency: int,
    workers: int,
    n: int,
    log_root: Path,
    transport: str,
) -> dict[str, Any]:
    import ray

    from retro_ray.rollout.pool import RolloutPool

    workers = min(workers, concurrency)
    cfg = bench_config(base_url, workers, -(-concurrency // workers), transport)
    tasks = tasks_of(cfg, n)
    run_id = f"pool{concurrency}-{transport}"
    with RolloutPool(cfg, MODE, run_id, log_root, progress=False) as pool:
        pool.wait_ready()
        before = ray.get([h.process_stats.remote() for h in pool.handles])
        cpu0, server0, calls0 = own_cpu(), cpu_of(server_pid), server_stats(base_url)
        report = pool.collect(tasks)
        after = ray.get([h.process_stats.remote() for h in pool.handles])
        calls = served(base_url, calls0)
        worker_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before, strict=True))
    return {
        "concurrency": concurrency,
        "workers": workers,
        "transport": transport,
        **throughput(len(report.summaries), report.seconds, calls),
        "cpu_ms_per_call": {
            "driver": 1e3 * (own_cpu() - cpu0) / calls,
            "workers": 1e3 * worker_cpu / calls,
            "replay_server": 1e3 * (cpu_of(server_pid) - server0) / calls,
        },
        "machine_cpu_busy": (own_cpu() - cpu0 + worker_cpu + cpu_of(server_pid) - server0)
        / (report.seconds * (os.cpu_count() or 1)),
    }


def served(base_url: str, before: dict[str, int]) -> int:
    """Calls the replay server answered since ``before``; every one must be a recorded prompt."""
    now = server_stats(base_url)
    misses = now["misses"] - before["misses"]
    if misses:
        raise RuntimeError(
            f"the replay server answered {misses} prompts missing from its recording: the "
            "episodes left the recorded trajectories, so their timings are not comparable. "
            "Delete the cached recording (--cache) to record it again."
        )
    return now["hits"] - before["hits"]


def memory_run(base_url: str, workers: int, n: int, log_root: Path) -> dict[str, Any]:
    """RSS after n episodes, then after 10n more, on one pool (tasks reused across iterations)."""
    import ray

    from retro_ray.rollout.pool import RolloutPool

    cfg = bench_config(base_url, workers, 32, TRANSPORT)
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


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarize(runs: dict[str, list[dict[str, Any]]], latency: float) -> dict[str, Any]:
    """Medians over repeats of each (executor, concurrency): calls/s, speedup, efficiency."""
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        c = rows[0]["concurrency"]
        eps = median_of(rows, "episodes_per_s")
        out[name] = {
            "concurrency": c,
            "repeats": len(rows),
            "episodes_per_s": eps,
            "actor_calls_per_s": median_of(rows, "actor_calls_per_s"),
            "efficiency": statistics.median(r["episodes_per_s"] / (c / latency) for r in rows),
            "efficiency_each": [r["episodes_per_s"] / (c / latency) for r in rows],
            "cpu_ms_per_call": {
                k: statistics.median(r["cpu_ms_per_call"][k] for r in rows)
                for k in rows[0]["cpu_ms_per_call"]
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--delay-s", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--waves", type=int, default=2, help="episodes per concurrency slot")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians)")
    parser.add_argument("--sequential-episodes", type=int, default=5)
    parser.add_argument("--memory-episodes", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="*", default=list(CONCURRENCIES))
    parser.add_argument(
        "--baseline-transports",
        nargs="*",
        default=["aiohttp", "httpx"],
        help="the pool also runs at the highest concurrency through the SDK on these clients",
    )
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
        "repeats": args.repeats,
        "load_avg_1m_start": os.getloadavg()[0],
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    sequentials = []
    top = max(args.concurrency)
    with tempfile.TemporaryDirectory() as tmp, replay_server(path, args.delay_s) as (url, pid):
        for repeat in range(args.repeats):  # interleaved: the machine's load hits every row alike
            log = Path(tmp) / f"log{repeat}"
            sequentials.append(sequential(url, args.sequential_episodes, TRANSPORT))
            for c in args.concurrency:
                n = max(c * args.waves, args.waves)
                runs.setdefault(f"local@{c}", []).append(local_run(url, pid, c, n, log, TRANSPORT))
                runs.setdefault(f"pool@{c}", []).append(
                    pool_run(url, pid, c, args.workers, n, log, TRANSPORT)
                )
                for other in args.baseline_transports if c == top else ():
                    runs.setdefault(f"pool_{other}@{c}", []).append(
                        pool_run(url, pid, c, args.workers, n, log, other)
                    )
                print(
                    f"repeat {repeat} concurrency {c}: local "
                    f"{runs[f'local@{c}'][-1]['actor_calls_per_s']:.0f} calls/s, pool "
                    f"{runs[f'pool@{c}'][-1]['actor_calls_per_s']:.0f} calls/s",
                    file=sys.stderr,
                )
        out["replay"] = server_stats(url)
    latency = statistics.median(s["episode_latency_s"] for s in sequentials)
    out["sequential"] = {
        "episode_latency_s": latency,
        "episodes_per_s": statistics.median(s["episodes_per_s"] for s in sequentials),
        "actor_calls_per_s": statistics.median(s["actor_calls_per_s"] for s in sequentials),
        "repeats": len(sequentials),
    }
    out["runs"] = summarize(runs, latency)
    for c in args.concurrency:
        out[f"efficiency@{c}"] = out["runs"][f"pool@{c}"]["efficiency"]
        out[f"local_efficiency@{c}"] = out["runs"][f"local@{c}"]["efficiency"]
        out[f"speedup_vs_sequential@{c}"] = (
            out["runs"][f"pool@{c}"]["episodes_per_s"] / out["sequential"]["episodes_per_s"]
        )
    hits, misses = out["replay"]["hits"], out["replay"]["misses"]
    out["replay_hit_rate"] = hits / (hits + misses)
    assert out["replay_hit_rate"] == 1.0, out["replay"]  # served() raised before, this says so
    capacity = 1e3 / out["runs"][f"pool@{top}"]["cpu_ms_per_call"]["workers"]
    out["worker_capacity_calls_per_s_per_core"] = capacity
    out["load_avg_1m_end"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, replay_server(path, 0.01) as (url, _):
        out["memory"] = memory_run(url, args.workers, args.memory_episodes, Path(tmp) / "log")
    ray.shutdown()
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
