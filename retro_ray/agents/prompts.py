"""Prompts of the actor, as one text (completion models) or as chat turns (chat models), and the
parser of its output (the reflection prompt, which serving shares, is
``retro_ray.reflection.prompt``).

Prompts are compact on purpose: the embedded default's models are tiny and see a few hundred
tokens. Real LLMs can get one expert demonstration per environment as a few-shot example
(``actor.few_shot``); the demonstrations are produced by our own expert policies, so no prompt
text is borrowed from other projects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from retro_ray.envs.base import Step, Trajectory
from retro_ray.llm.base import ChatMessage

ACTION_PROMPT = "> "
MAX_ACTION_CHARS = 200
NOTES_HEADER = "Notes from earlier trials:"
EXAMPLE_END = "(End of the example.) Now your task."


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
        parts.append(_notes(reflections))
    parts.append(trajectory.first_observation)
    so_far = trajectory.render(scratchpad_max_chars)
    if so_far:
        parts.append(so_far)
    return "\n".join(parts) + "\n" + ACTION_PROMPT


def actor_messages(
    instruction: str,
    trajectory: Trajectory,
    reflections: Sequence[str],
    scratchpad_max_chars: int,
    few_shot: Trajectory | None = None,
) -> list[ChatMessage]:
    """The ReAct scratchpad as chat turns, for an actor behind a chat API:

    - ``system``: the instruction, then the notes from earlier trials (the reflections);
    - the few-shot example, if any, as the turns it would have been: ``user`` its task,
      ``assistant`` each expert action (``> action``), ``user`` each observation;
    - ``user`` the task (after the example's last observation, in the same turn: roles alternate
      strictly, which some chat templates require); then per step of this trial ``assistant`` the
      action the actor took and ``user`` the environment's answer. The last turn is always a
      ``user`` turn: the model's reply is the next action.

    Reflections go in the system turn, not in the first user turn: they are standing guidance for
    every step of the trial, which is what a system turn is for; the scratchpad's oldest steps
    may be dropped but the system turn never is; and the example's turns, played without those
    notes, stay as they were played. Steps beyond ``scratchpad_max_chars`` (the same measure as
    the text prompt's) are dropped oldest first, and the task turn says how many.
    """
    system = instruction if not reflections else f"{instruction}\n{_notes(reflections)}"
    messages: list[ChatMessage] = [{"role": "system", "content": system}]
    task_turn = trajectory.first_observation
    if few_shot is not None and few_shot.steps:
        messages.append({"role": "user", "content": f"Example:\n{few_shot.first_observation}"})
        messages += _step_turns(few_shot.steps)
        last_observation = messages.pop()["content"]
        task_turn = f"{last_observation}\n{EXAMPLE_END}\n{task_turn}"
    kept = _recent_steps(trajectory.steps, scratchpad_max_chars)
    dropped = len(trajectory.steps) - len(kept)
    if dropped:
        task_turn += f"\n({dropped} earlier step{'s' if dropped != 1 else ''} not shown.)"
    messages.append({"role": "user", "content": task_turn})
    messages += _step_turns(kept)
    return messages


def _notes(reflections: Sequence[str]) -> str:
    return NOTES_HEADER + "\n" + "\n".join(f"- {r}" for r in reflections)


def _step_turns(steps: Sequence[Step]) -> list[ChatMessage]:
    turns: list[ChatMessage] = []
    for step in steps:
        turns.append({"role": "assistant", "content": f"{ACTION_PROMPT}{step.action}"})
        turns.append({"role": "user", "content": step.observation})
    return turns


def _recent_steps(steps: Sequence[Step], max_chars: int) -> list[Step]:
    """The latest steps whose ``> action`` / observation text fits in ``max_chars`` (as
    ``Trajectory.render`` counts it)."""
    kept: list[Step] = []
    size = 0
    for step in reversed(steps):
        size += len(f"{ACTION_PROMPT}{step.action}\n{step.observation}") + (1 if kept else 0)
        if size > max_chars:
            break
        kept.append(step)
    return kept[::-1]


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
