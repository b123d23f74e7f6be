"""The chaos run's stage (``benchmarks.chaos``): a local multi-node Ray cluster
(``ray.cluster_utils.Cluster`` in this process) and the ``retro-ray train`` process that joins it,
started again after each kill with the same run directory; and the benchmark's log line."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


# -- the cluster ---------------------------------------------------------------------------------


class LocalCluster:
    """A head and worker nodes of ``ray.cluster_utils.Cluster`` in this process, with a Ray temp
    directory of their own; this process is connected to it (the state API, Serve's start)."""

    def __init__(self, worker_nodes: int, node_cpus: float, head_cpus: float, port: int) -> None:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        self.node_cpus = node_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: socket paths
        head = {"num_cpus": head_cpus, "temp_dir": self.temp_dir, "include_dashboard": True}
        self.cluster = starting(
            "the head node",
            lambda: Cluster(initialize_head=True, head_node_args={**head, "dashboard_port": 0}),
        )
        for _ in range(worker_nodes):
            self.add_worker()
        ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
        self.dashboard = f"http://{self.cluster.webui_url}"
        # Nodes share one address here: a proxy per node would fight for the port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def session_logs(self) -> Path:
        return Path(self.temp_dir) / "session_latest" / "logs"

    def add_worker(self) -> None:
        starting(
            "a worker node",
            lambda: self.cluster.add_node(num_cpus=self.node_cpus, temp_dir=self.temp_dir),
        )

    def worker_nodes(self) -> list[Any]:
        return sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)

    def remove_worker(self, node: Any) -> None:
        """Kill every process of the node at once (no grace), then start a replacement."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.add_worker()

    def actors(self) -> list[Any]:
        from ray.util.state import list_actors

        return list_actors(
            address=self.dashboard,
            filters=[("state", "=", "ALIVE")],
            detail=True,
            limit=10_000,
            raise_on_missing_output=False,
        )

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def starting(what: str, start: Callable[[], Any], attempts: int = 3) -> Any:
    """``start()``, again when Ray says the node timed out during startup (its raylet has 30 s
    to register, which a loaded 2-core machine can miss)."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log(f"{what} did not start in time; starting it again ({attempt}/{attempts})")
    raise AssertionError("unreachable")


# -- the driver ----------------------------------------------------------------------------------


@dataclass
class TrainDriver:
    """``retro-ray train`` in a process of its own, joined to the cluster; one log file per
    incarnation (a killed driver is started again with the same command and run directory)."""

    args: list[str]
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen | None = None
    incarnations: list[Path] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    killed: bool = False  # the current incarnation was killed by the injector

    def start(self) -> None:
        path = self.log_dir / f"driver-{len(self.incarnations)}.log"
        self.incarnations.append(path)
        cmd = [sys.executable, "-m", "retro_ray.cli", "train", *self.args]
        with path.open("w") as out:
            self.process = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.killed = False

    def poll(self) -> int | None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None and len(self.exit_codes) < len(self.incarnations):
            self.exit_codes.append(code)
        return code

    def kill(self) -> int:
        """SIGKILL; the pid killed."""
        assert self.process is not None
        pid = self.process.pid
        self.killed = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.poll()
        return pid

    def current_log(self) -> str:
        return self.incarnations[-1].read_text(errors="replace") if self.incarnations else ""


def train_command(
    config: str, run_dir: Path, app: str, port: int, sets: Sequence[str]
) -> list[str]:
    """The arguments of ``retro-ray train`` for one run (its own app, route and directory)."""
    overrides = [
        *sets,
        f"run.output_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
        f"serve.app_name={app}",
        f"serve.route_prefix=/{app}",
        f"serve.port={port}",
    ]
    args = ["--config", config]
    for override in overrides:
        args += ["--set", override]
    return [*args, "--json", str(run_dir.parent / f"{run_dir.name}.summary.json")]
