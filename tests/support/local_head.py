"""A private local Ray head node for tests of ``ray job submit`` and of the metrics export.

``ray start --head --block`` runs as our own child process, with every port chosen free and its
own ``--temp-dir``: it shares nothing with other Ray clusters on the machine (other tests start
their own at the same time). ``ray stop`` is never used: it kills every Ray process on the
machine. Stopping sends SIGTERM to our ``ray start --block`` process, which takes down the
processes it started; any process still holding our temp dir on its command line after that is
ours alone and is killed by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.ports import free_ports

RAY_BIN = Path(sys.executable).with_name("ray")


class LocalHead:
    """One head node: ``address`` (GCS), ``dashboard_url`` (job API), ``metrics_text()``."""

    def __init__(self, num_cpus: int = 4, env: dict[str, str] | None = None) -> None:
        self.num_cpus = num_cpus
        self.temp_dir = _new_temp_dir()
        self._pick_ports()
        self.env = {
            **os.environ,
            # Job entrypoints say ``python``: the venv's, as on a cluster image.
            "PATH": f"{RAY_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A private loopback-only cluster that lives for one test module: no token auth, so
            # that clients in this process need no token whatever auth mode they cached.
            "RAY_AUTH_MODE": "disabled",
            **(env or {}),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def _pick_ports(self) -> None:
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.address = f"{_node_ip()}:{self.ports['port']}"
        self.dashboard_url = f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self, timeout_s: float = 120.0, attempts: int = 3) -> LocalHead:
        """Start the head; a port another process took between our pick and Ray's bind (the
        ports are released before ``ray start`` binds them) means a fresh pick and a retry."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout_s)
            except RuntimeError as exc:
                if attempt == attempts or not _is_port_conflict(str(exc)):
                    raise
                self.temp_dir = _new_temp_dir()  # the failed start's was removed by stop()
                self._pick_ports()
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> LocalHead:
        cmd = [
            str(RAY_BIN),
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            *(f"--{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = (self.temp_dir / "ray_start.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_up(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_up(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log_tail()}")
            if self._dashboard_up():
                return
            time.sleep(1.0)
        raise TimeoutError(f"head not up after {timeout_s}s: {self.log_tail()}")

    def _dashboard_up(self) -> bool:
        """The job API answers (the client sends the cluster's auth token, if one is set)."""
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        try:
            JobSubmissionClient(self.dashboard_url).get_version()
        except AuthenticationError:
            raise
        except (ConnectionError, OSError, RuntimeError):
            return False
        return True

    def metrics_text(self) -> str:
        """The node's Prometheus export (the metrics agent binds the node's IP address)."""
        port = self.ports["metrics-export-port"]
        errors = []
        for host in dict.fromkeys(("127.0.0.1", _node_ip())):
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                    return r.read().decode()
            except OSError as exc:
                errors.append(f"{host}: {exc}")
        raise ConnectionError("; ".join(errors))

    def log_tail(self, chars: int = 3000) -> str:
        path = self.temp_dir / "ray_start.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self._stragglers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _stragglers(self) -> list[int]:
        """PIDs whose command line names our temp dir or GCS port (ours alone by construction)."""
        marks = (str(self.temp_dir), f"--gcs-address={self.address}")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if any(mark in cmdline for mark in marks):
                found.append(int(entry.name))
        return found

    def __enter__(self) -> LocalHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PORT_FLAGS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "ray-client-server-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


def _new_temp_dir() -> Path:
    # Short path: Unix socket paths under the temp dir must stay below 108 bytes.
    return Path(tempfile.mkdtemp(prefix="rrh", dir="/tmp"))


def _is_port_conflict(message: str) -> bool:
    return "is used by other components" in message or "already in use" in message.lower()


def _node_ip() -> str:
    """The address Ray picks for this node (its agents bind it, not loopback)."""
    from ray.util import get_node_ip_address

    return get_node_ip_address()
