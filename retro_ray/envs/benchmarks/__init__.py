"""The paper's benchmark environments (HotPotQA, ALFWorld, WebShop). Importing this package
registers them; each module imports its heavy optional dependencies only when an environment is
built, so the registry stays cheap and works without the optional extras installed."""

# One line per environment: importing the module registers it.
import retro_ray.envs.benchmarks.alfworld_env
import retro_ray.envs.benchmarks.hotpotqa
import retro_ray.envs.benchmarks.webshop  # noqa: F401
