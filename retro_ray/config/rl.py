"""The RL baseline's section: RLlib PPO on the token-id / Discrete-action wrapper
(``retro-ray rl-baseline``, ``retro_ray.rl``)."""

from __future__ import annotations

from dataclasses import dataclass

from retro_ray.config.checks import in_range, positive, require
from retro_ray.config.serving import ZooRecipeName


@dataclass(frozen=True)
class RLConfig:
    """PPO on the new API stack. The environment, its options, the test tasks (``env.num_tasks``,
    ``env.seed``) and the trials per task (``trials.max_trials``) come from the rest of the tree,
    so the baseline is evaluated on exactly the tasks and trials of ``retro-ray eval``."""

    episodes: int = 3320
    """Training budget in environment episodes (one episode = one trial). 3320 is what the demo's
    Retroformer collection played (``configs/train.yaml``: the rows of its experience log)."""
    eval_every: int = 400
    """Evaluate on the test split each time this many more training episodes were consumed (and
    before training and at the end): the points of the learning curve."""
    eval_seeds: int = 3
    """Evaluation seeds (the policy samples its actions; each seed draws them anew)."""
    train_tasks: int = 1000
    """Train-split tasks the env runners draw from (uniformly, by the episode's seed)."""
    zoo_recipe: ZooRecipeName = "default"
    """The zoo build whose tokenizer turns observations into ids (built if missing)."""
    tokenizer: str | None = None
    """A model directory or tokenizer.json to use instead of the zoo's."""
    max_tokens: int = 192
    """Observation length in token ids (padded; longer texts keep their start and end)."""
    num_env_runners: int = 2
    """RLlib EnvRunner actors (spread over the cluster); 0 samples in the driver."""
    envs_per_env_runner: int = 1
    cpus_per_env_runner: float = 0.5
    """Logical CPUs each EnvRunner reserves (fractional on small machines, see docs/design.md)."""
    num_learners: int = 0
    """Remote Learner actors of the LearnerGroup; 0 trains in the driver's process."""
    train_batch_size: int = 512
    """Environment steps per PPO iteration (per learner)."""
    minibatch_size: int = 128
    num_epochs: int = 6
    lr: float = 1e-3
    gamma: float = 0.99
    entropy_coeff: float = 0.01
    embed_dim: int = 32
    """Token embedding width of the RLModule."""
    hidden: int = 64
    """Width of the encoder's convolutions and of the policy and value heads."""
    checkpoint_every: int = 5
    """Save an RLlib checkpoint every this many PPO iterations (and at the end)."""

    def validate(self, key: str) -> None:
        for name in ("episodes", "eval_every", "eval_seeds", "train_tasks", "max_tokens"):
            positive(getattr(self, name), f"{key}.{name}")
        for name in ("train_batch_size", "minibatch_size", "num_epochs", "embed_dim", "hidden"):
            positive(getattr(self, name), f"{key}.{name}")
        positive(self.envs_per_env_runner, f"{key}.envs_per_env_runner")
        positive(self.checkpoint_every, f"{key}.checkpoint_every")
        require(self.max_tokens > 24, f"{key}.max_tokens", self.max_tokens, "an integer > 24")
        require(self.num_env_runners >= 0, f"{key}.num_env_runners", self.num_env_runners, ">= 0")
        require(self.num_learners >= 0, f"{key}.num_learners", self.num_learners, ">= 0")
        positive(self.cpus_per_env_runner, f"{key}.cpus_per_env_runner")
        require(
            self.minibatch_size <= self.train_batch_size,
            f"{key}.minibatch_size",
            self.minibatch_size,
            f"<= {key}.train_batch_size ({self.train_batch_size})",
        )
        positive(self.lr, f"{key}.lr")
        in_range(self.gamma, f"{key}.gamma", 0.0, 1.0)
        require(self.entropy_coeff >= 0, f"{key}.entropy_coeff", self.entropy_coeff, ">= 0")
