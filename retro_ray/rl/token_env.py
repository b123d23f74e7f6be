"""A built-in environment as token ids in, a ``Discrete`` action out: what RLlib learns from.

``TokenActionEnv`` wraps :class:`retro_ray.envs.gym_env.GymTextEnv` (the same environments,
tasks and splits; nothing re-implemented) and changes only the interface:

- observation: ``{"tokens": int64[max_tokens], "action_mask": float32[n_slots]}``. ``tokens`` is
  the zoo tokenizer's ids of :func:`render` (the task, the trial so far and the numbered actions
  open now), padded with the tokenizer's pad id; a text longer than ``max_tokens`` keeps its
  first ``HEAD_TOKENS`` ids (the task) and its last ones (the newest steps).
- action: a slot of the family's layout (``retro_ray.rl.actions``); the wrapper steps the text
  env with that slot's text. A masked slot (a policy that ignores the mask) is played as an
  invalid action, which the environment answers as it answers any malformed text: a wasted step.

One gymnasium episode is one trial. The pure parts (:func:`render`, :class:`TokenEncoder`) need
neither Ray nor torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from retro_ray.envs.base import Task
from retro_ray.envs.gym_env import GymTextEnv
from retro_ray.rl.actions import Log, check_options, family

HEAD_TOKENS = 24
"""Ids kept from the start of a text too long for ``max_tokens`` (the task line)."""
MASKED_ACTION = "(no action)"
"""The text played for a masked slot: the environment answers it as an invalid action."""


def render(first_observation: str, log: Log, slots: Sequence[str | None]) -> str:
    """The text a policy reads: the task, each step of the trial, the open actions by slot."""
    lines = [first_observation]
    lines += [f"> {action}\n{observation}" for action, observation in log]
    lines.append("Actions: " + " | ".join(f"{i}: {a}" for i, a in enumerate(slots) if a))
    return "\n".join(lines)


class TokenEncoder:
    """Text to a fixed-length id vector with a ``tokenizers`` tokenizer (the zoo's)."""

    def __init__(self, tokenizer_file: str | Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_file)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(
                f"no tokenizer at {path}; point rl.tokenizer at a zoo model directory "
                "(retro-ray zoo build prints it) or leave it unset to use the zoo's build"
            )
        if max_tokens <= HEAD_TOKENS:
            raise ValueError(f"max_tokens must be > {HEAD_TOKENS}, got {max_tokens}")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.max_tokens = max_tokens
        pad = self.tokenizer.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else int(pad)
        self.vocab_size = int(self.tokenizer.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) > self.max_tokens:
            ids = ids[:HEAD_TOKENS] + ids[len(ids) - (self.max_tokens - HEAD_TOKENS) :]
        out = np.full(self.max_tokens, self.pad_id, dtype=np.int64)
        out[: len(ids)] = ids
        return out


class TokenActionEnv(gymnasium.Env):
    """``env_config``: GymTextEnv's keys (``name``, ``options``, ``split``, ``seed``,
    ``task_pool``) plus ``tokenizer`` (a zoo model directory or tokenizer.json) and
    ``max_tokens``. ``reset(options={"task_id": ...})`` plays one given task."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's own convention)

    def __init__(self, env_config: dict[str, Any] | None = None) -> None:
        config = dict(env_config or {})
        if "tokenizer" not in config:
            raise ValueError("TokenActionEnv needs env_config['tokenizer'] (a zoo model dir)")
        self.family = family(str(config.get("name")))  # before building: a clear refusal
        self.text_env = GymTextEnv({k: v for k, v in config.items() if k not in _OWN_KEYS})
        check_options(self.text_env.name, getattr(self.text_env.env, "options", None))
        self.encoder = TokenEncoder(config["tokenizer"], int(config.get("max_tokens", 160)))
        n = self.family.layout.size
        self.observation_space = spaces.Dict(
            {
                "tokens": spaces.Box(
                    0, self.encoder.vocab_size - 1, (self.encoder.max_tokens,), np.int64
                ),
                "action_mask": spaces.Box(0.0, 1.0, (n,), np.float32),
            }
        )
        self.action_space = spaces.Discrete(n)
        self.first_observation = ""
        self.log: list[tuple[str, str]] = []
        self.slots: list[str | None] = []

    @property
    def task(self) -> Task | None:
        return self.text_env.task

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        return self.text_env.env.tasks(split, n, seed)  # type: ignore[attr-defined]

    def _observe(self) -> dict[str, np.ndarray]:
        self.slots = self.family.slots(self.first_observation, self.log)
        mask = np.array([a is not None for a in self.slots], dtype=np.float32)
        text = render(self.first_observation, self.log, self.slots)
        return {"tokens": self.encoder.encode(text), "action_mask": mask}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.first_observation, info = self.text_env.reset(seed=seed, options=options)
        self.log = []
        return self._observe(), info

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        index = int(action)
        if not 0 <= index < len(self.slots):
            raise ValueError(f"action {index} is outside Discrete({len(self.slots)})")
        text = self.slots[index] or MASKED_ACTION
        observation, reward, terminated, truncated, info = self.text_env.step(text)
        self.log.append((text, observation))
        info = {**info, "action": text, "masked": self.slots[index] is None}
        return self._observe(), float(reward), terminated, truncated, info


_OWN_KEYS = ("tokenizer", "max_tokens")
