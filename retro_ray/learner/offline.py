"""Offline training of the retrospective model from an existing Parquet experience log.

Rows with a reward are reflections with their measured return gain; rows that share
``(run, iteration, task_id, trial)`` are one group (the ``m`` branches written after the same
failed trial: same prompt, same ``G(k)``), and the group baseline of
:mod:`retro_ray.algo.rewards` turns rewards into advantages. Then, per batch of groups:

- **Our own logs** (every row holds the engine's ``reflection_token_ids`` and
  ``reflection_logprobs``): ``ppo_clip`` with the clipped importance ratio
  ``pi_theta / pi_behaviour``, the behaviour log-probs being the log's (``recompute_old=False``):
  the data came from an older adapter (or the base), so the ratio is what corrects for it.
- **Foreign logs** (another model, a paid API: no token ids or log-probs of ours): reward-weighted
  likelihood (``rwr``), which needs no behaviour log-probs. Only in this case is the reflection
  *text* re-tokenised with our tokenizer (there are no engine ids to use); the ids may differ from
  what our engine would have sampled, which a likelihood weight tolerates and a ratio would not.

Prompt ids are the engine's, as logged (``reflection_prompt_token_ids``, schema 3: after the chat
template where the reflector speaks chat), exactly what the sampled tokens followed; only rows
without them (older logs, foreign logs) have their prompt text tokenised with the policy's
tokenizer, which is right only for a completion-format prompt.

Departure from the paper: Retroformer trains offline with SFT, then a learned reward model, then
PPO. We do direct policy gradient on the *measured* rewards in the log with a group baseline: the
reward of a reflection is observed on the next trial, so a reward model would only add bias and a
training stage.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import pyarrow as pa
import torch

from retro_ray.algo import ReflectionBatch, compute_advantages
from retro_ray.config import LearnerConfig

OfflineLoss = Literal["auto", "ppo_clip", "rwr"]


class ExperienceSource(Protocol):
    """What the learner needs of an experience log: its rows as a table (the rollouts' Parquet
    ``retro_ray.rollout.experience.ExperienceLog`` is one; the learner does not import it, so
    that learner and rollout depend only on what lies below both)."""

    def read(self, run_id: str | None = None) -> pa.Table: ...


@dataclass(frozen=True)
class OfflineGroup:
    """The reflections written after one failed trial, as logged."""

    key: tuple[str, int, str, int]  # (run, iteration, task_id, trial)
    prompt: str
    reflections: tuple[str, ...]
    rewards: tuple[float, ...]
    token_ids: tuple[list[int], ...] | None  # engine ids per reflection; None: foreign log
    logprobs: tuple[list[float], ...] | None  # behaviour log-probs per reflection token
    prompt_ids: list[int] | None = None  # the engine's prompt ids; None: tokenise ``prompt``

    @property
    def has_logprobs(self) -> bool:
        return self.token_ids is not None and self.logprobs is not None


def load_groups(
    log: ExperienceSource | pa.Table, run_id: str | None = None, min_size: int = 2
) -> list[OfflineGroup]:
    """Groups of rewarded reflections, in a stable order (run, iteration, task, trial).

    Groups smaller than ``min_size`` are dropped: a lone reflection has no baseline to compare
    with (its advantage would be 0)."""
    table = log if isinstance(log, pa.Table) else log.read(run_id)
    rows = [
        r
        for r in table.to_pylist()
        if r.get("reward") is not None and r.get("reflection") and r.get("prompt")
    ]
    by_key: dict[tuple[str, int, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        key = (str(r.get("run", "")), int(r.get("iteration") or 0), r["task_id"], int(r["trial"]))
        by_key.setdefault(key, []).append(r)
    groups = []
    for key in sorted(by_key):
        members = sorted(by_key[key], key=lambda r: r["sample"])
        if len(members) < min_size:
            continue
        ours = all(r["reflection_token_ids"] and r["reflection_logprobs"] for r in members)
        prompt_ids = _shared_prompt_ids(members, key)
        groups.append(
            OfflineGroup(
                key=key,
                prompt=members[0]["prompt"],
                reflections=tuple(r["reflection"] for r in members),
                rewards=tuple(float(r["reward"]) for r in members),
                token_ids=tuple(list(r["reflection_token_ids"]) for r in members) if ours else None,
                logprobs=tuple(list(r["reflection_logprobs"]) for r in members) if ours else None,
                prompt_ids=prompt_ids,
            )
        )
    return groups


def _shared_prompt_ids(
    members: Sequence[dict[str, Any]], key: tuple[str, int, str, int]
) -> list[int] | None:
    """The engine's prompt ids of a group (every member saw the same prompt), or None where the
    log has none (schema < 3, foreign logs)."""
    found = [r.get("reflection_prompt_token_ids") for r in members]
    if not all(found):
        return None
    first = list(found[0])
    if any(list(ids) != first for ids in found[1:]):
        raise ValueError(f"group {key}: its reflections were sampled after different prompt ids")
    return first


def resolve_loss(groups: Sequence[OfflineGroup], loss: OfflineLoss = "auto") -> str:
    """``ppo_clip`` when every group holds our ids and log-probs, else ``rwr`` (see module doc)."""
    if loss == "auto":
        return "ppo_clip" if groups and all(g.has_logprobs for g in groups) else "rwr"
    if loss == "ppo_clip" and not all(g.has_logprobs for g in groups):
        raise ValueError("ppo_clip needs the log's token ids and log-probs on every reflection")
    return loss


def offline_config(config: LearnerConfig, loss_name: str) -> LearnerConfig:
    """The learner config with the offline loss (one pass per batch; epochs over the log)."""
    return replace(config, loss=replace(config.loss, name=loss_name), epochs_per_batch=1)


def offline_batches(
    groups: Sequence[OfflineGroup],
    tokenizer: Any,
    pad_id: int | None,
    config: LearnerConfig,
    groups_per_batch: int,
    *,
    loss_name: str,
    seed: int = 0,
) -> list[ReflectionBatch]:
    """Shuffled batches of whole groups, advantages by the configured group baseline.

    With ``rwr`` the behaviour log-probs are left out, and rows without engine ids are
    re-tokenised from their text (foreign logs only)."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    return [
        group_batch(
            [groups[i] for i in order[start : start + groups_per_batch]],
            tokenizer,
            pad_id,
            config,
            loss_name=loss_name,
        )[0]
        for start in range(0, len(order), groups_per_batch)
    ]


def group_batch(
    chunk: Sequence[OfflineGroup],
    tokenizer: Any,
    pad_id: int | None,
    config: LearnerConfig,
    *,
    loss_name: str,
) -> tuple[ReflectionBatch, dict[str, float]]:
    """One batch of whole groups (advantages by the group baseline) and the advantage stats. With
    ``rwr`` the behaviour log-probs are left out. Prompt and reflection ids are the engine's;
    only groups logged without them are tokenised from their text, with ``tokenizer`` (None:
    such groups are an error). ``pad_id``: any id for padding positions (None: 0; masked)."""
    if not chunk:
        raise ValueError("no reflection groups: nothing to learn from")
    rewards = torch.tensor([r for g in chunk for r in g.rewards])
    group_ids = torch.tensor([i for i, g in enumerate(chunk) for _ in g.rewards])
    advantages, stats = compute_advantages(
        config.advantage_estimator, rewards, group_ids, normalize_std=config.normalize_std
    )
    prompt_ids, reflection_ids, logprobs = [], [], []
    for g in chunk:
        if g.prompt_ids is None or g.token_ids is None:
            _need_tokenizer(tokenizer, g)
        p = g.prompt_ids if g.prompt_ids is not None else tokenizer(g.prompt)["input_ids"]
        for i, text in enumerate(g.reflections):
            prompt_ids.append(p)
            if g.token_ids is not None:
                reflection_ids.append(g.token_ids[i])
            else:  # foreign log: the text is all there is
                reflection_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            if g.logprobs is not None:
                logprobs.append(g.logprobs[i])
    batch = ReflectionBatch.from_token_lists(
        prompt_ids,
        reflection_ids,
        advantages,
        group_ids,
        pad_id=0 if pad_id is None else pad_id,
        rewards=rewards,
        old_logprobs=logprobs if loss_name == "ppo_clip" and logprobs else None,
    )
    return batch, stats


def _need_tokenizer(tokenizer: Any, group: OfflineGroup) -> None:
    if tokenizer is None:
        raise ValueError(
            f"group {group.key} has no engine token ids (a log older than schema 3, or a "
            "foreign one): pass the retrospective model's tokenizer to tokenise its text"
        )


def train_offline(
    policy: Any,
    groups: Sequence[OfflineGroup],
    *,
    epochs: int = 1,
    groups_per_batch: int = 16,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train ``policy`` (a :class:`~retro_ray.learner.policy.ReflectorPolicy` built with
    :func:`offline_config`) in this process; per-batch metrics. For data-parallel training
    submit :func:`offline_batches` to a ``DistributedLearner(..., recompute_old=False)``."""
    loss_name = policy.config.loss.name
    metrics = []
    for epoch in range(epochs):
        for batch in offline_batches(
            groups,
            policy.tokenizer,
            policy.pad_token_id,
            policy.config,
            groups_per_batch,
            loss_name=loss_name,
            seed=seed + epoch,
        ):
            metrics.append({**policy.update(batch, recompute_old=False), "epoch": float(epoch)})
    return metrics
