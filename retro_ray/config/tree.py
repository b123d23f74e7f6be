"""The root of the configuration tree."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from retro_ray.config.agent import (
    ActorConfig,
    EnvConfig,
    ReflectorConfig,
    RunConfig,
    TrialsConfig,
)
from retro_ray.config.checks import ConfigError, finite_numbers
from retro_ray.config.rl import RLConfig
from retro_ray.config.serving import RegistryConfig, ServeConfig
from retro_ray.config.training import LearnerConfig, RolloutConfig, TrainConfig


@dataclass(frozen=True)
class Config:
    """The root of the tree."""

    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    reflector: ReflectorConfig = field(default_factory=ReflectorConfig)
    trials: TrialsConfig = field(default_factory=TrialsConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def validate(self) -> Config:
        """Check every value; raise ConfigError naming the first bad key. Returns self.

        Each section checks itself; whether ``env.name`` and ``env.options`` name a real
        environment is checked above the config, by ``retro_ray.run_config.load_run_config``
        (the environment registry reads the config, so the config cannot ask it)."""
        finite_numbers(self, "")  # nan / inf anywhere, before any range check sees them
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        self._check_across_sections()
        return self

    def _check_across_sections(self) -> None:
        """Values that are valid alone but not together."""
        if self.train.overlap and self.learner.max_staleness < 1:
            raise ConfigError(
                "train.overlap: true needs learner.max_staleness >= 1, got "
                f"{self.learner.max_staleness} (overlap trains on data one learner step old); "
                "set learner.max_staleness=1 or train.overlap=false"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    @property
    def registry_dir(self) -> Path:
        """``registry.root``, or the run's own ``<run dir>/registry`` when unset."""
        root = self.registry.root
        return Path(root) if root is not None else self.run_dir / "registry"
