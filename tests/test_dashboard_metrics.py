"""Every metric the Grafana dashboard queries is emitted by the project (and the dashboard is
importable into Ray's Grafana: Prometheus through the ``${datasource}`` variable).

The slow test runs a tiny job on a private head node (rollouts with an LLM reflector, the Serve
app with a hot-swap; ``tests/support/metrics_job.py``) and scrapes the node's Prometheus export.
Learner metrics are checked only once the training loop exists to emit them: no fake emission.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "grafana_retro_ray.json"
LEARNER_PREFIX = "ray_retro_ray_learner_"
# PromQL words that look like metric names but are functions or keywords.
_NOT_METRICS = {
    "sum",
    "rate",
    "increase",
    "avg",
    "max",
    "min",
    "scalar",
    "histogram_quantile",
    "by",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queried_metrics(dash: dict) -> set[str]:
    """Metric names in the panels' PromQL (Ray's prefix ``ray_`` included)."""
    names = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            names |= set(re.findall(r"\b(ray_[a-z0-9_]+)\s*[{\[]", target["expr"]))
    return names - _NOT_METRICS


def exported_metrics(text: str) -> set[str]:
    """Names of the samples in a Prometheus text export."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def test_dashboard_is_importable_into_rays_grafana() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"]
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'SessionName=~"$SessionName"' in target["expr"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("rollouts", "success by trial", "learner", "serving", "version", "latency"):
        assert topic in titles
    names = queried_metrics(dash)
    assert any(n.startswith("ray_retro_ray_rollout_") for n in names)
    assert any(n.startswith("ray_retro_serve_") for n in names)


@pytest.mark.slow
def test_every_dashboard_metric_is_emitted(tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.support.local_head import LocalHead

    wanted = {n for n in queried_metrics(dashboard()) if not n.startswith(LEARNER_PREFIX)}
    ready, done = tmp_path / "ready", tmp_path / "done"
    with LocalHead(num_cpus=4) as head:
        client = JobSubmissionClient(head.dashboard_url)
        entry = f"python tests/support/metrics_job.py --out {tmp_path / 'out'} "
        entry += f"--ready {ready} --done {done}"
        job_id = client.submit_job(
            entrypoint=entry,
            runtime_env={"working_dir": str(REPO), "env_vars": {"OMP_NUM_THREADS": "1"}},
        )
        try:
            seen = _watch(head, client, job_id, ready, wanted)
            missing = sorted(wanted - seen)
            assert not missing, f"queried by the dashboard but never emitted: {missing}"
        finally:
            done.write_text("done")
        deadline = time.monotonic() + 120
        while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
            time.sleep(1.0)
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[
            -4000:
        ]


def _watch(head, client, job_id: str, ready: Path, wanted: set[str]) -> set[str]:
    """Names exported at any scrape while the job runs, until ``ready`` and all ``wanted`` are
    seen (or 90 s after ``ready``). Scraping all along matters: Ray stops exporting a gauge
    a while after its last ``set`` (the rollout driver's rates go quiet once collection ends)."""
    from ray.job_submission import JobStatus

    seen: set[str] = set()
    deadline, ready_at = time.monotonic() + 420, None
    while time.monotonic() < deadline:
        with contextlib.suppress(ConnectionError):
            seen |= exported_metrics(head.metrics_text())
        status = client.get_job_status(job_id)
        assert status not in {JobStatus.FAILED, JobStatus.STOPPED}, client.get_job_logs(job_id)[
            -4000:
        ]
        if ready_at is None and ready.exists():
            ready_at = time.monotonic()
        if ready_at is not None and (wanted <= seen or time.monotonic() > ready_at + 90):
            return seen
        time.sleep(2.0)
    raise AssertionError("the metrics job never got ready")


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a local head, then up to 900 s of a training job
def test_learner_metrics_are_emitted_by_training(tmp_path: Path) -> None:
    """The dashboard's learner panels, against a tiny ``retro-ray train`` job."""
    learner = sorted(n for n in queried_metrics(dashboard()) if n.startswith(LEARNER_PREFIX))
    config = REPO / "configs" / "train_tiny.yaml"
    from ray.job_submission import JobSubmissionClient

    from tests.support.local_head import LocalHead

    with LocalHead(num_cpus=4) as head:
        client = JobSubmissionClient(head.dashboard_url)
        entry = f"python jobs/train.py --config {config.relative_to(REPO)} "
        entry += f"--set run.output_dir={tmp_path}"
        # The KL panel needs the reference pass, which the learner skips at kl_coef 0.
        entry += " --set learner.loss.kl_coef=0.01"
        runtime_env = {"working_dir": str(REPO), "env_vars": {"OMP_NUM_THREADS": "1"}}
        job_id = client.submit_job(entrypoint=entry, runtime_env=runtime_env)
        seen: set[str] = set()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not set(learner) <= seen:
            with contextlib.suppress(ConnectionError):
                seen |= exported_metrics(head.metrics_text())
            if client.get_job_status(job_id).is_terminal():
                seen |= exported_metrics(head.metrics_text())
                break
            time.sleep(2.0)
        assert set(learner) <= seen, f"never emitted: {sorted(set(learner) - seen)}"
