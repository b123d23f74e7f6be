"""The learner's optimizer step, side by side: ours under Ray Train (1 and 2 workers), a plain
single-process peft loop, and TRL's GRPO loss, on identical tensors.

Same tiny model (the zoo's retrospective base), same LoRA settings, same global batch of
reflections (random token ids, fixed lengths, advantages of both signs), one micro-batch, grad
clipping and AdamW everywhere, one torch thread per process. Each timing is the median of
``--steps`` optimizer steps after ``--warmup``, then the median over ``--rounds`` interleaved
rounds (the machine is shared: interleaving spreads others' load over every contender):

- ``ours_ray_{1,2}w``: ``ReflectorPolicy.update`` inside the long-lived Ray Train ``fit()``, as
  timed by the worker (forward, loss, backward, gradient all-reduce with 2 workers, clip, step);
  ``*_batch_wall_s`` adds the rest of a batch's round (queue fetch, checkpoint and publish).
- ``ours_local``: the same ``update`` in the driver process, no Ray (the plain class alone).
- ``plain``: forward, log-softmax gather, token-mean REINFORCE loss, backward, clip, step.
- ``trl``: ``GRPOTrainer.compute_loss`` (loss_type ``bnpo``: token-level, like ours; beta 0),
  backward, clip, step.

Ours, like TRL (``logits_to_keep``), computes logits only from the first reflection token on (the
prompt needs none); the plain loop computes them for every position, as a naive loop does.

Ratios are *their time / our time* (above 1: ours is faster). ``scaling_1_to_2`` is the 1-worker
step time over the 2-worker one (explained in ``scaling_note``).

    python -m benchmarks.learner --json
"""

from __future__ import annotations

import argparse
import json
import os
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


def make_batch(rows: int, prompt_len: int, completion_len: int, vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, vocab, (rows, prompt_len), generator=g)
    completions = torch.randint(5, vocab, (rows, completion_len), generator=g)
    advantages = torch.randn(rows, generator=g)
    return {"prompts": prompts, "completions": completions, "advantages": advantages}


def ours_batch(data: dict, pad_id: int) -> ReflectionBatch:
    return ReflectionBatch.from_token_lists(
        data["prompts"].tolist(),
        data["completions"].tolist(),
        data["advantages"],
        [i // 4 for i in range(len(data["advantages"]))],
        pad_id=pad_id,
    )


def timed(fn: Any, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_plain(base_dir: Path, config: LearnerConfig, data: dict, warmup: int, steps: int) -> float:
    policy = ReflectorPolicy(base_dir, config, seed=0)  # the same peft model and AdamW
    model, opt = policy.model, policy.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    input_ids = torch.cat([data["prompts"], data["completions"]], 1)
    mask = torch.zeros_like(input_ids, dtype=torch.float32)
    mask[:, data["prompts"].shape[1] :] = 1.0
    adv = data["advantages"][:, None]

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=input_ids).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
        loss = -(adv * logp * mask[:, 1:]).sum() / mask[:, 1:].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()

    return timed(step, warmup, steps)


def run_trl(base_dir: Path, config: LearnerConfig, data: dict, warmup: int, steps: int) -> float:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = ReflectorPolicy(base_dir, config, seed=0)
    rows = len(data["advantages"])
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=rows,
            num_generations=4,
            max_completion_length=data["completions"].shape[1],
            loss_type="bnpo",
            beta=0.0,
            use_cpu=True,
            report_to=[],
            max_grad_norm=config.max_grad_norm,
        )
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["x"] * rows}),
            processing_class=policy.tokenizer,
        )
        trainer.current_gradient_accumulation_steps = 1  # set by its training_step; one here
        model, opt = trainer.model, policy.optimizer
        params = [p for p in model.parameters() if p.requires_grad]
        inputs = {
            "prompt_ids": data["prompts"],
            "prompt_mask": torch.ones_like(data["prompts"]),
            "completion_ids": data["completions"],
            "completion_mask": torch.ones_like(data["completions"]),
            "advantages": data["advantages"],
            "num_items_in_batch": torch.tensor(float(data["completions"].numel())),
        }

        def step() -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(model, inputs)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()

        return timed(step, warmup, steps)


def run_local(
    base_dir: Path, config: LearnerConfig, batch: ReflectionBatch, args: argparse.Namespace
) -> float:
    """``ReflectorPolicy.update`` in this process: the plain class without Ray around it."""
    policy = ReflectorPolicy(base_dir, config, seed=0)
    return timed(lambda: policy.update(batch), args.warmup, args.steps)


def run_ours(
    base_dir: Path, config: LearnerConfig, batch: ReflectionBatch, workers: int, n: int, skip: int
) -> dict[str, float]:
    """All ``n`` batches queued up front, so the workers run back to back while the driver only
    waits (its polling would otherwise share the 2 cores with the step being timed)."""
    from retro_ray.learner.distributed import DistributedLearner

    config = replace(config, num_workers=workers, max_staleness=n)
    with tempfile.TemporaryDirectory() as storage:
        learner = DistributedLearner(base_dir, config, storage, name=f"bench{workers}")
        with learner.start():
            for _ in range(n):
                learner.submit(batch)
            learner.finish()
            metrics = learner.metrics()[skip:]
    return {
        "step_s": statistics.median(m["update_time_s"] for m in metrics),
        "batch_wall_s": statistics.median(
            m["fetch_s"] + m["update_time_s"] + m["commit_s"] + m["report_s"] for m in metrics
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=32, help="reflections in the global batch")
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    import ray

    from retro_ray.zoo.build import build_zoo

    torch.set_num_threads(1)
    base_dir = build_zoo("tiny").retrospective_dir
    config = LearnerConfig(
        lora=LoRAConfig(rank=8, alpha=16),
        loss=PolicyLossConfig(name="reinforce"),
        micro_batch_size=args.rows,
    )
    probe = ReflectorPolicy(base_dir, config)
    data = make_batch(
        args.rows, args.prompt_len, args.completion_len, probe.model.config.vocab_size, 0
    )
    batch = ours_batch(data, probe.pad_token_id)
    del probe
    result: dict[str, Any] = {"rows": args.rows, "seq_len": batch.input_ids.shape[1]}
    ray.init(  # first, so that Ray's own processes run during every measurement alike
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    rounds: dict[str, list[float]] = {}
    try:
        n = args.warmup + args.steps
        for _ in range(args.rounds):  # interleaved rounds: load from other jobs hits all alike
            timings = {"plain_step_s": run_plain(base_dir, config, data, args.warmup, args.steps)}
            timings["ours_local_step_s"] = run_local(base_dir, config, batch, args)
            if not args.skip_trl:
                timings["trl_step_s"] = run_trl(base_dir, config, data, args.warmup, args.steps)
            for workers in (1, 2):
                timing = run_ours(base_dir, config, batch, workers, n, args.warmup)
                timings[f"ours_ray_{workers}w_step_s"] = timing["step_s"]
                timings[f"ours_ray_{workers}w_batch_wall_s"] = timing["batch_wall_s"]
            for key, value in timings.items():
                rounds.setdefault(key, []).append(value)
    finally:
        ray.shutdown()
    result.update({key: statistics.median(values) for key, values in rounds.items()})
    result["rounds"] = args.rounds
    ours = result["ours_ray_1w_step_s"]
    result["ours_over_plain"] = result["plain_step_s"] / ours
    if "trl_step_s" in result:
        result["ours_over_trl"] = result["trl_step_s"] / ours
    result["scaling_1_to_2"] = ours / result["ours_ray_2w_step_s"]
    result["load_avg_1m"] = os.getloadavg()[0]
    result["scaling_note"] = (
        "2 workers each compute half the rows, then all-reduce the LoRA gradients (gloo) and take "
        "the same step. This machine has 2 cores shared with the driver, Ray's own processes and "
        "other jobs (see load_avg_1m): when the load is above 2 the second worker finds no idle "
        "core, so the halved compute is lost to contention and the extra process and all-reduce "
        "are pure overhead (scaling near or below 1); on idle cores the ceiling is about 2x less "
        "the all-reduce (1.1-1.3x measured here at lower load). Data parallelism pays with a "
        "core or a GPU per worker and batches large enough to amortise the all-reduce."
    )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
