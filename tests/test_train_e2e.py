"""``retro-ray train`` end to end on the tiny zoo: Serve (torch backend), the rollout pool, the
Ray Train learner, the registry, hot-swap and the promotion gate, run as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parent.parent


def retro_ray_cli(tmp_path: Path, *args: str) -> str:
    """Run ``retro-ray ARGS`` as a user does (a fresh process, its own local Ray); its stdout."""
    env = {**os.environ, "RETRO_RAY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "retro_ray.cli", *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # The console shows the command's own lines; Ray's, Serve's and the workers' go to the Ray
    # session's log folder, which the command names (retro_ray.ray_cluster).
    relayed = [line for line in done.stderr.splitlines() if RAY_CONSOLE_LINE.search(line)]
    assert not relayed, relayed[:5]
    if args[0] == "train":  # starts a local Ray
        assert "[ray] Ray's, Serve's and vLLM's logs: " in done.stderr
    return done.stdout


RAY_CONSOLE_LINE = re.compile(r"\((\w|[:.-])+ pid=\d+\)|^INFO \S+ \S+ serve \d+ --")


def run_train_tiny(tmp_path: Path, *overrides: str) -> tuple[dict[str, Any], list[dict]]:
    """``retro-ray train --config configs/train_tiny.yaml`` with everything under ``tmp_path``;
    the summary and the per-iteration records of ``metrics.jsonl``."""
    summary_path = tmp_path / "summary.json"
    retro_ray_cli(
        tmp_path,
        "train",
        "--config",
        "configs/train_tiny.yaml",
        "--set",
        f"run.output_dir={tmp_path / 'runs'}",
        "--set",
        f"registry.root={tmp_path / 'registry'}",
        *(arg for override in overrides for arg in ("--set", override)),
        "--json",
        str(summary_path),
    )
    summary = json.loads(summary_path.read_text())
    run_dir = Path(summary["run_dir"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two `retro-ray train` runs (the second resumes the first), 4 evals
def test_train_command_collects_learns_publishes_and_gates(tmp_path: Path) -> None:
    summary, metrics = run_train_tiny(tmp_path, "serve.port=8127")
    assert summary["iterations"] == 2 and summary["overlap"] is False
    assert [m["iteration"] for m in metrics] == [0, 1]
    # An iteration whose tasks were all won at trial 1 has no group to learn from.
    learned = [m for m in metrics if m["groups"]]
    assert learned and all("version" in m and m["swap_s"] < 120 for m in learned)
    assert summary["train_version"] >= len(learned)  # published after each update
    assert all(m["staleness"] == 0 for m in learned)  # synchronous: strictly on-policy
    assert all(m["learner_staleness"] == 0 for m in learned)  # the learner's own count agrees

    # Every group in the log has exactly m = 2 branches, each with engine token ids.
    run_dir = Path(summary["run_dir"])
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

    # What the user runs next: the evaluation table of the trained adapter, then the report.
    def evaluate(*extra: str) -> dict:
        args = ("eval", "--run", str(run_dir), "--tasks", "4", "--seeds", "2", *extra)
        return json.loads(retro_ray_cli(tmp_path, *args, "--json", "-").splitlines()[-1])

    table = evaluate()
    assert list(table["agents"]) == [
        "react",
        "reflexion-greedy",
        "reflexion-sampled",
        "retroformer-greedy",
        "retroformer-sampled",
        "trajectory-oracle",
        "ground-truth-oracle",
    ]
    assert table["best"]["retroformer"] in ("retroformer-greedy", "retroformer-sampled")
    assert table["seeds"] == [0, 1] and "gap_closed" in table
    assert table["reflectors"]["retroformer-sampled"].startswith("retro@")
    for row in table["agents"].values():
        assert len(row["success_by_trial"]) == 2 and row["tasks"] == 8 and row["spread"] >= 0
    assert (
        table["agents"]["ground-truth-oracle"]["success_by_trial"][-1]
        >= (table["agents"]["react"]["success_by_trial"][-1])
    )
    # Seeds that seed: the same evaluation played afresh elsewhere prints the same table.
    again = evaluate("--out", str(tmp_path / "eval-again"))
    assert again["conditions"] == table["conditions"]
    assert {k: v["success_by_trial"] for k, v in again["agents"].items()} == {
        k: v["success_by_trial"] for k, v in table["agents"].items()
    }
    report = json.loads(retro_ray_cli(tmp_path, "report", str(run_dir), "--json"))
    out = Path(report["index_html"]).parent
    for figure in ("success_by_trial", "reflection_reward", "throughput", "cost"):
        assert (out / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "retroformer" in (out / "index.html").read_text().lower()

    # Train more, promote the newest adapter, evaluate again into the same directory: the
    # Retroformer rows come from the new adapter, the frozen agents' episodes are reused.
    more, _ = run_train_tiny(tmp_path, "serve.port=8127", "train.iterations=3")
    assert more["train_version"] > summary["train_version"], more
    retro_ray_cli(
        tmp_path,
        "registry",
        "promote",
        str(more["train_version"]),
        "--config",
        str(run_dir / "config.json"),
        "--reason",
        "test: evaluate the newest adapter",
    )
    newer = evaluate()
    assert newer["adapter"] == f"retro@{more['train_version']}" != table["adapter"]
    for label in ("retroformer-greedy", "retroformer-sampled"):
        assert newer["conditions"][label] != table["conditions"][label]
    for label in ("react", "reflexion-greedy", "trajectory-oracle"):
        assert newer["conditions"][label] == table["conditions"][label]
    log = ds.dataset(run_dir / "eval" / "experience", format="parquet", partitioning="hive")
    rows = log.to_table(columns=["run", "adapter_version", "trial"]).to_pylist()
    reflected = [
        r for r in rows if r["run"] == newer["conditions"]["retroformer-sampled"] and r["trial"]
    ]
    assert reflected and {r["adapter_version"] for r in reflected} == {newer["adapter"]}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two `retro-ray train` runs (the second resumes the first)
def test_train_overlap_collects_one_step_off_policy(tmp_path: Path) -> None:
    summary, metrics = run_train_tiny(
        tmp_path, "train.overlap=true", "train.iterations=3", "serve.port=8128"
    )
    assert summary["iterations"] == 3 and summary["overlap"] is True
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    learned = [m for m in metrics if m["groups"]]  # none when every task was won at trial 1
    assert len(learned) >= 2, metrics
    assert summary["train_version"] >= len(learned), metrics  # every batch applied, published
    assert all("version" in m and not m.get("dropped") for m in learned)
    assert all(m["staleness"] is not None and m["staleness"] <= 1 for m in learned)
    assert all(m["learner_staleness"] == m["staleness"] for m in learned)
    assert learned[0]["staleness"] == 0  # nothing to overlap with: the base model collected it
    # Overlap happened: some iteration's rows came (at least partly) from an adapter older than
    # the learner's when its batch was submitted. Iteration 1's first reflections are sampled
    # within a second of batch 0's submission, long before the learner can apply, checkpoint,
    # publish it and the Serve app swap it in (and before the Ray Train worker group, started at
    # the same time as collection 0, is even up: ~10 s here).
    assert any(min(m["collect_versions"]) < m["submit_version"] for m in learned[1:]), metrics

    # Resume: the same run directory with one more iteration collects and trains only that one;
    # the earlier episodes, records and gates stand.
    run_dir = Path(summary["run_dir"])
    episodes = {p: p.stat().st_mtime_ns for p in (run_dir / "experience").rglob("part-*.parquet")}
    resumed, metrics_after = run_train_tiny(
        tmp_path, "train.overlap=true", "train.iterations=4", "serve.port=8128"
    )
    assert [m["iteration"] for m in metrics_after] == [0, 1, 2, 3]
    assert metrics_after[:3] == metrics
    assert resumed["iterations"] == 4 and resumed["train_version"] > summary["train_version"]
    assert all(p.stat().st_mtime_ns == t for p, t in episodes.items())
