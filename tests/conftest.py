"""Session-scoped fixtures: one local Ray cluster for every test that needs one. The session
also checks ``RETRO_RAY_REQUIRE_EXTRAS`` up front (see ``tests/support/extras.py``): a typo in
it stops the run before any test, and the header says which extras must import."""

from __future__ import annotations

import os

import pytest

from tests.support.extras import REQUIRE_ENV, required_extras

# One torch/OMP thread per process: the CI machine has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    required_extras()  # raises pytest.UsageError on an unknown extra name


def pytest_report_header(config: pytest.Config) -> str:
    required = ", ".join(sorted(required_extras())) or "none (missing ones skip)"
    return f"{REQUIRE_ENV}: {required}"


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


@pytest.fixture(scope="session")
def zoo_tiny(tmp_path_factory: pytest.TempPathFactory):
    """The zoo's ``tiny`` recipe, built once per test session in a temporary cache directory
    (well under a minute): a loadable actor and retrospective base for backend and learning tests.
    Returns a ``retro_ray.zoo.build.ZooBuild`` (``actor_dir``, ``retrospective_dir``, ``manifest``)."""
    from retro_ray.zoo.build import build_zoo

    # one thread: the session's Ray cluster and engines may run beside it (zoo.build.default_threads)
    return build_zoo("tiny", cache_dir=tmp_path_factory.mktemp("zoo_cache"), threads=1)


@pytest.fixture(scope="session")
def tiny_architectures(tmp_path_factory: pytest.TempPathFactory):
    """Tiny random-weight models of the architectures users bring as their retrospective model
    (``tests/support/architectures.py``: Llama 3, Qwen 2, Mistral, each with a chat template and
    no pad token), built once per test session: ``{"llama3": Path, "qwen2": Path, "mistral":
    Path}``."""
    from tests.support.architectures import ARCHITECTURES, build_tiny_architecture

    root = tmp_path_factory.mktemp("architectures")
    return {arch: build_tiny_architecture(arch, root) for arch in ARCHITECTURES}
