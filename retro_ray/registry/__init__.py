"""The adapter registry, shared by the learner (which publishes into it) and serving (which
hot-swaps what it says): versioned LoRA adapters on disk, the ``train``/``prod`` aliases, the audit
log, and the checks an adapter passes before it is admitted.

It lives beside ``learner/`` and ``serve/``, not inside either, and imports neither (nor Ray):
the registry is a directory any process can open. ``store`` holds the directory format and
``AdapterRegistry``; ``index`` the index file, its aliases and its lock; ``versions`` the version
directories; ``audit`` the audit log's readers; ``validation`` the adapter and name checks.
"""

from retro_ray.registry.audit import HISTORY_EVENTS, read_events, registry_history
from retro_ray.registry.index import ALIASES, PROD_ALIAS, TRAIN_ALIAS
from retro_ray.registry.store import (
    AdapterRegistry,
    PendingPromotion,
    RegistryOwnedByAnotherRun,
    RegistryState,
)
from retro_ray.registry.validation import AdapterRejected
from retro_ray.registry.versions import AdapterVersion

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
