"""SIGTERM (systemd, Kubernetes, ``ray job stop``) stops a long-running command as Ctrl-C does:
it drains, stops the Ray it started and exits 143, leaving no process behind (issue 15 item 14).

Each command runs as a subprocess whose environment carries a unique marker; every process it
starts (Ray's GCS, raylet, dashboard and runtime-env agents, workers, Serve replicas) inherits
that environment, so ``/proc/*/environ`` finds them wherever they were reparented.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from retro_ray.stopping import EXIT_SIGTERM
from tests.support.openai_server import OpenAIServer
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
MARKER_ENV = "RETRO_RAY_TEST_RUN_MARKER"


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every live process (``/proc/*/stat``;
    the start time tells a process from a later one that reuses its pid)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def command_line(pid: int) -> str:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120]


def processes_of_run(root: int, marker: str) -> dict[tuple[int, int], str]:
    """(pid, start) -> command line of ``root``, its descendants, and every process whose
    environment holds ``marker`` (those left behind are reparented; a process that retitles
    itself, as Ray's do, may overwrite its environment, so the tree is looked at too)."""
    table = process_table()
    found = {root} if root in table else set()
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    for pid in table:
        try:
            if marker.encode() in (Path("/proc") / str(pid) / "environ").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return {(pid, table[pid][1]): command_line(pid) for pid in found}


def still_alive(processes: dict[tuple[int, int], str], marker: str) -> dict[int, str]:
    """The processes among ``processes`` that still run (same pid and start time), and any
    other process with the run's marker."""
    table = process_table()
    alive = {
        pid: cmd for (pid, start), cmd in processes.items() if table.get(pid, (0, 0))[1] == start
    }
    for (pid, _), cmd in processes_of_run(-1, marker).items():
        alive.setdefault(pid, cmd)
    return alive


def wait_for(predicate, timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def start_command(argv: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    marker = uuid.uuid4().hex
    full_env = {**os.environ, MARKER_ENV: marker, "OMP_NUM_THREADS": "1", **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "retro_ray.cli", *argv],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, marker


def collect(stream, into: list[str]) -> threading.Thread:
    """Read a pipe in the background (a full pipe would block the command)."""
    thread = threading.Thread(target=lambda: into.extend(stream), daemon=True)
    thread.start()
    return thread


def kill_leftovers(left: dict[int, str]) -> None:
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_eval_stops_on_sigterm_with_exit_143_and_keeps_what_it_wrote(tmp_path) -> None:
    """``retro-ray eval`` against a slow loopback endpoint: SIGTERM in mid-run ends it with 143
    and says so on stderr; the episodes finished before stay readable. (A SIGTERM that lands
    inside an asyncio task step may also log that task's traceback when it is collected.)"""
    with OpenAIServer(lambda prompt: "> Search[nobody]", delay_s=0.05) as actor:
        argv = ["eval", "--agent", "react", "--tasks", "200", "--trials", "1"]
        for override in (
            f"run.output_dir={tmp_path / 'runs'}",
            "actor.policy=llm",
            f"actor.endpoint.base_url={actor.base_url}",
            "trials.concurrency=2",
        ):
            argv += ["--set", override]
        proc, marker = start_command(argv, tmp_path)
        err: list[str] = []
        reader = collect(proc.stderr, err)
        try:
            assert wait_for(lambda: len(actor.requests) >= 20, timeout_s=120), "never started"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == EXIT_SIGTERM
        finally:
            proc.kill()
            reader.join(timeout=5)
    text = "".join(err)
    assert "SIGTERM received" in text
    assert not still_alive({}, marker)
    import pyarrow.dataset as ds

    parts = list((tmp_path / "runs").rglob("*.parquet"))
    assert parts and 0 < ds.dataset(parts).count_rows() < 200  # stopped early, what it has reads


@pytest.mark.slow
def test_serve_stops_on_sigterm_and_leaves_no_process_of_its_ray(tmp_path) -> None:
    """``retro-ray serve`` (torch backend, one replica of a tiny model, its own local Ray): up
    and answering ``/healthz``, then SIGTERM: it exits 143 and every process of its Ray is
    gone (before the fix the DashboardAgent and RuntimeEnvAgent stayed, ignoring SIGTERM)."""
    from tests.support.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    port = free_port()
    argv = ["serve", "--config", str(REPO / "configs" / "serve_tiny.yaml"), "--num-cpus", "2"]
    for override in (
        f"serve.model_dir={tiny.model_dir}",
        f"serve.port={port}",
        "serve.num_replicas=1",
        "serve.access_log=false",
        "serve.api_key_env=RETRO_RAY_TEST_UNSET_TOKEN",
        f"registry.root={tmp_path / 'registry'}",
        "registry.max_lora_rank=8",
    ):
        argv += ["--set", override]
    # Its own Ray temp dir: ray.init would otherwise join a cluster another test left running
    # (found through /tmp/ray). Short: Ray's socket paths must fit in 107 characters.
    ray_tmp = tempfile.mkdtemp(prefix="rr-stop-", dir="/tmp")
    proc, marker = start_command(argv, tmp_path, RAY_TMPDIR=ray_tmp)
    out: list[str] = []
    err: list[str] = []
    readers = [collect(proc.stdout, out), collect(proc.stderr, err)]
    run: dict[tuple[int, int], str] = {}
    try:
        assert wait_for(lambda: bool(out) or proc.poll() is not None, timeout_s=300)
        assert proc.poll() is None, "".join(err)[-3000:]
        url = json.loads(out[0])["url"].removesuffix("/v1")
        assert wait_for(lambda: healthy(url), timeout_s=300), "the app never answered"
        run = processes_of_run(proc.pid, marker)
        titles = " ".join(run.values())
        agent = "RuntimeEnvAgent" in titles or "runtime_env/agent" in titles  # titled or not yet
        assert "raylet" in titles and agent, run  # its own local Ray, agents included
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == EXIT_SIGTERM, "".join(err)[-3000:]
        wait_for(lambda: not still_alive(run, marker), timeout_s=30)
    finally:
        proc.kill()
        left = still_alive(run, marker)
        kill_leftovers(left)
        for reader in readers:
            reader.join(timeout=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, left
    assert "SIGTERM received" in "".join(err)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
