"""The environments as gymnasium environments, and built by name inside a Ray worker."""

from __future__ import annotations

import gymnasium
import pytest

from retro_ray.envs.gym_env import GymTextEnv, register_gymnasium_envs


@pytest.mark.parametrize("name", ["lookup", "household", "shop"])
def test_gymnasium_make_and_expert_episode(name: str) -> None:
    (env_id,) = [i for i in register_gymnasium_envs() if i == f"retro_ray/{name}-v0"]
    env = gymnasium.make(env_id, disable_env_checker=True).unwrapped
    assert isinstance(env, GymTextEnv)
    obs, info = env.reset(seed=3)
    assert isinstance(obs, str) and obs and info["task_id"].startswith(name)
    assert env.observation_space.contains(obs)
    for _ in range(env.env.max_steps):
        obs, _reward, terminated, truncated, info = env.step(env.env.expert_action())
        if terminated or truncated:
            break
    assert info["won"] and terminated and not truncated


def test_reset_by_task_id_is_reproducible() -> None:
    a, b = GymTextEnv({"name": "lookup"}), GymTextEnv({"name": "lookup"})
    obs_a, info = a.reset(seed=1)
    obs_b, _ = b.reset(options={"task_id": info["task_id"]})
    assert obs_a == obs_b


@pytest.mark.slow
def test_any_ray_worker_builds_registered_envs(ray_cluster) -> None:
    import ray

    from retro_ray.envs.ray_registration import make_registered_env, register_ray_envs

    # The built-ins: no data files, no server, an expert each.
    names = register_ray_envs(["lookup", "household", "shop"])
    assert "retro_ray/household" in names

    @ray.remote(num_cpus=0.1)
    def expert_episode(ray_name: str) -> bool:
        env = make_registered_env(ray_name, {"split": "test"})
        env.reset(seed=0)
        for _ in range(env.env.max_steps):
            _, _, terminated, truncated, info = env.step(env.env.expert_action())
            if terminated or truncated:
                return bool(info["won"])
        return False

    assert all(ray.get([expert_episode.remote(n) for n in names]))
