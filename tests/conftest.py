"""Session-scoped fixtures: one local Ray cluster for every test that needs one."""

from __future__ import annotations

import os

import pytest

# One torch/OMP thread per process: the CI machine has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()
