"""Forward passes that compute each prompt once for all the rows that share it.

A learner batch holds ``m`` reflections per failed trial, each after the same prompt (the trial
the retrospective model read), and the prompt is most of a row: in the demo's batches 120 prompt
tokens against 16 of reflection, so four rows compute the same 120 positions four times. Here
each distinct prompt runs once; its keys and values (the model's cache) are then indexed out to
its rows, and only the reflections run per row, attending to them. Attention is causal, so a
prompt's positions see only the prompt: the log-probs are the full forward's (up to float
summation order), and so are the gradients, which flow back through the indexed cache into the
one prompt pass (the sum over its rows).

The prompt's last token runs with the reflection, not the prompt, so the reflection pass yields
the logits of every reflection token and the prompt pass needs none. Prompts are right-padded
(no row is all padding, which some attention kernels turn into NaN), the reflection pass gives
explicit positions, and its attention mask covers the padded prompt cache and its own tokens.

Needs a model whose cache is a transformers ``Cache`` with ``batch_select_indices`` (every
decoder with a key/value cache: Llama, Qwen 2, Mistral, ...). ``learner.share_prompts: false``
runs the plain forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PromptLayout:
    """Where each row's prompt and reflection lie, and which rows share a prompt."""

    owner: Tensor  # (B,) long: index of the row's prompt among the distinct ones
    prompt_rows: Tensor  # (U,) long: one row holding each distinct prompt
    starts: Tensor  # (B,) long: column of the row's first reflection token (its prompt's length)
    lengths: Tensor  # (B,) long: real tokens of the row (prompt and reflection)

    @property
    def num_prompts(self) -> int:
        return int(self.prompt_rows.numel())

    @property
    def prompt_lengths(self) -> Tensor:
        """(U,) tokens of each distinct prompt."""
        return self.starts[self.prompt_rows]


def prompt_layout(
    input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor
) -> PromptLayout | None:
    """The rows' prompts (everything before the first loss token; a row without loss tokens is
    all prompt) and which rows share one, or None where sharing computes nothing less: no two
    rows share a prompt, or a prompt is shorter than two tokens. Rows must be right-padded."""
    lengths = attention_mask.sum(1).long()
    has_loss = loss_mask.bool().any(1)
    first_loss = loss_mask.bool().long().argmax(1)
    starts = torch.where(has_loss, first_loss, lengths)
    if int(starts.min()) < 2:
        return None
    index: dict[tuple[int, ...], int] = {}
    owner, prompt_rows = [], []
    for row, (ids, start) in enumerate(zip(input_ids.tolist(), starts.tolist(), strict=True)):
        key = tuple(ids[:start])
        if key not in index:
            index[key] = len(prompt_rows)
            prompt_rows.append(row)
        owner.append(index[key])
    if len(prompt_rows) == len(owner):
        return None
    return PromptLayout(
        owner=torch.tensor(owner, device=input_ids.device),
        prompt_rows=torch.tensor(prompt_rows, device=input_ids.device),
        starts=starts,
        lengths=lengths,
    )


def shared_prompt_logits(
    model: torch.nn.Module, input_ids: Tensor, layout: PromptLayout
) -> tuple[Tensor, Tensor]:
    """Logits of every reflection token, each prompt computed once.

    Returns ``(logits, columns)``: logits (B, R, V), ``logits[b, j]`` the distribution of the
    token at column ``columns[b, j]`` of ``input_ids``; R is the longest reflection, and columns
    past a row's end are ``-1``."""
    device = input_ids.device
    cols = torch.arange(int(layout.prompt_lengths.max()) - 1, device=device)
    # The prompts without their last token, right-padded: one row per distinct prompt.
    prefix_mask = (cols < (layout.prompt_lengths - 1)[:, None]).long()
    prefix_ids = input_ids[layout.prompt_rows][:, : cols.numel()] * prefix_mask
    cache = model(
        input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True, logits_to_keep=1
    )
    cache = cache.past_key_values
    cache.batch_select_indices(layout.owner)
    # Each row from its prompt's last token to its end: the logits at step j predict column
    # start + j, the j-th reflection token.
    width = int((layout.lengths - layout.starts).max()) + 1
    steps = torch.arange(width, device=device)
    positions = (layout.starts - 1)[:, None] + steps  # (B, R + 1)
    real = positions < layout.lengths[:, None]
    suffix_ids = input_ids.gather(1, positions.clamp(max=input_ids.shape[1] - 1)) * real
    attention = torch.cat([prefix_mask[layout.owner], real.long()], dim=1)
    logits = model(
        input_ids=suffix_ids,
        attention_mask=attention,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).logits[:, :-1]
    targets = positions[:, 1:]
    columns = torch.where(targets < layout.lengths[:, None], targets, -1)
    return logits, columns


def to_columns(values: Tensor, columns: Tensor, width: int) -> Tensor:
    """(B, R) values per reflection step -> (B, width) aligned with ``input_ids``: each value at
    its column, 0 elsewhere (``columns`` -1 drops a value). Differentiable."""
    kept = torch.where(columns >= 0, values, torch.zeros_like(values))
    out = values.new_zeros(values.shape[0], width)
    return out.scatter_add(1, columns.clamp(min=0), kept)
