"""Hot-swap against what a user would do instead: how fast a new adapter version reaches
clients, and what clients see meanwhile.

One run, side by side, on the embedded tiny retrospective model (``zoo build --recipe tiny``),
the same adapters and closed-loop clients (``/v1/completions``) throughout, default settings:

1. ours: the registry's alias ``train``; ``--swaps`` versions are published while the clients
   keep going; for each, the time from publish to the first response on it (the two-phase swap:
   load on every replica, then flip);
2. restart: stop the application and start it again holding the next version, ``--restarts``
   times; the time from stopping to the first response on the new version;
3. user_config: Serve's own way, a deployment whose ``user_config`` names the adapter, updated
   with ``serve.run`` (Serve calls ``reconfigure`` on the live replicas), ``--swaps`` times;
4. plain_vllm: vLLM's own OpenAI server (one engine, no Ray), each version loaded through its
   runtime endpoint ``/v1/load_lora_adapter`` under a new name, the clients moved to that name
   when the call returns, the old one unloaded, ``--swaps`` times; the time from the start of
   the load call to the first response on the new name (``benchmarks.hotswap_vllm``). It runs a
   vLLM engine whatever ``--backend``: compare it with ours under ``--backend vllm``.

Each gets ``switch_s`` (median; ``switch_s_each``), p99 latency at steady state and during the
windows of its changes, failed requests and per-client version order. Prints one JSON object:
``swap_speedup`` (the best alternative's median over ours, ``best_alternative``),
``swap_speedup_over`` each, ``failed_requests_during_swap``, ``p99_during_swap_over_steady``.
``--skip-plain-vllm`` leaves out (4); ``--plain-vllm-only`` runs only (4) (no speedups then).

    python -m benchmarks.hotswap --json [--backend torch|vllm] [--replicas 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from tests.support.ports import free_port  # a port nothing else grabs before Serve binds it

TOKEN_ENV = "RETRO_RAY_SERVE_TOKEN"


def random_adapter(model_dir: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A peft LoRA adapter with random non-zero B (a stand-in for a trained version)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(out, safe_serialization=True)
    return out


def user_config_deployment(replicas: int, cpus: float) -> Any:
    """What a Serve user would write instead of our registry: one deployment whose
    ``user_config`` names the adapter; Serve calls ``reconfigure`` on the running replicas when
    only the user_config changes (no restart), and the replica loads the adapter there. Same
    engine (the torch backend), same OpenAI response shape (``model`` names the version)."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus})
    @serve.ingress(api)
    class AdapterByUserConfig:
        def __init__(self, model_dir: str) -> None:
            from retro_ray.llm.torch_backend import TorchBackend

            self.backend = TorchBackend(model_dir)
            self.name: str | None = None

        async def reconfigure(self, config: dict[str, str]) -> None:
            if config["name"] not in self.backend.adapters:
                await self.backend.load_adapter(config["name"], config["path"])
            self.name = config["name"]

        @api.post("/v1/completions")
        async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
            from retro_ray.llm.base import SamplingParams

            sampling = SamplingParams(
                max_tokens=int(body.get("max_tokens", 4)), temperature=0.0, adapter=self.name
            )
            [completion] = await self.backend.generate([body["prompt"]], sampling)
            return {
                "object": "text_completion",
                "model": self.name,
                "choices": [{"index": 0, "text": completion.text, "finish_reason": "stop"}],
            }

    return AdapterByUserConfig


def run_user_config(
    model_dir: Path, adapters: list[Path], replicas: int, clients: int, port: int, cpus: float
) -> dict[str, Any]:
    """Serve's own way: ``serve.run`` with a new ``user_config`` per version (default settings),
    while clients keep calling; the time from the update to the first response on the version."""
    from ray import serve

    from retro_ray.serve.loadgen import RequestStream

    deployment = user_config_deployment(replicas, cpus)

    def deploy(i: int) -> None:
        config = {"name": f"retro@{i}", "path": str(adapters[i])}
        app = deployment.options(user_config=config).bind(str(model_dir))
        serve.run(app, name="user-config", route_prefix="/user-config")

    deploy(0)
    stream = RequestStream(f"http://127.0.0.1:{port}/user-config/v1", "retro@0", clients)
    stream.start()
    try:
        assert stream.wait_for("retro@0", 0.0, 300) is not None, "user_config app never served"
        steady = (time.monotonic(), time.monotonic() + 5.0)
        time.sleep(5.0)
        swap_s, windows = [], []
        for i in range(1, len(adapters)):
            began = time.monotonic()
            deploy(i)
            delay = stream.wait_for(f"retro@{i}", began, 300)
            swap_s.append(delay if delay is not None else float("inf"))
            time.sleep(1.0)
            windows.append((began, time.monotonic()))
    finally:
        samples = stream.stop()
        serve.delete("user-config")
    return summary(samples, steady, windows, swap_s)


def summary(
    samples: list[Any],
    steady: tuple[float, float],
    windows: list[tuple[float, float]],
    swap_s: list[float],
) -> dict[str, Any]:
    """Median and each time to the new version; p99 latency at steady state and during the
    windows (from each change to 1 s after the new version first answered); failed requests."""
    from retro_ray.serve.loadgen import failures, monotone_per_client, percentile

    inside = [s for s in samples if any(a <= s.end and s.start <= b for a, b in windows)]
    calm = [s.latency_s for s in samples if s.start >= steady[0] and s.end <= steady[1]]
    steady_p99 = percentile(calm, 99)
    during_p99 = percentile([s.latency_s for s in inside], 99)
    return {
        "switch_s": round(statistics.median(swap_s), 4),
        "switch_s_each": [round(s, 4) for s in swap_s],
        "steady_p99_s": round(steady_p99, 4),
        "p99_during_s": round(during_p99, 4),
        "p99_during_over_steady": round(during_p99 / steady_p99, 2),
        "failed_requests_during": len(failures(inside)),
        "versions_monotone_per_client": monotone_per_client(inside),
        "requests": len(samples),
    }


def run_serve(
    backend: str,
    model_dir: Path,
    adapters: list[Path],
    replicas: int,
    clients: int,
    restarts: int,
    work: Path,
) -> dict[str, Any]:
    """Ours, restart and user_config, on one local Ray cluster."""
    import ray
    from ray import serve

    from retro_ray.run_config import load_run_config
    from retro_ray.serve.launch import start, stop
    from retro_ray.serve.loadgen import RequestStream

    port = free_port()
    cpus = 1.0 if backend == "vllm" else 0.5
    cfg = load_run_config(
        None,
        [  # serving's defaults otherwise (poll interval included)
            f"serve.backend={backend}",
            f"serve.model_dir={model_dir}",
            f"serve.port={port}",
            f"serve.num_replicas={replicas}",
            f"serve.replica_cpus={cpus}",
            f"serve.api_key_env={TOKEN_ENV}_UNSET",
            f"registry.root={work / 'registry'}",
            "registry.max_lora_rank=8",
        ],
    )
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {}
    try:
        app = start(cfg)
        app.registry.publish(adapters[0])
        stream = RequestStream(app.url, "train", clients=clients).start()
        assert stream.wait_for("retro@1", 0.0, 300) is not None, "first version never served"
        steady = (time.monotonic(), time.monotonic() + 5.0)
        time.sleep(5.0)
        swap_s, windows = [], []
        for adapter in adapters[1:]:  # ours: publish to the registry, replicas swap in place
            began = time.monotonic()
            meta = app.registry.publish(adapter)
            delay = stream.wait_for(meta.name, began, 300)
            swap_s.append(delay if delay is not None else float("inf"))
            time.sleep(1.0)
            windows.append((began, time.monotonic()))
        out["hot_swap"] = summary(stream.snapshot(), steady, windows, swap_s)
        restart_s, restart_windows = [], []
        for i in range(restarts):  # the old way: stop the app, start it holding the next version
            next_meta = app.registry.publish(adapters[i % len(adapters)], alias=None)
            began = time.monotonic()
            stop(app)
            app.registry.promote(next_meta.version, "train")
            app = start(cfg)
            delay = stream.wait_for(next_meta.name, began, 600)
            restart_s.append(delay if delay is not None else float("inf"))
            time.sleep(1.0)
            restart_windows.append((began, time.monotonic()))
        out["restart"] = summary(stream.stop(), steady, restart_windows, restart_s)
        stop(app)
        out["user_config"] = run_user_config(model_dir, adapters, replicas, clients, port, cpus)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def run(
    backend: str,
    replicas: int,
    clients: int,
    swaps: int,
    restarts: int,
    work: Path,
    serve_comparisons: bool = True,
    plain_vllm: bool = True,
) -> dict[str, Any]:
    from retro_ray.zoo.build import build_zoo

    model_dir = build_zoo("tiny").retrospective_dir
    adapters = [random_adapter(model_dir, work / f"adapter{i}", seed=i) for i in range(swaps + 1)]
    out: dict[str, Any] = {"clients": clients}
    if serve_comparisons:
        out.update(backend=backend, replicas=replicas)
        out.update(run_serve(backend, model_dir, adapters, replicas, clients, restarts, work))
    if plain_vllm:
        from benchmarks.hotswap_vllm import run_plain_vllm

        out["plain_vllm"] = run_plain_vllm(model_dir, adapters, clients, work / "vllm-server.log")
    alternatives = {k: out[k] for k in ("restart", "user_config", "plain_vllm") if k in out}
    if "hot_swap" in out and alternatives:
        ours = out["hot_swap"]["switch_s"]
        best = min(alternatives, key=lambda k: alternatives[k]["switch_s"])
        out["best_alternative"] = best
        out["swap_speedup"] = round(alternatives[best]["switch_s"] / ours, 1)
        out["swap_speedup_over"] = {
            k: round(v["switch_s"] / ours, 1) for k, v in alternatives.items()
        }
        out["failed_requests_during_swap"] = out["hot_swap"]["failed_requests_during"]
        out["p99_during_swap_over_steady"] = out["hot_swap"]["p99_during_over_steady"]
    out["load_avg_1m"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "vllm"], default="torch")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--swaps", type=int, default=3, help="hot swaps, user_config updates, vLLM adapter loads"
    )
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-plain-vllm", action="store_true", help="leave out vLLM's own server")
    which.add_argument(
        "--plain-vllm-only", action="store_true", help="only vLLM's own server (no Ray)"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ray's driver prints worker and raylet lines (a Serve controller's retried shutdown, say) on
    # stdout; during the run they go to stderr, so that --json's stdout holds the one object.
    with tempfile.TemporaryDirectory(prefix="hotswap-") as tmp, redirect_stdout(sys.stderr):
        result = run(
            args.backend,
            args.replicas,
            args.clients,
            args.swaps,
            args.restarts,
            Path(tmp),
            serve_comparisons=not args.plain_vllm_only,
            plain_vllm=not args.skip_plain_vllm,
        )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
