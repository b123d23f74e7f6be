"""Joining or starting Ray: one rule for every command that uses it (training, evaluation).

A leaf: it imports nothing of retro_ray, so the driver and the evaluation path both use it
without one importing the other.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOGS_ENV = "RETRO_RAY_RAY_LOGS"
"""``console``: Ray's workers' output (Serve, vLLM, Ray Train) and Ray's INFO lines are streamed to
this console as Ray does by default; anything else (the default): they stay in the Ray session's
log folder, which :func:`connect_ray` names, and the console shows the command's own progress."""


def connect_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (a submitted job has it; ``auto`` joins a
    ``ray start`` cluster of this machine); else start a private local one, even when another
    Ray runs on this machine (Ray would otherwise join that one and refuse ``num_cpus``), with
    logical CPUs declared (2-core machines deadlock on real CPU accounting) and the dashboard:
    users watch it, and Ray Train's placement-group cleaner polls the state API it serves
    (without it the cleaner warns every few seconds). Ray's INFO lines and its workers' output go
    to the session's log folder, named on stderr, unless ``RETRO_RAY_RAY_LOGS=console``."""
    import ray

    if ray.is_initialized():
        return
    console = os.environ.get(LOGS_ENV, "file") == "console"
    quiet: dict = {} if console else {"log_to_driver": False, "logging_level": logging.WARNING}
    if joins_cluster():
        context = ray.init(address=os.environ["RAY_ADDRESS"], **quiet)
    else:
        context = ray.init(address="local", num_cpus=num_cpus or 8, include_dashboard=True, **quiet)
    if not console:
        # Serve sets its logger's level itself when it starts: a filter outlives that.
        logging.getLogger("ray.serve").addFilter(lambda record: record.levelno >= logging.WARNING)
        logs = Path(context.address_info["session_dir"]) / "logs"
        print(
            f"[ray] Ray's, Serve's and vLLM's logs: {logs} ({LOGS_ENV}=console to see them here)",
            file=sys.stderr,
        )


def one_torch_thread() -> None:
    """For a driver whose own model work (the training gate's actor, the demo's local evaluation)
    shares the cores with the cluster it runs on: one torch intra-op thread, as Ray gives its
    workers. Two threads spin-wait for a core that an engine or a worker holds: the demo's driver
    with a cached zoo (6 iterations, 2-core machine, one run each, the same rewards) trained in
    474 s with two threads against 364 s with one, and evaluated in 45 s against 25 s."""
    import torch

    torch.set_num_threads(1)


def joins_cluster() -> bool:
    return os.environ.get("RAY_ADDRESS", "local") not in ("", "local")


def cluster_cpus() -> int:
    """The CPUs the run holds (``retro-ray report`` prices core-hours with it): a joined
    cluster's, else this machine's (a local cluster declares more logical CPUs than it has)."""
    import ray

    if joins_cluster():
        return int(ray.cluster_resources().get("CPU", 0))
    return os.cpu_count() or 0
