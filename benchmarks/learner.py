"""The learner's optimizer step on equal work: ours, TRL's GRPO loss and a plain peft loop in
one process, and ours under Ray Train (1 and 2 workers) apart.

Same tiny model (the zoo's retrospective base), same LoRA settings, same global batch of
reflections (random token ids of varied lengths, advantages of both signs; ``--group-size`` rows
after each prompt, as Retroformer samples ``m`` reflections per failed trial and GRPO
``num_generations`` completions per prompt; 1: every prompt its own), the same micro-batch
size (``--micro-batch``) for everyone, grad clipping and AdamW everywhere, float32, one torch
thread per process, no KL term. Each timing is the median of ``--steps`` optimizer steps after
``--warmup``, then the median over ``--rounds`` interleaved rounds (the machine is shared:
interleaving spreads others' load over every contender):

- ``ours_local``: ``ReflectorPolicy.update`` in this process (``ppo_clip``, kl_coef 0: no
  reference forward; each prompt computed once for its group's rows, ``learner.share_prompts``;
  micro-batches of whole groups, by length, each cut to its longest row);
- ``ours_unshared``: the same with ``share_prompts`` off: every row runs its whole prompt (logits
  only from the first reflection token on), so ``shared_over_unshared`` is the sharing's gain;
- ``trl``: ``GRPOTrainer.compute_loss`` on each micro-batch (TRL slices its padded generation
  batch: left-padded prompts, right-padded completions), backward, clip, step. ``loss_type``
  ``dapo`` is the same clipped, token-level loss over the global token count; beta 0 (no
  reference model); ``gradient_checkpointing``, ``bf16`` and ``fp16`` explicitly off (TRL's
  defaults turn the first two on). The trainer's effective settings are checked (a mismatch
  stops the run) and printed as ``trl_settings``. TRL's step also scores every position through
  its chunked log-prob head with entropies: its own way of working, part of what is compared;
- ``plain``: rows in their order at the batch's padded width, logits at every position,
  REINFORCE loss;
- ``ours_ray_{1,2}w``: the same ``update`` inside the long-lived Ray Train ``fit()``, as timed by
  the worker (2 workers: half the rows each and a gradient all-reduce); ``*_batch_wall_s`` adds
  the rest of a batch's round (queue fetch, checkpoint and publish). ``--skip-ray`` leaves it out.

Ratios are *their time / our in-process time* (above 1: ours is faster): ``ours_over_trl``,
``ours_over_plain``, ``shared_over_unshared``; ``ray_1w_over_local`` and ``scaling_1_to_2`` for Ray Train. Each contender's
``*_tokens_per_s`` is reflection (loss) tokens per second. Figures: the README's performance
section.

    python -m benchmarks.learner --json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
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


def make_batch(
    rows: int, prompt_len: int, completion_len: int, vocab: int, seed: int, group_size: int = 1
) -> dict[str, Any]:
    """Rows of varied lengths, as reflections are: prompts of ``prompt_len/2 .. prompt_len`` and
    completions of ``completion_len/4 .. completion_len`` tokens (seeded); each prompt is the
    prompt of ``group_size`` consecutive rows."""
    g = torch.Generator().manual_seed(seed)

    def lengths(low: int, high: int, n: int = rows) -> list[int]:
        return torch.randint(low, high + 1, (n,), generator=g).tolist()

    distinct = [
        torch.randint(5, vocab, (n,), generator=g).tolist()
        for n in lengths(max(1, prompt_len // 2), prompt_len, -(-rows // group_size))
    ]
    prompts = [distinct[i // group_size] for i in range(rows)]
    completions = [
        torch.randint(5, vocab, (n,), generator=g).tolist()
        for n in lengths(max(1, completion_len // 4), completion_len)
    ]
    advantages = torch.randn(rows, generator=g)
    return {
        "prompts": prompts,
        "completions": completions,
        "advantages": advantages,
        "group_size": group_size,
    }


def ours_batch(data: dict[str, Any], pad_id: int) -> ReflectionBatch:
    return ReflectionBatch.from_token_lists(
        data["prompts"],
        data["completions"],
        data["advantages"],
        [i // data["group_size"] for i in range(len(data["advantages"]))],
        pad_id=pad_id,
    )


def trl_tensors(data: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """TRL's layout of the same rows: prompts left-padded, completions right-padded, masks."""
    p_len = max(map(len, data["prompts"]))
    c_len = max(map(len, data["completions"]))
    rows = len(data["prompts"])
    prompt_ids = torch.full((rows, p_len), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(rows, p_len, dtype=torch.long)
    completion_ids = torch.full((rows, c_len), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(rows, c_len, dtype=torch.long)
    for i, (p, c) in enumerate(zip(data["prompts"], data["completions"], strict=True)):
        prompt_ids[i, p_len - len(p) :] = torch.tensor(p)
        prompt_mask[i, p_len - len(p) :] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": data["advantages"],
        "num_items_in_batch": completion_mask.sum().float(),
    }


def loss_tokens(data: dict[str, Any]) -> int:
    return sum(map(len, data["completions"]))


def timed(fn: Any, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def chunks(rows: int, micro: int) -> list[slice]:
    return [slice(i, min(i + micro, rows)) for i in range(0, rows, micro)]


def run_plain(
    base_dir: Path, config: LearnerConfig, batch: ReflectionBatch, warmup: int, steps: int
) -> float:
    """A naive loop: the rows in their order, micro-batches of ``micro_batch_size`` at the
    batch's full padded width, logits at every position."""
    policy = ReflectorPolicy(base_dir, config, seed=0)  # the same peft model and AdamW
    model, opt = policy.model, policy.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    total = batch.loss_mask[:, 1:].sum()

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        for part in chunks(batch.batch_size, config.micro_batch_size):
            ids, mask = batch.input_ids[part], batch.loss_mask[part, 1:].float()
            out = model(input_ids=ids, attention_mask=batch.attention_mask[part])
            logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])
            loss = -(batch.advantages[part, None] * logp[..., 0] * mask).sum() / total
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()

    return timed(step, warmup, steps)


TRL_SETTINGS = {
    "loss_type": "dapo",  # clipped surrogate over the global token count: ours' ppo_clip
    "beta": 0.0,  # no KL term, so no reference model (ours: kl_coef 0, no reference forward)
    "gradient_checkpointing": False,  # TRL's default is True: recomputes the forward in backward
    "bf16": False,  # TRL's default is True when fp16 is off; ours computes in float32
    "fp16": False,
    "use_cpu": True,
}


def run_trl(
    base_dir: Path,
    config: LearnerConfig,
    inputs: dict[str, torch.Tensor],
    warmup: int,
    steps: int,
    settings: dict[str, Any],
) -> float:
    """TRL's ``GRPOTrainer.compute_loss`` on the same rows, in micro-batches of the same size
    (TRL slices its padded generation batch), backward, clip, step. ``settings`` receives the
    trainer's effective settings, checked against ``TRL_SETTINGS``."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = ReflectorPolicy(base_dir, config, seed=0)
    rows = inputs["advantages"].shape[0]
    micro = config.micro_batch_size
    n_micro = -(-rows // micro)
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=n_micro,
            num_generations=4,
            max_completion_length=inputs["completion_ids"].shape[1],
            report_to=[],
            max_grad_norm=config.max_grad_norm,
            **TRL_SETTINGS,
        )
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["x"] * rows}),
            processing_class=policy.tokenizer,
        )
        model, opt = trainer.model, policy.optimizer
        checks = {
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
            "model_gradient_checkpointing": bool(
                getattr(model, "is_gradient_checkpointing", False)
            ),
            "bf16": bool(trainer.args.bf16),
            "fp16": bool(trainer.args.fp16),
            "beta": float(trainer.beta),
            "ref_model": trainer.ref_model is not None,
            "loss_type": trainer.loss_type,
            "param_dtype": str(next(model.parameters()).dtype),
            "steps_per_generation": int(trainer.args.steps_per_generation),
        }
        expected = {
            "gradient_checkpointing": False,
            "model_gradient_checkpointing": False,
            "bf16": False,
            "fp16": False,
            "beta": 0.0,
            "ref_model": False,
            "loss_type": TRL_SETTINGS["loss_type"],
            "param_dtype": "torch.float32",
            "steps_per_generation": n_micro,
        }
        if checks != expected:
            raise RuntimeError(f"TRL is not set up for equal work: {checks} != {expected}")
        settings.update(checks, trl_version=importlib.metadata.version("trl"))
        trainer.current_gradient_accumulation_steps = n_micro  # set by its training_step
        params = [p for p in model.parameters() if p.requires_grad]
        parts = [
            {k: v if v.dim() == 0 else v[part] for k, v in inputs.items()}
            for part in chunks(rows, micro)
        ]

        def step() -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            for part in parts:
                trainer.compute_loss(model, part).backward()
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
    p.add_argument("--micro-batch", type=int, default=8, help="rows per forward pass, everyone")
    p.add_argument("--prompt-len", type=int, default=96, help="longest prompt (tokens)")
    p.add_argument("--completion-len", type=int, default=32, help="longest reflection (tokens)")
    p.add_argument(
        "--group-size",
        type=int,
        default=4,
        help="rows per prompt (Retroformer's m; 1: none shared)",
    )
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-ray", action="store_true", help="in-process contenders only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing and not args.skip_trl:
        p.error(
            f"TRL is not installed ({', '.join(missing)} missing): install the bench extra, "
            "pip install -e '.[bench]', or pass --skip-trl"
        )

    import ray

    from retro_ray.zoo.build import build_zoo

    torch.set_num_threads(1)
    base_dir = build_zoo("tiny").retrospective_dir
    config = LearnerConfig(
        lora=LoRAConfig(rank=8, alpha=16),
        loss=PolicyLossConfig(name="ppo_clip", kl_coef=0.0),
        micro_batch_size=args.micro_batch,
    )
    probe = ReflectorPolicy(base_dir, config)
    data = make_batch(
        args.rows,
        args.prompt_len,
        args.completion_len,
        probe.model.config.vocab_size,
        0,
        args.group_size,
    )
    batch = ours_batch(data, probe.pad_token_id)
    trl_inputs = trl_tensors(data, probe.pad_token_id)
    del probe
    tokens = loss_tokens(data)
    result: dict[str, Any] = {
        "rows": args.rows,
        "micro_batch": args.micro_batch,
        "group_size": args.group_size,
        "seq_len_padded": batch.input_ids.shape[1],
        "positions_real": int(batch.attention_mask.sum()),
        "loss_tokens": tokens,
        "kl_coef": config.loss.kl_coef,
    }
    if not args.skip_ray:
        ray.init(  # first, so that Ray's own processes run during every measurement alike
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
    rounds: dict[str, list[float]] = {}
    trl_settings: dict[str, Any] = {}
    try:
        n = args.warmup + args.steps
        for _ in range(args.rounds):  # interleaved rounds: load from other jobs hits all alike
            timings = {"plain_step_s": run_plain(base_dir, config, batch, args.warmup, args.steps)}
            timings["ours_local_step_s"] = run_local(base_dir, config, batch, args)
            unshared = replace(config, share_prompts=False)
            timings["ours_unshared_step_s"] = run_local(base_dir, unshared, batch, args)
            if not args.skip_trl:
                timings["trl_step_s"] = run_trl(
                    base_dir, config, trl_inputs, args.warmup, args.steps, trl_settings
                )
            for workers in () if args.skip_ray else (1, 2):
                timing = run_ours(base_dir, config, batch, workers, n, args.warmup)
                timings[f"ours_ray_{workers}w_step_s"] = timing["step_s"]
                timings[f"ours_ray_{workers}w_batch_wall_s"] = timing["batch_wall_s"]
            for key, value in timings.items():
                rounds.setdefault(key, []).append(value)
    finally:
        if not args.skip_ray:
            ray.shutdown()
    result.update({key: statistics.median(values) for key, values in rounds.items()})
    result["each_round"] = rounds
    result["rounds"] = args.rounds
    for key in [k for k in result if k.endswith("_step_s")]:
        result[key.replace("_step_s", "_tokens_per_s")] = tokens / result[key]
    ours = result["ours_local_step_s"]  # same process as TRL and the plain loop
    result["ours_over_plain"] = result["plain_step_s"] / ours
    result["shared_over_unshared"] = result["ours_unshared_step_s"] / ours
    if "trl_step_s" in result:
        result["ours_over_trl"] = result["trl_step_s"] / ours
        result["trl_settings"] = trl_settings
    if not args.skip_ray:
        result["ray_1w_over_local"] = ours / result["ours_ray_1w_step_s"]
        result["scaling_1_to_2"] = result["ours_ray_1w_step_s"] / result["ours_ray_2w_step_s"]
        result["scaling_note"] = (
            "2 workers each compute half the rows, then all-reduce the LoRA gradients (gloo) and "
            "take the same step: the ceiling is 2x less the all-reduce, reached only with an idle "
            "core per worker (compare load_avg_1m with the cores)."
        )
    result["load_avg_1m"] = os.getloadavg()[0]
    result["cores"] = os.cpu_count()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
