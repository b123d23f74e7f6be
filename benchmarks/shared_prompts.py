"""The learner's update with each prompt computed once (``learner.share_prompts``) against every
row running its own prompt: the same batch, the same start weights, side by side in one process.

A random Llama of the given size (no download) and a batch of ``--groups`` prompts with
``--group-size`` reflections each (random ids; prompts of ``prompt_len/2 .. prompt_len`` tokens,
reflections of ``reflection_len/4 .. reflection_len``). On a GPU the update runs as the Ray Train
learner runs it there (bf16 autocast over float32 weights), else in float32 on the CPU. Each
contender is timed over ``--steps`` updates after ``--warmup``, in ``--rounds`` interleaved rounds
(medians). Before timing, one update of each from the same weights is compared: the largest
difference between the two adapters after it (``max_weight_diff``) and their losses.

    python -m benchmarks.shared_prompts --json                      # a tiny model, this CPU
    python -m benchmarks.shared_prompts --hidden 1024 --layers 8 --prompt-len 1024 --json  # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig, LoRAConfig, PolicyLossConfig
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.zoo.models import init_llama, save_model, train_tokenizer


def random_model(directory: Path, args: argparse.Namespace) -> Path:
    """A random Llama of the asked size with a small byte-level BPE tokenizer."""
    words = [f"word{i} name{i % 97} place{i % 31}" for i in range(4000)]
    tokenizer = train_tokenizer(words, vocab_size=args.vocab)
    model = init_llama(
        tokenizer,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=max(1, args.hidden // 64),
        intermediate_size=args.hidden * 3,
        max_position_embeddings=args.prompt_len + args.reflection_len + 8,
        seed=0,
    )
    return save_model(model, tokenizer, directory)


def make_batch(args: argparse.Namespace, vocab: int, pad_id: int) -> ReflectionBatch:
    g = torch.Generator().manual_seed(0)

    def ids(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(5, vocab, (n,), generator=g).tolist()

    prompts = [ids(args.prompt_len // 2, args.prompt_len) for _ in range(args.groups)]
    rows = args.groups * args.group_size
    return ReflectionBatch.from_token_lists(
        [prompts[i // args.group_size] for i in range(rows)],
        [ids(max(1, args.reflection_len // 4), args.reflection_len) for _ in range(rows)],
        torch.randn(rows, generator=g),
        [i // args.group_size for i in range(rows)],
        pad_id=pad_id,
    )


def policy_on(model_dir: Path, config: LearnerConfig, device: torch.device) -> ReflectorPolicy:
    policy = ReflectorPolicy(model_dir, config, seed=0)
    policy.model.to(device)  # as the learner does: AdamW's state follows the parameters
    return policy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--groups", type=int, default=54, help="distinct prompts (the demo: 54)")
    p.add_argument("--group-size", type=int, default=4, help="reflections per prompt (m)")
    p.add_argument("--prompt-len", type=int, default=160, help="longest prompt (tokens)")
    p.add_argument("--reflection-len", type=int, default=32, help="longest reflection")
    p.add_argument("--micro-batch", type=int, default=32, help="rows per forward pass")
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per update (the demo: 2)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    config = LearnerConfig(
        lora=LoRAConfig(rank=8, alpha=16),
        loss=PolicyLossConfig(name="ppo_clip", kl_coef=0.0),
        micro_batch_size=args.micro_batch,
        epochs_per_batch=args.epochs,
    )
    configs = {"shared": config, "unshared": replace(config, share_prompts=False)}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model(Path(tmp) / "model", args)
        policies = {name: policy_on(model_dir, c, device) for name, c in configs.items()}
        probe = policies["shared"]
        batch = make_batch(args, probe.model.config.vocab_size, probe.pad_token_id).to(device)
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "dtype": "bf16 autocast" if device.type == "cuda" else "float32",
            "parameters_m": sum(p.numel() for p in probe.model.parameters()) / 1e6,
            "rows": batch.batch_size,
            "group_size": args.group_size,
            "positions_real": int(batch.attention_mask.sum()),
            "loss_tokens": int(batch.loss_mask.sum()),
            "epochs_per_batch": args.epochs,
        }
        with autocast:  # the same first step from the same weights: are they the same update?
            losses = {name: policy.update(batch)["loss"] for name, policy in policies.items()}
        params = {
            name: [p.detach() for p in policy.model.parameters() if p.requires_grad]
            for name, policy in policies.items()
        }
        result["max_weight_diff"] = max(
            float((a - b).abs().max())
            for a, b in zip(params["shared"], params["unshared"], strict=True)
        )
        result["max_weight"] = max(float(a.abs().max()) for a in params["shared"])
        result["loss"] = losses

        def timed(policy: ReflectorPolicy) -> float:
            times = []
            for i in range(args.warmup + args.steps):
                sync()
                start = time.perf_counter()
                with autocast:
                    policy.update(batch)
                sync()
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
            return statistics.median(times)

        rounds: dict[str, list[float]] = {name: [] for name in policies}
        for _ in range(args.rounds):
            for name, policy in policies.items():
                rounds[name].append(timed(policy))
    for name, values in rounds.items():
        result[f"{name}_update_s"] = statistics.median(values)
    result["each_round"] = rounds
    result["shared_over_unshared"] = result["unshared_update_s"] / result["shared_update_s"]
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
