"""Learner checkpoints: the LoRA adapter (safetensors), the optimizer state, and the data cursor.

Checkpoints live in one directory per learner, ``<root>/cursor_<N>/``, written whole, fsynced
(every file and directory) and then renamed into place by rank 0 (:class:`CheckpointStore`), the
root fsynced after the rename: a crash mid-write leaves only a hidden temporary directory that
nobody reads, and a checkpoint that is visible (and acknowledged to the queue) survives a power cut
with its weights, not as empty files. Why our own store and not Ray Train's checkpoint
bookkeeping: Ray Train registers a reported checkpoint asynchronously, so after a worker crash it
may restore an *older* one than the batches already acknowledged to the queue (seen here: a
restart from no checkpoint after the cursor had been acknowledged). Acknowledging only what is
renamed into place in this store, and restoring from it, makes the cursor and the weights agree.

A checkpoint directory holds::

    adapter/adapter_config.json, adapter/adapter_model.safetensors   (peft format: servable as is)
    optimizer.pt                                                     (AdamW moments and step)
    state.json   {"cursor", "steps", "version", "config_hash", "format"}

``cursor`` is the sequence number of the first queued batch *not* in these weights (see
:mod:`retro_ray.learner.queue`); a restarted worker group loads the checkpoint and asks the queue
for batch ``cursor``, so no batch is lost or applied twice. The optimizer state travels with the
adapter because AdamW's moments are part of the update: without them the resumed run would take
different steps than the uninterrupted one. ``config_hash`` covers the settings that change the
math; resuming under another one is refused rather than silently mixing two runs.

Plain files and torch: no Ray import (Ray Train only moves this directory around).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from retro_ray.config import LearnerConfig, to_dict
from retro_ray.durable import fsync_tree, make_dirs, replace_durably
from retro_ray.learner.policy import NonFiniteAdapter, ReflectorPolicy

FORMAT = 1
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"

# Fields of LearnerConfig that do not change the update (how it is spread, how often it is saved).
_LAYOUT_FIELDS = (
    "micro_batch_size",
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "max_staleness",
    "checkpoint_every",
    "max_failures",
)


@dataclass(frozen=True)
class LearnerState:
    cursor: int  # first batch sequence number not applied to these weights
    steps: int  # optimizer steps taken
    version: int  # registry version of the last published adapter (0: none)
    config_hash: str
    nonfinite_skipped: int = 0  # steps skipped for a NaN/inf loss or gradient norm


class CheckpointMismatch(ValueError):
    """A checkpoint written under other learner settings or another base model."""


def learner_config_hash(config: LearnerConfig, base_dir: str | Path) -> str:
    """sha256 over the update's settings and the base model's ``config.json`` (12 hex digits)."""
    settings = {k: v for k, v in to_dict(config).items() if k not in _LAYOUT_FIELDS}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update((Path(base_dir) / "config.json").read_bytes())
    return h.hexdigest()[:12]


def save_checkpoint(directory: str | Path, policy: ReflectorPolicy, state: LearnerState) -> Path:
    """Write adapter, optimizer and state; ``state.json`` last, so a torn write is incomplete.

    Refused (:class:`~retro_ray.learner.policy.NonFiniteAdapter`, nothing written) when the
    weights or the optimizer's moments hold NaN or inf: a restart would restore them."""
    policy.check_finite("checkpointed")
    bad_moments = _nonfinite_optimizer_state(policy.optimizer)
    if bad_moments:
        raise NonFiniteAdapter(
            f"the optimizer state after {policy.steps} steps holds NaN/inf ({bad_moments}); "
            "not checkpointed"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    policy.save_adapter(directory / ADAPTER_DIR)
    torch.save(policy.optimizer.state_dict(), directory / OPTIMIZER_FILE)
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, **asdict(state)}, indent=2))
    fsync_tree(directory)  # adapter, optimizer and state data on disk before state.json is named
    replace_durably(tmp, directory / STATE_FILE)
    return directory


def _nonfinite_optimizer_state(optimizer: torch.optim.Optimizer) -> str:
    """'' when every tensor of the optimizer's state is finite; else which one is not."""
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and not bool(torch.isfinite(value).all()):
                return f"parameter {index}, {key}"
    return ""


def read_state(directory: str | Path) -> LearnerState:
    data = json.loads((Path(directory) / STATE_FILE).read_text())
    if data.pop("format", None) != FORMAT:
        raise CheckpointMismatch(f"checkpoint {directory} has an unknown format")
    return LearnerState(**data)


def load_checkpoint(
    directory: str | Path, policy: ReflectorPolicy, config_hash: str | None = None
) -> LearnerState:
    """Restore adapter weights and optimizer state into ``policy``; the saved state.

    ``config_hash``: the running learner's (``learner_config_hash``); a different saved one raises
    :class:`CheckpointMismatch`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    state = read_state(directory)
    if config_hash is not None and state.config_hash != config_hash:
        raise CheckpointMismatch(
            f"checkpoint {directory} was written with learner config {state.config_hash}, "
            f"this learner runs {config_hash}"
        )
    device = next(policy.model.parameters()).device
    weights = load_file(directory / ADAPTER_DIR / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(policy.model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise CheckpointMismatch(f"checkpoint {directory}: unexpected adapter keys {unexpected}")
    optimizer_state = torch.load(directory / OPTIMIZER_FILE, map_location=device)
    policy.optimizer.load_state_dict(optimizer_state)
    policy.steps = state.steps
    policy.nonfinite_skipped = state.nonfinite_skipped
    policy.check_finite(f"restored from {directory} (delete that checkpoint to resume before it)")
    return state


class CheckpointStore:
    """``cursor_<N>`` checkpoint directories under ``root``; only complete ones are visible."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def path(self, cursor: int) -> Path:
        return self.root / f"cursor_{cursor:07d}"

    def cursors(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = self.root.glob(f"cursor_*/{STATE_FILE}")
        return sorted(int(p.parent.name.split("_", 1)[1]) for p in found)

    def latest(self) -> Path | None:
        cursors = self.cursors()
        return self.path(cursors[-1]) if cursors else None

    def write(self, policy: ReflectorPolicy, state: LearnerState) -> Path:
        """Save under a temporary name, then rename into place (atomic on POSIX); prune."""
        final = self.path(state.cursor)
        if final.exists():  # a replay after a crash reached a cursor saved before: same weights
            return final
        make_dirs(self.root)
        tmp = self.root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            save_checkpoint(tmp, policy, state)  # fsyncs the whole directory
            replace_durably(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for cursor in self.cursors()[: -self.keep]:
            shutil.rmtree(self.path(cursor), ignore_errors=True)
        return final


def lora_state(policy: ReflectorPolicy) -> dict[str, torch.Tensor]:
    """The trainable LoRA weights by name, on CPU (what tests and benchmarks compare)."""
    return {
        name: p.detach().float().cpu().clone()
        for name, p in policy.model.named_parameters()
        if p.requires_grad
    }
