"""The built-in, procedurally generated, seeded text environments of the embedded default.

Importing this package registers ``lookup``, ``household`` and ``shop`` by name, and ``mixture``,
which plays several of them as one environment.
"""

from retro_ray.envs.builtin.household import HouseholdEnv, HouseholdOptions
from retro_ray.envs.builtin.lookup import LookupEnv, LookupOptions
from retro_ray.envs.builtin.mixture import MixtureEnv, MixtureOptions
from retro_ray.envs.builtin.shop import ShopEnv, ShopOptions

__all__ = [
    "HouseholdEnv",
    "HouseholdOptions",
    "LookupEnv",
    "LookupOptions",
    "MixtureEnv",
    "MixtureOptions",
    "ShopEnv",
    "ShopOptions",
]
