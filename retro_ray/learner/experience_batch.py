"""From the Parquet experience log to the learner's batch: reflection groups, group baselines,
token ids.

A group is every reflection written for the same failed trial: the rows of one (run, iteration,
task, trial) that carry a reflection and a reward. Reflection token ids and log-probs come from
the log (the sampler's own); the prompt ``x`` is tokenised with the retrospective model's
tokenizer, as the engine did. Rows logged without token ids (another model's or a paid API's
reflections) are tokenised from their text, and carry no old log-probs: the offline path then
trains them with reward-weighted likelihood instead of the clipped ratio.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from retro_ray.algo import ReflectionBatch, compute_advantages

Row = dict[str, Any]


def reflection_groups(table: pa.Table) -> list[list[Row]]:
    """Rows with a reflection and a reward, grouped by the failed trial they answer, in a stable
    order (by run, iteration, task, trial; samples by index)."""
    mask = pc.and_(pc.is_valid(table["reward"]), pc.is_valid(table["reflection"]))
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in table.filter(mask).to_pylist():
        key = (row.get("run"), row.get("iteration"), row["task_id"], row["trial"])
        groups[key].append(row)
    return [sorted(groups[k], key=lambda r: r["sample"]) for k in sorted(groups, key=str)]


def batch_from_groups(
    groups: Sequence[Sequence[Row]],
    tokenize: Callable[[str], list[int]],
    pad_id: int,
    estimator: str = "leave_one_out",
    normalize_std: bool = False,
) -> tuple[ReflectionBatch, dict[str, float]]:
    """The learner's batch (advantages from the group baseline) and the advantage statistics."""
    rows = [row for group in groups for row in group]
    if not rows:
        raise ValueError("no reflection rows with rewards: nothing to learn from")
    group_ids = [i for i, group in enumerate(groups) for _ in group]
    rewards = [float(row["reward"]) for row in rows]
    advantages, stats = compute_advantages(
        estimator, torch.tensor(rewards), torch.tensor(group_ids), normalize_std=normalize_std
    )
    ours = all(row.get("reflection_token_ids") for row in rows)
    reflection_ids = [
        list(row["reflection_token_ids"]) if ours else tokenize(row["reflection"] + "\n")[1:]
        for row in rows
    ]
    old = (
        [list(row["reflection_logprobs"]) for row in rows] if ours and _has_logprobs(rows) else None
    )
    batch = ReflectionBatch.from_token_lists(
        [tokenize(row["prompt"]) for row in rows],
        reflection_ids,
        advantages,
        group_ids,
        pad_id=pad_id,
        rewards=rewards,
        old_logprobs=old,
    )
    stats["has_sampler_logprobs"] = float(old is not None)
    return batch, stats


def _has_logprobs(rows: Sequence[Row]) -> bool:
    return all(
        row.get("reflection_logprobs") is not None
        and len(row["reflection_logprobs"]) == len(row["reflection_token_ids"])
        for row in rows
    )
