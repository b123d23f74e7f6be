"""The PPO baseline's RLModule: token embedding, a small convolutional encoder, policy and value
heads (torch, RLlib's new API stack).

Input: the wrapper's ``{"tokens", "action_mask"}`` observation (``retro_ray.rl.token_env``).
Encoder: embed the ids (pad id 0 embeds to zeros and is left out of the pooling), two 1-D
convolutions (kernel 5), then max and mean pooling over the unpadded positions; the action mask
is concatenated to the pooled vector (which slots are open says much about the state). Heads: an
MLP each for the logits over the slots and for the value. Masked slots get a logit of RLlib's
``FLOAT_MIN``, so the policy never samples them and their probability is 0 in PPO's loss.

No recurrent state: a trial is played from what it shows (the wrapper's text covers the whole
trial, up to ``max_tokens``), and the next trial starts without memory of the last one.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.torch_utils import FLOAT_MIN
from torch import nn


class TokenPolicyModule(TorchRLModule, ValueFunctionAPI):
    """``model_config``: ``vocab_size`` (required), ``embed_dim`` (32), ``hidden`` (64),
    ``pad_id`` (0)."""

    def setup(self) -> None:
        cfg = dict(self.model_config or {})
        if "vocab_size" not in cfg:
            raise ValueError("TokenPolicyModule needs model_config['vocab_size']")
        embed, hidden = int(cfg.get("embed_dim", 32)), int(cfg.get("hidden", 64))
        self.pad_id = int(cfg.get("pad_id", 0))
        n_actions = int(self.action_space.n)
        self.embedding = nn.Embedding(int(cfg["vocab_size"]), embed, padding_idx=self.pad_id)
        self.convs = nn.Sequential(
            nn.Conv1d(embed, hidden, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 5, padding=2),
            nn.ReLU(),
        )
        features = 2 * hidden + n_actions
        self.pi = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, n_actions)
        )
        self.vf = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.pi[-1].weight)  # a uniform policy over the open slots at the start
        nn.init.zeros_(self.pi[-1].bias)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = obs["tokens"].long()
        mask = obs["action_mask"].float()
        keep = (tokens != self.pad_id).unsqueeze(1).float()  # [B, 1, T]
        h = self.convs(self.embedding(tokens).transpose(1, 2)) * keep  # [B, H, T]
        count = keep.sum(-1).clamp(min=1.0)
        mean = h.sum(-1) / count
        peak = (h + (keep - 1.0) * 1e4).amax(-1)  # padding never wins the max
        return torch.cat([peak, mean, mask], dim=-1)

    def _logits(self, obs: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        logits = self.pi(features)
        return logits + torch.clamp(torch.log(obs["action_mask"].float()), min=FLOAT_MIN)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        features = self.encode(obs)
        return {Columns.ACTION_DIST_INPUTS: self._logits(obs, features)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        features = self.encode(obs)
        return {
            Columns.ACTION_DIST_INPUTS: self._logits(obs, features),
            Columns.EMBEDDINGS: features,
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self.encode(batch[Columns.OBS])
        return self.vf(embeddings).squeeze(-1)
