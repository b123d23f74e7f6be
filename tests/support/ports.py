"""Free loopback ports, for the servers the tests start (bound, then released).

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the same range every
outgoing connection takes its local port from: between the pick and the server's own bind
(seconds, for a Serve proxy behind a starting Ray cluster that opens hundreds of connections) an
outgoing connection can take it, and the server fails with "Failed to bind". So the ports are
drawn between Ray's worker ports (10002-19999 by default) and the ephemeral range, where nothing
binds unasked; and checked free by binding them.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 19999
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are picked, so no port
    is handed out twice (Ray refuses a port given to two components)."""
    span = quiet_range()
    draw = random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(100 * count):
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", draw.randint(*span) if span else 0))
            except OSError:  # taken (or in TIME_WAIT): draw again
                continue
            ports.append(sock.getsockname()[1])
        if len(ports) < count:
            raise RuntimeError(f"found {len(ports)} of {count} free ports in {span}")
        return ports


def quiet_range() -> tuple[int, int] | None:
    """Ports above Ray's workers' and below the kernel's ephemeral range (None where the
    ephemeral range leaves no such gap: the kernel picks then)."""
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    low, high = RAY_WORKER_PORTS_END + 1, ephemeral_low - 1
    return (low, high) if high - low >= 1000 else None
