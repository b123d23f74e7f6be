"""Joining or starting Ray: one rule for every command that uses it (training, evaluation).

A leaf: it imports nothing of retro_ray, so the driver and the evaluation path both use it
without one importing the other.
"""

from __future__ import annotations

import os


def connect_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (a submitted job has it; ``auto`` joins a
    ``ray start`` cluster of this machine); else start a private local one, even when another
    Ray runs on this machine (Ray would otherwise join that one and refuse ``num_cpus``), with
    logical CPUs declared (2-core machines deadlock on real CPU accounting) and the dashboard:
    users watch it, and Ray Train's placement-group cleaner polls the state API it serves
    (without it the cleaner warns every few seconds)."""
    import ray

    if ray.is_initialized():
        return
    if joins_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(address="local", num_cpus=num_cpus or 8, include_dashboard=True)


def joins_cluster() -> bool:
    return os.environ.get("RAY_ADDRESS", "local") not in ("", "local")


def cluster_cpus() -> int:
    """The CPUs the run holds (``retro-ray report`` prices core-hours with it): a joined
    cluster's, else this machine's (a local cluster declares more logical CPUs than it has)."""
    import ray

    if joins_cluster():
        return int(ray.cluster_resources().get("CPU", 0))
    return os.cpu_count() or 0
