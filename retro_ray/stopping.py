"""SIGTERM stops a long-running command the way Ctrl-C does: drain, stop the Ray it started,
exit ``EXIT_SIGTERM`` (143).

systemd, Kubernetes and ``ray job stop`` stop a process with SIGTERM. Python's default is to die
at once, and the handlers ``ray.init`` installs exit from inside the signal handler: the
command's cleanup never runs, and the local Ray's DashboardAgent and RuntimeEnvAgent outlive it
(they ignore SIGTERM themselves). Under :func:`sigterm_as_interrupt` SIGTERM raises
:class:`Terminated`, a ``KeyboardInterrupt``, in the main thread, so every ``except
KeyboardInterrupt`` and ``finally`` that drains on Ctrl-C drains on SIGTERM too; the command line
then shuts down the Ray it started (``ray.shutdown()`` stops every process of it) and exits with
128 + 15, what a shell reports for a process ended by SIGTERM.

``ray.init`` replaces the SIGTERM handler, so the handler is installed again right after every
``ray.init`` made while a command runs (Ray's ``_post_init_hooks``, the hook its own libraries
use).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on the first SIGTERM while a command runs."""


_state = {"active": False, "received": False}


def sigterm_received() -> bool:
    """Whether SIGTERM arrived during the current (or last) command."""
    return _state["received"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[bool]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread (also after a
    ``ray.init`` in the block); the previous handler is restored after. Only the main thread can
    set handlers: elsewhere (a Ray Tune trial runs commands in a worker thread) nothing changes
    and the block gets False."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = signal.getsignal(signal.SIGTERM)
    _state.update(active=True, received=False)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _reinstall_after_ray_init()
    try:
        yield True
    finally:
        _state["active"] = False
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _on_sigterm(signum: int, frame: Any) -> None:
    """The first SIGTERM interrupts the main thread; later ones are ignored, so that a second
    signal cannot cut short the cleanup the first one started."""
    if _state["received"]:
        print("retro-ray: already stopping", file=sys.stderr, flush=True)
        return
    _state["received"] = True
    print("retro-ray: SIGTERM received, stopping", file=sys.stderr, flush=True)
    raise Terminated()


def _reinstall_after_ray_init() -> None:
    from ray._private import worker

    if _restore_handler not in worker._post_init_hooks:
        worker._post_init_hooks.append(_restore_handler)


def _restore_handler() -> None:
    """Run by ``ray.init`` once connected: take SIGTERM back from Ray's handlers."""
    if _state["active"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def ray_connected() -> bool:
    """Whether this process has a Ray connection open (without importing Ray)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def shutdown_ray() -> None:
    """``ray.shutdown()``: stops every process of a local Ray this process started (raylet,
    GCS, dashboard and runtime-env agents, workers, Serve); on a joined cluster, disconnects."""
    import ray

    ray.shutdown()
