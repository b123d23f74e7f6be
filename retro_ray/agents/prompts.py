"""Prompt text of the actor and the parser of its output (the reflection prompt, which serving
shares, is ``retro_ray.reflection.prompt``).

Prompts are compact on purpose: the embedded default's models are tiny and see a few hundred
tokens. Real LLMs can get one expert demonstration per environment as a few-shot example
(``actor.few_shot``); the demonstrations are produced by our own expert policies, so no prompt
text is borrowed from other projects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from retro_ray.envs.base import Trajectory

ACTION_PROMPT = "> "
MAX_ACTION_CHARS = 200


def actor_prompt(
    instruction: str,
    trajectory: Trajectory,
    reflections: Sequence[str],
    scratchpad_max_chars: int,
    few_shot: str | None = None,
) -> str:
    """instruction, [example], [reflections], task, trajectory so far, then ``> `` for the action."""
    parts = [instruction]
    if few_shot:
        parts.append(f"Example:\n{few_shot}\nNow your task.")
    if reflections:
        parts.append("Notes from earlier trials:\n" + "\n".join(f"- {r}" for r in reflections))
    parts.append(trajectory.first_observation)
    so_far = trajectory.render(scratchpad_max_chars)
    if so_far:
        parts.append(so_far)
    return "\n".join(parts) + "\n" + ACTION_PROMPT


@dataclass(frozen=True)
class ParsedAction:
    kind: Literal["action", "think", "invalid"]
    text: str  # the action to send, the thought, or the explanation of what was wrong


def parse_action(output: str) -> ParsedAction:
    """The first non-empty line of the model's output, as an action.

    Accepts ``> Search[x]``, ``Action: Search[x]``, ``Action 2: Search[x]`` and bare ``Search[x]``;
    a line starting with ``Thought``/``Think`` is a thought (no environment step). Anything
    unusable is an invalid action whose explanation becomes the observation.
    """
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    if not line:
        return ParsedAction(
            "invalid", "Invalid action: the reply was empty. Reply with one action."
        )
    line = line.lstrip(">").strip()
    head, sep, rest = line.partition(":")
    head_word = head.strip().split(" ")[0].lower() if head.strip() else ""
    if sep and head_word == "action":
        line = rest.strip()
    elif sep and head_word in {"thought", "think"}:
        return ParsedAction("think", rest.strip())
    elif head_word in {"thought", "think"}:
        return ParsedAction("think", line)
    if not line:
        return ParsedAction("invalid", "Invalid action: no action after 'Action:'.")
    if len(line) > MAX_ACTION_CHARS:
        return ParsedAction(
            "invalid", f"Invalid action: longer than {MAX_ACTION_CHARS} characters. Be brief."
        )
    return ParsedAction("action", line)
