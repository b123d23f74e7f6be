"""A training run's ``config.json``: written by the first run, compared on every resume.

A rerun with the same run directory resumes it (collected iterations and applied batches are
skipped). Resuming under another configuration would silently mix two experiments in one log,
one adapter history and one learner state (another seed, learning rate, environment or model),
so the recorded configuration is compared with the new one and any difference outside
``RESUMABLE`` is refused, listing each differing field with its recorded and new value.

What may change on resume (``RESUMABLE``), and why it is safe:

- ``train.iterations``: extend a run (or stop it sooner); finished iterations are skipped and the
  task list of the first iterations does not depend on the total;
- ``train.promote_every``, ``registry.require_approval``: when the gate runs, and whether a person
  approves its promotions; never what is trained;
- ``run.output_dir``: the same run directory reached by another path;
- ``trials.concurrency``, ``rollout.*``: how collection is spread over processes and retried, not
  what is collected;
- the learner's layout (``num_workers``, ``use_gpu``, ``cpus_per_worker``, ``max_failures``,
  ``micro_batch_size``, ``max_staleness``): the fields its own checkpoint hash leaves out as well;
- serving's deployment (host, port, replicas and their resources, timeouts, logging) and the
  endpoints' transport settings (``api_key_env``, ``timeout_s``, ``max_retries``, ``backoff_s``,
  ``max_concurrency``, ``http_transport``): where and how requests go, not what answers them.

After an accepted resume ``config.json`` holds the new configuration (``retro-ray eval --run``
reads it). Fields added to the configuration since the run was recorded compare against their
defaults, so upgrading the code does not block resuming a run made before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

from retro_ray.config import Config, ConfigError, to_dict
from retro_ray.durable import replace_durably

CONFIG_FILE = "config.json"

_ENDPOINT_TRANSPORT = (
    "api_key_env",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_concurrency",
    "http_transport",
)
_SERVE_DEPLOYMENT = (
    "host",
    "port",
    "num_replicas",
    "autoscaling",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "replica_cpus",
    "replica_gpus",
    "max_ongoing_requests",
    "gpu_memory_utilization",
    "access_log",
    "engine_log_level",
    "cpu_threads",
    "kv_cache_gib",
    "max_loras",
    "swap_timeout_s",
    "poll_interval_s",
    "api_key_env",
)
_LEARNER_LAYOUT = (
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "max_failures",
    "micro_batch_size",
    "max_staleness",
)

RESUMABLE: tuple[str, ...] = (
    "run.output_dir",
    "train.iterations",
    "train.promote_every",
    "registry.require_approval",
    "trials.concurrency",
    "rollout.*",
    *(f"learner.{name}" for name in _LEARNER_LAYOUT),
    *(f"serve.{name}" for name in _SERVE_DEPLOYMENT),
    *(f"actor.endpoint.{name}" for name in _ENDPOINT_TRANSPORT),
    *(f"reflector.endpoint.{name}" for name in _ENDPOINT_TRANSPORT),
)
"""Dotted fields (``section.*``: the whole section) a resumed run may change; see the module doc."""

_LISTED = 20  # differing fields named in the error, at most


@dataclasses.dataclass(frozen=True)
class Change:
    field: str
    recorded: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.field}: {_short(self.recorded)} -> {_short(self.current)}"


def record_config(run_dir: Path, cfg: Config) -> list[Change]:
    """Write ``run_dir/config.json`` for a new run; for a resumed one first compare, raising
    ``ConfigError`` for any change outside ``RESUMABLE``. Returns the resumable changes."""
    path = run_dir / CONFIG_FILE
    current = _plain(to_dict(cfg))
    changes: list[Change] = []
    if path.is_file():
        changes = config_changes(_read_recorded(path), current)
        refused = [c for c in changes if not resumable(c.field)]
        if refused:
            raise ConfigError(_refusal(run_dir, refused))
    _write_json(path, current)
    return changes


def config_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[Change]:
    """Every leaf field of the configuration tree whose value differs, in tree order. A field the
    record lacks (added to the code since) counts with its default."""
    defaults = _plain(to_dict(Config()))
    changes = []
    for field in _leaf_fields(Config):
        now = _lookup(current, field)
        before = _lookup(recorded, field, default=_lookup(defaults, field))
        if before != now:
            changes.append(Change(field, before, now))
    return changes


def resumable(field: str) -> bool:
    return any(
        field == allowed or (allowed.endswith(".*") and field.startswith(allowed[:-1]))
        for allowed in RESUMABLE
    )


def _leaf_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of the tree's leaves (a free-form mapping like ``env.options`` is a leaf)."""
    out = []
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in hints.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out.extend(_leaf_fields(type(default), f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


_MISSING = object()


def _lookup(tree: Any, field: str, default: Any = _MISSING) -> Any:
    node = tree
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None if default is _MISSING else default
        node = node[part]
    return node


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """As JSON has it (tuples become lists), so a recorded file and a live config compare."""
    return json.loads(json.dumps(data))


def _read_recorded(path: Path) -> dict[str, Any]:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} (the run's recorded configuration) cannot be read ({exc}); restore it or "
            "delete the run directory to start over"
        ) from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} does not hold a configuration mapping")
    return recorded


def _refusal(run_dir: Path, refused: list[Change]) -> str:
    listed = "; ".join(str(c) for c in refused[:_LISTED])
    more = f" (and {len(refused) - _LISTED} more)" if len(refused) > _LISTED else ""
    return (
        f"{run_dir} holds a run recorded with another configuration, and resuming it with this "
        f"one would mix two experiments. Differing fields (recorded -> now): {listed}{more}. "
        f"Give the new run its own run.name, or delete {run_dir} to start over. Fields a resume "
        f"may change: {', '.join(RESUMABLE)}"
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(json.dumps(data, indent=2))
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
