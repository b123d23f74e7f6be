"""``ray job submit`` of the job entry points to a private local head node (slow).

The head is ours alone (``tests/support/local_head.py``): free ports, its own temp dir, stopped
by PID, never with ``ray stop`` (which would kill other tests' clusters on the machine).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.local_head import RAY_BIN, LocalHead

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY_EVAL = ["--config", "configs/builtin_scripted.yaml", "--set", "env.num_tasks=4"]


@pytest.fixture(scope="module")
def head():
    with LocalHead(num_cpus=4) as h:
        yield h


def _runtime_env(job: str) -> dict:
    env = yaml.safe_load((REPO / "jobs" / "runtime_env" / f"{job}.yaml").read_text())
    env["working_dir"] = str(REPO)
    return env


def _wait(client, job_id: str, timeout_s: float = 240.0) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return str(status)
        time.sleep(1.0)
    client.stop_job(job_id)
    return "TIMEOUT"


def test_eval_job_with_ray_job_submit(head: LocalHead, tmp_path: Path) -> None:
    """The documented command line: ``ray job submit --working-dir . --runtime-env ...``."""
    cmd = [
        str(RAY_BIN),
        "job",
        "submit",
        "--address",
        head.dashboard_url,
        "--working-dir",
        ".",
        "--runtime-env",
        "jobs/runtime_env/eval.yaml",
        "--",
        "python",
        "jobs/eval.py",
        *TINY_EVAL,
        "--agent",
        "react",
        "--agent",
        "trajectory-oracle",
        "--set",
        "run.name=job-eval",
        "--set",
        f"run.output_dir={tmp_path}",
    ]
    done = subprocess.run(
        cmd, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=300, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    table = pq.read_table(tmp_path / "job-eval" / "eval-table.parquet").to_pylist()
    assert [row["agent"] for row in table] == ["react", "trajectory-oracle"]
    for row in table:
        assert row["tasks"] == 4 and row["status"] == "ok"
        assert 0.0 <= row["success@1"] <= row["success@3"] <= 1.0
    # Retries without reflections cannot beat the oracle's reflections on this environment.
    assert table[1]["success@3"] >= table[0]["success@3"]
    assert "| trajectory-oracle |" in (tmp_path / "job-eval" / "eval-table.md").read_text()


def test_two_point_sweep_job(head: LocalHead, tmp_path: Path) -> None:
    """A sweep over two seeds, submitted through the Python job API; one gathered table."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard_url)
    entry = [
        "python",
        "jobs/sweep.py",
        "--name",
        "seeds",
        *TINY_EVAL,
        "--agent",
        "trajectory-oracle",
        "--grid",
        "env.seed=0,1",
        "--output-dir",
        str(tmp_path),
        "--trial-cpus",
        "0.5",
    ]
    job_id = client.submit_job(entrypoint=" ".join(entry), runtime_env=_runtime_env("sweep"))
    status = _wait(client, job_id)
    assert status == "SUCCEEDED", client.get_job_logs(job_id)[-4000:]
    sweep_dir = tmp_path / "seeds"
    rows = pq.read_table(sweep_dir / "sweep.parquet").to_pylist()
    assert [(r["point"], r["env.seed"], r["status"]) for r in rows] == [(0, 0, "ok"), (1, 1, "ok")]
    assert all(r["tasks"] == 4 and "success@3" in r for r in rows)
    # Different seeds draw different tasks: each point ran its own evaluation.
    for r in rows:
        log = sweep_dir / "runs" / r["run"] / "eval" / "experience"
        # one partition per condition, named by what made it (eval-<condition>-<key>)
        parts = log.glob(f"run=eval-trajectory-oracle-*/iteration={r['env.seed']}/part-*.parquet")
        assert len(list(parts)) == 4
    md = (sweep_dir / "sweep.md").read_text()
    assert "| seeds-000 |" in md and "Mean and std over seeds" in md


TRAIN_TINY = REPO / "configs" / "train_tiny.yaml"


@pytest.mark.timeout(1200)  # waits up to 900 s for the job itself
def test_tiny_train_job(head: LocalHead, tmp_path: Path) -> None:
    """``jobs/train.py`` runs ``retro-ray train`` against the job's cluster."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard_url)
    entry = f"python jobs/train.py --config {TRAIN_TINY.relative_to(REPO)} "
    entry += f"--set run.output_dir={tmp_path} --set run.name=job-train"
    job_id = client.submit_job(entrypoint=entry, runtime_env=_runtime_env("train"))
    status = _wait(client, job_id, timeout_s=900)
    assert status == "SUCCEEDED", client.get_job_logs(job_id)[-4000:]
    assert (tmp_path / "job-train").is_dir()
