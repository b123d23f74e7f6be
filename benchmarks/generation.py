"""Reflection throughput of the torch and vLLM backends, side by side in one process.

Both backends serve the same model directory and get the same reflection-style prompts (sampling
at temperature 1, the training setting), at batch sizes 1, 8 and 64; each uses one compute thread
(torch intra-op threads; vLLM's OpenMP threads bound to one core). Backends alternate within each
batch size, and the whole sweep is repeated ``--repeats`` times (default 3): every figure is the
median over repeats (``reflections_per_s_each`` lists them). The ratios ``vllm_over_torch``
(reflections/s) and ``vllm_over_torch_tokens`` (generated tokens/s) tell whether paying the vLLM
engine start (``vllm_start_s``) is worth it at a given batch.

    python -m benchmarks.generation --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retro_ray.llm.base import LLMClient, SamplingParams

BATCHES = (1, 8, 64)


def reflection_prompts(n: int) -> list[str]:
    """Prompts shaped like the reflection prompt: a short failed trajectory and an instruction."""
    names = ["Alice Kay", "Bob Lee", "Carol Diaz", "Dan Moss", "Eve Park", "Finn Ross"]
    prompts = []
    for i in range(n):
        a, b = names[i % len(names)], names[(i * 5 + 1) % len(names)]
        prompts.append(
            f"Trial failed (return 0).\n> Search[{a}]\n{a} was taught by {b}.\n"
            f"> Lookup[taught]\n{a} worked with {b}.\n> Finish[{b}]\nReflection:"
        )
    return prompts


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 (vLLM logs to stdout, also from its engine
    processes, which inherit the descriptor) to stderr, so stdout carries only the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


async def measure(
    client: LLMClient, batch: int, sampling: SamplingParams, min_seconds: float
) -> dict[str, float]:
    """Reflections and generated tokens per second at one batch size (after one warm-up call)."""
    prompts = reflection_prompts(batch)
    await client.generate(prompts, sampling)
    calls = reflections = tokens = 0
    began = time.perf_counter()
    while calls < 2 or time.perf_counter() - began < min_seconds:
        seeded = SamplingParams(**{**sampling.__dict__, "seed": calls})
        completions = await client.generate(prompts, seeded)
        calls += 1
        reflections += len(completions)
        tokens += sum(c.completion_tokens for c in completions)
    elapsed = time.perf_counter() - began
    return {
        "reflections_per_s": round(reflections / elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "mean_new_tokens": round(tokens / reflections, 1),
        "calls": calls,
    }


def medians(rows: list[dict[str, float]]) -> dict[str, Any]:
    """The median of each figure over repeats, and each repeat's reflections/s."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    out["reflections_per_s_each"] = [r["reflections_per_s"] for r in rows]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", help="model directory (default: build a tiny random Llama)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=4.0, help="per backend and batch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians)")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.llm.vllm_backend import VLLMBackend

    torch.set_num_threads(1)
    if args.model:
        model_dir = Path(args.model)
    else:  # the backend tests' tiny model builder, at benchmark size
        from tests.support.tiny_model import build_tiny_model

        root = Path(tempfile.gettempdir()) / f"retro_ray_bench_h{args.hidden}_l{args.layers}"
        model_dir = build_tiny_model(
            root, hidden_size=args.hidden, num_layers=args.layers
        ).model_dir
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, top_p=1.0, logprobs=True)

    async def both() -> dict[str, Any]:
        torch_backend = TorchBackend(model_dir)
        started = time.perf_counter()
        engine = VLLMBackend(model_dir, max_num_seqs=max(BATCHES))
        start_s = time.perf_counter() - started
        runs: dict[str, dict[str, list[dict[str, float]]]] = {"torch": {}, "vllm": {}}
        try:  # interleaved (repeat, batch, backend): drifting load on a shared machine hits both
            for _ in range(args.repeats):
                for b in BATCHES:
                    for name, client in (("torch", torch_backend), ("vllm", engine)):
                        row = await measure(client, b, sampling, args.min_seconds)
                        runs[name].setdefault(str(b), []).append(row)
        finally:
            await engine.shutdown()
        out: dict[str, Any] = {"vllm_start_s": round(start_s, 1), "repeats": args.repeats}
        for name, by_batch in runs.items():
            out[name] = {b: medians(rows) for b, rows in by_batch.items()}
        return out

    load_before = os.getloadavg()[0]
    with stdout_to_stderr():
        results = asyncio.run(both())
    report: dict[str, Any] = {
        "benchmark": "generation",
        "model_dir": str(model_dir),
        "max_new_tokens": args.max_tokens,
        "temperature": 1.0,
        "threads_per_backend": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        },
        **results,
        "vllm_over_torch": {
            str(b): round(
                results["vllm"][str(b)]["reflections_per_s"]
                / results["torch"][str(b)]["reflections_per_s"],
                2,
            )
            for b in BATCHES
        },
        "vllm_over_torch_tokens": {
            str(b): round(
                results["vllm"][str(b)]["tokens_per_s"] / results["torch"][str(b)]["tokens_per_s"],
                2,
            )
            for b in BATCHES
        },
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
