"""The model zoo: tokenizer and tiny Llama models built locally (no model hub is reachable)."""

from retro_ray.zoo.models import (
    SPECIAL_TOKENS,
    init_llama,
    save_model,
    special_token_ids,
    train_tokenizer,
)

__all__ = ["SPECIAL_TOKENS", "init_llama", "save_model", "special_token_ids", "train_tokenizer"]
