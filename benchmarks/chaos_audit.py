"""The chaos run's proof (``benchmarks.chaos``), read from what a run left on disk: no record or
batch lost or counted twice, no request to the Serve app failed for good (and how many were
retried), the adapter weights step by step against a clean run's, and held-out success of the
trained adapters."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.chaos_faults import RunResult

EXIT_ENDPOINT = 3  # retro-ray's exit code for an unreachable endpoint (retro_ray.cli)


def required_keys(main: dict[int, tuple[bool, bool]], max_trials: int, m: int) -> set[tuple]:
    """The (trial, sample) keys the branching rule requires of one episode, given its main chain
    (trial -> (won, failed)): trial 0; after each failed main-chain trial k < max_trials - 1
    that neither won nor stopped on bad input, samples 0..m-1 of trial k + 1."""
    keys = {(0, 0)}
    k = 0
    while k in main and k < max_trials - 1:
        won, failed = main[k]
        if won or failed:
            break
        keys |= {(k + 1, i) for i in range(m)}
        k += 1
    return keys


def audit_experience(run_dir: Path, cfg: Any) -> dict[str, int]:
    """Every (task, trial, sample) the branching rule requires, exactly once (see the module
    docstring)."""
    from retro_ray.driver.train import train_tasks
    from retro_ray.rollout.experience import ExperienceLog

    log_ = ExperienceLog(run_dir / "experience")
    columns = ["iteration", "task_id", "trial", "sample", "won", "failure"]
    rows = log_.read(cfg.run.name, columns=columns).to_pylist()
    counts = Counter((r["iteration"], r["task_id"], r["trial"], r["sample"]) for r in rows)
    main = {
        (r["iteration"], r["task_id"], r["trial"]): (bool(r["won"]), r["failure"] is not None)
        for r in rows
        if r["sample"] == 0
    }
    tasks, per = train_tasks(cfg), cfg.train.failed_trials_per_iteration
    required: set[tuple] = set()
    for it in range(cfg.train.iterations):
        for task in tasks[it * per : (it + 1) * per]:
            chain = {t: v for (i, tid, t), v in main.items() if i == it and tid == task.task_id}
            keys = required_keys(chain, cfg.trials.max_trials, cfg.train.group_size)
            required |= {(it, task.task_id, *key) for key in keys}
    quarantine = run_dir / "experience" / "_quarantine"
    return {
        "records": len(rows),
        "required_records": len(required),
        "lost_records": len(required - set(counts)),
        "duplicate_records": sum(n - 1 for n in counts.values() if n > 1),
        "unexpected_records": len(set(counts) - required),
        "rejected_requests": sum(r["failure"] is not None for r in rows),
        "quarantined_files": sum(1 for p in quarantine.rglob("*") if p.is_file())
        if quarantine.is_dir()
        else 0,
    }


def audit_learner(run_dir: Path, cfg: Any) -> dict[str, Any]:
    """Batches: the checkpoint cursor against the iterations' submitted batches, the learner's
    cursors in the records, the registry's versions against the steps."""
    from retro_ray.learner.checkpoint import CheckpointStore, read_state
    from retro_ray.registry import AdapterRegistry

    records = read_jsonl(run_dir / "metrics.jsonl")
    iterations = [r["iteration"] for r in records]
    submitted = sum(1 for r in records if r["groups"] and not r.get("dropped"))
    store = CheckpointStore(run_dir / "learner" / "learner" / "checkpoints")
    latest = store.latest()
    cursor = read_state(latest).cursor if latest is not None else 0
    seqs = [int(r["learner_cursor"]) for r in records if "learner_cursor" in r]
    registry = AdapterRegistry(
        cfg.registry.root or run_dir / "registry", cfg.serve.model_dir, cfg.registry.name
    )
    steps = [registry.get(version).step for version in registry.versions()]
    digests = step_digests(run_dir)
    return {
        "iteration_records": len(records),
        "iterations_recorded_once": sorted(iterations) == list(range(cfg.train.iterations)),
        "batches_submitted": submitted,
        "checkpoint_cursor": cursor,
        "lost_batches": max(0, submitted - cursor),
        "duplicate_batches": max(0, cursor - submitted)
        + sum(len(d) - 1 for d in digests.values())
        + (len(seqs) - len(set(seqs))),
        "record_cursors_increasing": seqs == sorted(set(seqs)),
        "registry_versions": len(steps),
        "registry_steps": sorted(digests),
        "registry_steps_consecutive": sorted(digests) == list(range(1, cursor + 1)),
        "republished_versions": len(steps) - len(digests),
    }


def step_digests(run_dir: Path) -> dict[int, set[str]]:
    """learner step -> the weights' digests of the registry's versions of that step."""
    from retro_ray.evaluation.play import run_config
    from retro_ray.registry import AdapterRegistry

    cfg = run_config(run_dir)
    registry = AdapterRegistry(
        cfg.registry.root or run_dir / "registry", cfg.serve.model_dir, cfg.registry.name
    )
    digests: dict[int, set[str]] = {}
    for version in registry.versions():
        meta = registry.get(version)
        digests.setdefault(meta.step, set()).add(_digest(meta.files))
    return digests


def compare_weights(chaos_dir: Path, clean_dir: Path) -> dict[str, int]:
    """Steps whose adapter weights are bitwise those of the clean run with the same seeds
    (sampling is seeded per task, trial and sample, and the learner's state is checkpointed
    whole, so a run that loses or repeats nothing can match the clean run exactly)."""
    chaos, clean = step_digests(chaos_dir), step_digests(clean_dir)
    return {
        "steps_compared": len(clean),
        "steps_identical": sum(chaos.get(step) == digest for step, digest in clean.items()),
    }


def _digest(files: dict[str, str]) -> str:
    """The weights' digest (the config's module list is a set, saved in any order)."""
    weights = sorted((name, sha) for name, sha in files.items() if not name.endswith(".json"))
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


FAILED_LINE = re.compile(r"request failed for good")
WORKER_PREFIX = re.compile(r"(\x1b\[\d+m)?\([^)]*pid=\d+")  # "(RolloutWorker pid=12) ..."
RETRY_LINE = re.compile(r"endpoint \S+ \(model [^)]*\): .*; retry \d+/\d+ in")


def audit_requests(result: RunResult, cluster_logs: Path, experience: dict[str, int]) -> dict:
    """Requests to the Serve app that failed: for good (reached the caller) and retried."""
    driver_text = "\n".join(p.read_text(errors="replace") for p in result.driver_logs)
    pool_failures = len(FAILED_LINE.findall(driver_text))
    gates = read_jsonl(result.run_dir / "gates.jsonl")
    gate_errors = sum(1 for g in gates if g.get("outcome") == "error")
    endpoint_exits = sum(1 for c in result.exit_codes if c == EXIT_ENDPOINT)
    # The driver's own requests (the gate's); the workers' lines it relays are in their files.
    own = [line for line in driver_text.splitlines() if not WORKER_PREFIX.match(line)]
    retried = len(RETRY_LINE.findall("\n".join(own)))
    for path in cluster_logs.rglob("worker-*.err") if cluster_logs.is_dir() else []:
        retried += len(RETRY_LINE.findall(path.read_text(errors="replace")))
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    return {
        "failed_requests": pool_failures
        + experience["rejected_requests"]
        + gate_errors
        + endpoint_exits,
        "failed_requests_by_source": {
            "rollout_gave_up": pool_failures,
            "rejected": experience["rejected_requests"],
            "gate_errors": gate_errors,
            "driver_endpoint_exits": endpoint_exits,
        },
        "failed_requests_in_metrics": sum(r.get("failed_requests", 0) for r in records),
        "retried_requests": retried,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def audit_run(result: RunResult, cluster_logs: Path) -> dict[str, Any]:
    from retro_ray.evaluation.play import run_config

    cfg = run_config(result.run_dir)
    experience = audit_experience(result.run_dir, cfg)
    return {
        **experience,
        **audit_learner(result.run_dir, cfg),
        **audit_requests(result, cluster_logs, experience),
        "driver_incarnations": len(result.driver_logs),
        "unexpected_driver_exits": result.unexpected_exits,
    }


# -- held-out success ----------------------------------------------------------------------------


def heldout_success(run_dir: Path, eval_dir: Path, tasks: int, seeds: int) -> dict[str, Any]:
    """Retroformer (greedy) of the run's trained adapter on the test tasks: last-trial success
    and its bootstrap ci95."""
    from retro_ray.evaluation.play import evaluate_run

    table = evaluate_run(
        run_dir,
        ["retroformer"],
        seeds,
        [f"env.num_tasks={tasks}"],
        eval_dir,
        decodings=("greedy",),
        progress=False,
    )
    row = table["agents"]["retroformer-greedy"]
    return {
        "success": row["success_by_trial"][-1],
        "ci95": row["ci95"],
        "adapter": table["adapter"],
    }


def compare_heldout(chaos: dict[str, Any], clean: list[dict[str, Any]]) -> dict[str, Any]:
    """The chaos run against the clean run with its seeds (``clean[0]``), within the spread."""
    values = [c["success"] for c in clean]
    lo, hi = clean[0]["ci95"]
    spread = max(max(values) - min(values), (hi - lo) / 2)
    delta = chaos["success"] - clean[0]["success"]
    return {
        "heldout_success_chaos": chaos["success"],
        "heldout_success_clean": clean[0]["success"],
        "heldout_success_clean_seeds": values,
        "heldout_delta": round(delta, 4),
        "spread": round(spread, 4),
        "spread_from": "max(range over clean seeds, half-width of the clean run's ci95)",
        "heldout_within_spread": abs(delta) <= spread + 1e-9,
        "adapters": {"chaos": chaos["adapter"], "clean": [c["adapter"] for c in clean]},
    }
