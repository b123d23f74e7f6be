"""An OpenAI-compatible server that replays recorded completions after a fixed delay.

The rollout benchmark needs an actor whose latency dominates and whose answers are those of a
real model, without paying for the model on 2 CPU cores: the tiny actor's outputs are recorded
once (prompt -> text, greedy, so a replay walks the same trajectories), then served back here
after ``--delay-s`` (a stand-in for a remote LLM's latency). A prompt missing from the recording
gets ``--fallback`` and is counted (``GET /stats``), so a benchmark can check its hit rate.

Plain asyncio streams with HTTP/1.1 keep-alive, one process of its own (the benchmark starts it
with ``python -m benchmarks.replay_server``, which prints ``PORT <n>`` when listening): the server
must not share the driver's or the workers' interpreter, or their CPU would be measured as
latency. Only ``/v1/models``, ``/v1/completions`` and ``/stats`` are served.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def load_recording(path: Path) -> dict[str, str]:
    """JSON lines of ``{"key": sha256(prompt), "text": completion}``."""
    table = {}
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            table[item["key"]] = item["text"]
    return table


class ReplayServer:
    def __init__(self, recording: dict[str, str], delay_s: float, fallback: str) -> None:
        self.recording, self.delay_s, self.fallback = recording, delay_s, fallback
        self.hits = self.misses = self.in_flight = self.max_in_flight = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                length, keep_alive = 0, True
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == "connection":
                        keep_alive = value.strip().lower() != "close"
                body = json.loads(await reader.readexactly(length)) if length else {}
                status, payload = await self.answer(method, path.split("?", 1)[0], body)
                data = json.dumps(payload).encode()
                head = (
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n"
                    f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
                )
                writer.write(head.encode() + data)
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": "actor", "object": "model"}]}
        if method == "GET" and path == "/stats":
            stats = ("hits", "misses", "in_flight", "max_in_flight")
            return 200, {name: getattr(self, name) for name in stats}
        if method != "POST" or path != "/v1/completions":
            return 404, {"error": {"message": f"no route {method} {path}", "code": 404}}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        prompt = body.get("prompt", "")
        text = self.recording.get(prompt_key(prompt))
        if text is None:
            self.misses += 1
            text = self.fallback
        else:
            self.hits += 1
        completion_tokens = len(re.findall(r"\s*\S+", text))
        prompt_tokens = len(prompt.split())
        return 200, {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "actor"),
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


async def serve(recording: Path, delay_s: float, fallback: str, port: int) -> None:
    server = ReplayServer(load_recording(recording), delay_s, fallback)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=1024)
    print(f"PORT {listener.sockets[0].getsockname()[1]}", flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", type=Path, required=True)
    parser.add_argument("--delay-s", type=float, default=0.2)
    parser.add_argument("--fallback", default="Finish[unknown]")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.recording, args.delay_s, args.fallback, args.port))


if __name__ == "__main__":
    main()
