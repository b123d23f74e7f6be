"""A tiny Ray job that exercises every metric the Grafana dashboard reads, for real (a test
fixture, run with ``ray job submit``; not a product feature).

1. A rollout collection on the built-in lookup environment: the scripted actor, an LLM reflector
   behind the loopback OpenAI server (so LLM tokens and latency are recorded).
2. The Serve application on a tiny random model (torch backend): good and bad requests, then an
   adapter published to the registry, so that a hot-swap sets the served-version gauge.

It then writes ``--ready`` and holds everything alive (metrics of live processes stay exported)
until ``--done`` appears, so the test can scrape the node's Prometheus endpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.ports import free_port  # the repository root is on the path now


def collect(out: Path, base_url: str):
    """Run a small reflexion collection; returns the open pool (closed by the caller)."""
    from retro_ray.config import load_config
    from retro_ray.envs.registry import make_env_from_config
    from retro_ray.rollout.pool import RolloutPool

    cfg = load_config(
        None,
        [
            "env.name=lookup",
            "env.split=train",
            "actor.policy=scripted",
            f"reflector.endpoint.base_url={base_url}",
            "trials.max_trials=3",
            "rollout.num_workers=1",
            "rollout.episodes_per_worker=4",
            "rollout.num_cpus_per_worker=0.25",
            f"run.output_dir={out}",
        ],
    )
    tasks = make_env_from_config(cfg.env).tasks(cfg.env.split, 8, cfg.env.seed)
    pool = RolloutPool(cfg, "reflexion", "metrics", out / "log", progress=False)
    report = pool.collect(tasks, iteration=0)
    assert len(report.summaries) == len(tasks), report
    return pool


def serve_traffic(out: Path) -> object:
    """Start the Serve app, send requests, publish an adapter and wait for the swap."""
    import httpx

    from retro_ray.config import load_config
    from retro_ray.serve.launch import start
    from tests.support.tiny_model import build_tiny_model

    tiny = build_tiny_model(out / "tiny")
    cfg = load_config(
        None,
        [
            "serve.backend=torch",
            f"serve.model_dir={tiny.model_dir}",
            f"serve.port={free_port()}",
            "serve.num_replicas=1",
            "serve.replica_cpus=0.5",
            "serve.max_tokens_limit=16",
            "serve.poll_interval_s=0.2",
            "serve.api_key_env=RETRO_RAY_METRICS_JOB_NO_TOKEN",
            f"registry.root={out / 'registry'}",
            "registry.max_lora_rank=8",
        ],
    )
    app = start(cfg)
    body = {"model": "retrospective", "prompt": "The trial failed.", "max_tokens": 4}
    assert httpx.post(f"{app.url}/completions", json=body, timeout=120).status_code == 200
    bad = httpx.post(f"{app.url}/completions", json={**body, "max_tokens": 10_000}, timeout=60)
    assert bad.status_code == 400, bad.text
    version = app.registry.publish(tiny.adapters["a"]).name  # alias train -> a hot-swap
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = httpx.post(f"{app.url}/completions", json={**body, "model": "train"}, timeout=60)
        if r.status_code == 200 and r.json()["model"] == version:
            return app
        time.sleep(0.5)
    raise TimeoutError(f"{version} never served")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--done", required=True)
    args = parser.parse_args()
    import ray
    from ray import serve

    from retro_ray.serve.launch import stop
    from tests.support.openai_server import OpenAIServer

    ray.init()
    out = Path(args.out)
    with OpenAIServer(lambda prompt: "Try the other option next time.") as server:
        pool = collect(out, server.base_url)
        app = serve_traffic(out)
        Path(args.ready).write_text("ready")
        deadline = time.monotonic() + 300
        while not Path(args.done).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        stop(app)
        serve.shutdown()
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
