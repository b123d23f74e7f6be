"""A steady stream of requests against the endpoint: each client sends one request after another
(closed loop) on its own thread and records what version answered and how fast.

Used by the hot-swap tests and ``benchmarks/hotswap.py`` to check what a client sees while
versions change: failures, the order of versions, the time until a new version answers.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Sample:
    client: int
    start: float  # time.monotonic() when sent
    end: float
    status: int  # 0: no HTTP response (connection error, timeout)
    model: str | None  # the version that answered ("retro@3"), from the response
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.end - self.start

    @property
    def version(self) -> int | None:
        if self.model is None or "@" not in self.model:
            return None
        return int(self.model.rsplit("@", 1)[1])


class RequestStream:
    def __init__(
        self,
        url: str,
        model: str,
        clients: int = 4,
        token: str | None = None,
        max_tokens: int = 4,
        prompt: str = "> Search[Alice Kay]\n",
        timeout_s: float = 60.0,
    ) -> None:
        """``url`` is the API root ending in ``/v1``."""
        self.url = url.rstrip("/") + "/completions"
        self.body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.clients = clients
        self.timeout_s = timeout_s
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> RequestStream:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def switch(self, model: str) -> None:
        """Request ``model`` from now on (each client's next request names it)."""
        self.body = {**self.body, "model": model}

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.snapshot()

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def first_seen(self, model: str, since: float = 0.0) -> float | None:
        """When a response from ``model`` first came back (monotonic), or None."""
        ends = [s.end for s in self.snapshot() if s.model == model and s.end >= since]
        return min(ends) if ends else None

    def wait_for(self, model: str, since: float, timeout_s: float) -> float | None:
        """Seconds from ``since`` until ``model`` first answered, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.first_seen(model, since)
            if seen is not None:
                return seen - since
            time.sleep(0.02)
        return None

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=self.timeout_s, headers=self.headers) as http:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    response = http.post(self.url, json=self.body)
                    ok = response.status_code == 200
                    model = response.json().get("model") if ok else None
                    sample = Sample(
                        index,
                        began,
                        time.monotonic(),
                        response.status_code,
                        model,
                        None if ok else response.text[:200],
                    )
                except httpx.HTTPError as exc:
                    sample = Sample(index, began, time.monotonic(), 0, None, repr(exc))
                with self._lock:
                    self.samples.append(sample)


def failures(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.status != 200]


def monotone_per_client(samples: list[Sample]) -> bool:
    """Each client's versions never decrease, in the order it sent its requests."""
    by_client: dict[int, list[Sample]] = {}
    for s in samples:
        by_client.setdefault(s.client, []).append(s)
    for mine in by_client.values():
        versions = [s.version for s in sorted(mine, key=lambda s: s.start) if s.version is not None]
        if any(b < a for a, b in itertools.pairwise(versions)):
            return False
    return True


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
