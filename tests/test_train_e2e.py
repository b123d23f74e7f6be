"""``retro-ray train`` end to end on the tiny zoo: Serve (torch backend), the rollout pool, the
Ray Train learner, the registry, hot-swap and the promotion gate, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_command_collects_learns_publishes_and_gates(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    env = {**os.environ, "RETRO_RAY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "retro_ray.cli",
        "train",
        "--config",
        "configs/train_tiny.yaml",
        "--set",
        f"run.output_dir={tmp_path / 'runs'}",
        "--set",
        f"registry.root={tmp_path / 'registry'}",
        "--set",
        "serve.port=8127",
        "--json",
        str(summary_path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["iterations"] == 2
    assert summary["train_version"] >= 2  # the learner published after each update

    run_dir = Path(summary["run_dir"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1]
    learned = [m for m in metrics if "version" in m]
    assert learned and all(m["swap_s"] < 120 for m in learned)

    # Every group in the log has exactly m = 2 branches, each with engine token ids.
    table = ds.dataset(run_dir / "experience", format="parquet", partitioning="hive").to_table()
    rows = [r for r in table.to_pylist() if r["reward"] is not None]
    assert rows
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["iteration"], r["task_id"], r["trial"]), []).append(r)
    assert all(sorted(r["sample"] for r in g) == [0, 1] for g in groups.values())
    assert all(r["reflection_token_ids"] for r in rows)

    events = (tmp_path / "registry" / "events.jsonl").read_text()
    assert '"gate"' in events  # the promotion gate ran and recorded its decision
