"""The adapter registry, shared by the learner (which publishes into it) and serving (which
hot-swaps what it says): versioned LoRA adapters on disk, the ``train``/``prod`` aliases, the audit
log, and the checks an adapter passes before it is admitted.

It lives beside ``learner/`` and ``serve/``, not inside either, and imports neither (nor Ray):
the registry is a directory any process can open. ``store`` holds the directory format and
``AdapterRegistry``; ``validation`` the adapter and name checks.
"""

from retro_ray.registry.store import (
    ALIASES,
    HISTORY_EVENTS,
    PROD_ALIAS,
    TRAIN_ALIAS,
    AdapterRegistry,
    AdapterVersion,
    PendingPromotion,
    RegistryOwnedByAnotherRun,
    RegistryState,
    read_events,
    registry_history,
)
from retro_ray.registry.validation import AdapterRejected

__all__ = [
    "ALIASES",
    "HISTORY_EVENTS",
    "PROD_ALIAS",
    "TRAIN_ALIAS",
    "AdapterRegistry",
    "AdapterRejected",
    "AdapterVersion",
    "PendingPromotion",
    "RegistryOwnedByAnotherRun",
    "RegistryState",
    "read_events",
    "registry_history",
]
