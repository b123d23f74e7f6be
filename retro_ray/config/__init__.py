"""One typed, frozen configuration tree for every command.

Loaded from YAML, overridden from the command line with dotted keys (``--set actor.endpoint.model=x``)
and validated before any work starts: an error names the key, the bad value and what is allowed.
Every field is documented where it is declared (the docstring under it). Sections live in
``agent.py`` (trial loop), ``training.py`` (learner, collection) and ``serving.py``; the root in
``tree.py``; loading and checking in ``loading.py``. The config imports nothing above it: the
environment named in ``env`` is checked by ``retro_ray.run_config.load_run_config``, the loader
every command uses.
"""

from retro_ray.config.agent import (
    ActorConfig,
    EndpointConfig,
    EnvConfig,
    ReflectorConfig,
    RunConfig,
    TrialsConfig,
)
from retro_ray.config.checks import ConfigError
from retro_ray.config.loading import apply_override, from_dict, load_config, to_dict
from retro_ray.config.rl import RLConfig
from retro_ray.config.serving import RegistryConfig, ServeConfig
from retro_ray.config.training import (
    AggMode,
    LearnerConfig,
    LoRAConfig,
    PolicyLossConfig,
    RolloutConfig,
    TrainConfig,
)
from retro_ray.config.tree import Config

__all__ = [
    "ActorConfig",
    "AggMode",
    "Config",
    "ConfigError",
    "EndpointConfig",
    "EnvConfig",
    "LearnerConfig",
    "LoRAConfig",
    "PolicyLossConfig",
    "RLConfig",
    "ReflectorConfig",
    "RegistryConfig",
    "RolloutConfig",
    "RunConfig",
    "ServeConfig",
    "TrainConfig",
    "TrialsConfig",
    "apply_override",
    "from_dict",
    "load_config",
    "to_dict",
]
