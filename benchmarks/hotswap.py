"""Hot-swap against restart: how fast a newly published adapter version reaches clients, and what
clients see meanwhile.

One run, side by side, on the embedded tiny retrospective model (``zoo build --recipe tiny``):

1. steady state: closed-loop clients call ``/v1/completions`` with the alias ``train``;
2. hot-swap: three versions are published while the clients keep going; for each, the time from
   publish to the first response on it (the two-phase swap: load on every replica, then flip);
3. restart: the old way: stop the application and start it again with the new version, while the
   clients keep going; the time from stopping to the first response on the new version.

Prints one JSON object: ``swap_speedup`` (restart time over median swap time, target >= 20),
``failed_requests_during_swap`` (target 0), ``p99_during_swap_over_steady`` and the raw figures.

    python -m benchmarks.hotswap --json [--backend torch|vllm] [--replicas 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(backend: str, replicas: int, clients: int, swaps: int, work: Path) -> dict[str, object]:
    import ray
    from ray import serve

    from retro_ray.run_config import load_run_config
    from retro_ray.serve.launch import start, stop
    from retro_ray.serve.loadgen import RequestStream, failures, monotone_per_client, percentile
    from retro_ray.zoo.build import build_zoo

    model_dir = build_zoo("tiny").retrospective_dir
    adapters = [random_adapter(model_dir, work / f"adapter{i}", seed=i) for i in range(swaps + 1)]
    cfg = load_run_config(
        None,
        [
            f"serve.backend={backend}",
            f"serve.model_dir={model_dir}",
            f"serve.port={free_port()}",
            f"serve.num_replicas={replicas}",
            f"serve.replica_cpus={1.0 if backend == 'vllm' else 0.5}",
            "serve.poll_interval_s=0.1",
            f"serve.api_key_env={TOKEN_ENV}_UNSET",
            f"registry.root={work / 'registry'}",
            "registry.max_lora_rank=8",
        ],
    )
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        app = start(cfg)
        app.registry.publish(adapters[0])
        stream = RequestStream(app.url, "train", clients=clients).start()
        assert stream.wait_for("retro@1", 0.0, 300) is not None, "first version never served"
        steady_from = time.monotonic()
        time.sleep(5.0)
        steady_to = time.monotonic()
        swap_s, windows = [], []
        for adapter in adapters[1:]:
            began = time.monotonic()
            meta = app.registry.publish(adapter)
            delay = stream.wait_for(meta.name, began, 300)
            swap_s.append(delay if delay is not None else float("inf"))
            time.sleep(1.0)
            windows.append((began, time.monotonic()))
        during_swaps = stream.snapshot()
        # The old way: stop the application, start it again holding the next version.
        next_meta = app.registry.publish(adapters[0], alias=None)
        began = time.monotonic()
        stop(app)
        app.registry.promote(next_meta.version, "train")
        app = start(cfg)
        restart_s = stream.wait_for(next_meta.name, began, 600)
        samples = stream.stop()
        stop(app)
    finally:
        serve.shutdown()
        ray.shutdown()

    def p99(lo: float, hi: float) -> float:
        return percentile([s.latency_s for s in samples if s.start >= lo and s.end <= hi], 99)

    in_windows = [s for s in during_swaps if any(a <= s.end and s.start <= b for a, b in windows)]
    steady_p99 = p99(steady_from, steady_to)
    swap_p99 = percentile([s.latency_s for s in in_windows], 99)
    restart_failed = [s for s in failures(samples) if s.start >= began]
    median_swap = statistics.median(swap_s)
    return {
        "backend": backend,
        "replicas": replicas,
        "clients": clients,
        "swap_s": round(median_swap, 4),
        "swap_s_each": [round(s, 4) for s in swap_s],
        "restart_s": round(restart_s, 3) if restart_s is not None else None,
        "swap_speedup": round(restart_s / median_swap, 1) if restart_s else None,
        "failed_requests_during_swap": len(failures(during_swaps)),
        "failed_requests_during_restart": len(restart_failed),
        "versions_monotone_per_client": monotone_per_client(during_swaps),
        "steady_p99_s": round(steady_p99, 4),
        "swap_p99_s": round(swap_p99, 4),
        "p99_during_swap_over_steady": round(swap_p99 / steady_p99, 2),
        "requests": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "vllm"], default="torch")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="hotswap-") as tmp:
        result = run(args.backend, args.replicas, args.clients, args.swaps, Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
