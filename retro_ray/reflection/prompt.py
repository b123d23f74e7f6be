"""The reflection prompt, and the cleaning of what the reflector wrote.

The same text is built wherever a reflection is asked for (the reflectors, the branching rule,
the zoo's training data, the Serve app's ``/v1/reflect``): the retrospective model is trained on
this format and served with it. The actor's prompt and its parser are in
``retro_ray.agents.prompts``.
"""

from __future__ import annotations

from collections.abc import Sequence

from retro_ray.envs.base import Trajectory

REFLECTION_CUE = "\nReflection:"
"""The end of a completion-format reflection prompt: the model writes on from here."""


def reflection_prompt(
    instruction: str,
    trajectory: Trajectory,
    earlier_reflections: Sequence[str],
    trajectory_max_chars: int,
) -> str:
    """instruction, task, the failed trajectory and its return, earlier reflections, then the cue.

    The task (first observation) is cut to ``trajectory_max_chars`` like the trajectory: an
    environment whose first page is huge (a WebShop listing, a long document) must not push the
    prompt past the reflector's context window."""
    task = clip_head(trajectory.first_observation, trajectory_max_chars)
    parts = [instruction, task, trajectory.render(trajectory_max_chars)]
    parts.append(f"Return: {trajectory.score:.2f}")
    if earlier_reflections:
        parts.append("Earlier notes:\n" + "\n".join(f"- {r}" for r in earlier_reflections))
    return "\n".join(parts) + REFLECTION_CUE


def reflection_messages(
    instruction: str,
    trajectory: Trajectory,
    earlier_reflections: Sequence[str],
    trajectory_max_chars: int,
) -> list[dict[str, str]]:
    """The reflection prompt as a chat model takes it: the instruction as the system turn, the
    task, failed trajectory, return and earlier notes as the user turn (the same text as
    :func:`reflection_prompt`, without its ``Reflection:`` cue: the chat template opens the
    assistant's turn instead)."""
    text = reflection_prompt(instruction, trajectory, earlier_reflections, trajectory_max_chars)
    body = text[len(instruction) + 1 : -len(REFLECTION_CUE)]
    return [{"role": "system", "content": instruction}, {"role": "user", "content": body}]


def clip_head(text: str, max_chars: int) -> str:
    """The first ``max_chars`` characters, ``...`` marking a cut (a task states its goal first)."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 3)] + "..."


def clean_reflection(text: str, max_chars: int) -> str:
    """One line of reflection: whitespace collapsed, cut to ``max_chars``."""
    return " ".join(text.split())[:max_chars]
