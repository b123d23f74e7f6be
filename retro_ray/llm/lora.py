"""LoRA adapters on a local torch model, addressed by the names the rest of retro_ray uses.

Adapter names are versions or aliases such as ``retro@17`` or ``train``; peft keeps adapters in
``ModuleDict``s whose keys may not contain dots, so each public name maps to a private peft name.
The base model is wrapped by peft only once the first adapter arrives, so a backend without
adapters runs the plain transformers model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from transformers import PreTrainedModel


class AdapterSet:
    """The model plus its named LoRA adapters; ``active(name)`` selects one for a forward pass.

    Not thread-safe on its own: the caller serialises ``active`` blocks (one batch at a time),
    because selecting an adapter mutates the shared model."""

    def __init__(self, model: PreTrainedModel, device: str | torch.device = "cpu") -> None:
        self.model: torch.nn.Module = model
        self.device = device
        self._peft_names: dict[str, str] = {}
        self._counter = itertools.count()

    @property
    def names(self) -> list[str]:
        return list(self._peft_names)

    def load(self, name: str, path: str | Path) -> None:
        """Load the peft adapter directory ``path`` under ``name`` (names are immutable versions:
        loading an existing name is an error, so a stale copy can never be served). ``name`` is
        registered only after a successful load: a failed one leaves nothing behind (peft injects
        the adapter's layers before it reads the weights; they are removed again), so it can be
        retried under the same name."""
        from peft import PeftModel

        if name in self._peft_names:
            raise ValueError(f"adapter {name!r} is already loaded; publish a new version name")
        peft_name = f"adapter_{next(self._counter)}"
        if isinstance(self.model, PeftModel):
            try:
                self.model.load_adapter(
                    str(path), adapter_name=peft_name, torch_device=str(self.device)
                )
            except Exception:
                if peft_name in self.model.peft_config:
                    self.model.delete_adapter(peft_name)
                raise
        else:
            self.model = PeftModel.from_pretrained(
                self.model, str(path), adapter_name=peft_name, torch_device=str(self.device)
            )
        self.model.eval()
        self._peft_names[name] = peft_name

    def unload(self, name: str) -> None:
        """Free the adapter ``name``; the base model and the other adapters are unaffected."""
        peft_name = self._peft_names.pop(name)
        if self._peft_names:
            self.model.delete_adapter(peft_name)
        else:  # peft cannot delete its last adapter: unwrap back to the plain base model
            self.model = self.model.unload()

    @contextmanager
    def active(self, name: str | None) -> Iterator[torch.nn.Module]:
        """Yield the model with adapter ``name`` active, or the plain base model for ``None``."""
        if name is None:
            disable = self.model.disable_adapter() if self._peft_names else nullcontext()
            with disable:
                yield self.model
            return
        if name not in self._peft_names:
            raise KeyError(f"unknown adapter {name!r}; loaded: {self.names}")
        self.model.set_adapter(self._peft_names[name])
        yield self.model
