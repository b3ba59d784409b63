"""Real envs seen through the world model: observations replaced by their latents.

A policy trained in the dream (latent mode) acts on `world_model.encode(obs)`; these wrappers
give a real env exactly that observation and the dream env's latent observation space.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import batch_space

from mbrl.envs.dream import latent_space
from mbrl.world_models.base import WorldModel


class LatentObservation(gym.ObservationWrapper):
    """A real env's uint8 (S, H, W) observations as float32 latents (`world_model.latent_shape`).

    Args:
        env: a single env with uint8 frame-stack observations (e.g. `mbrl.envs.atari.make_env`).
        world_model: encodes the observations (it must live on `device`).
        device: torch device of the encoding.
    """

    def __init__(self, env: gym.Env, world_model: WorldModel, device: str = "cpu") -> None:
        super().__init__(env)
        _check_frames(env.observation_space)
        self.world_model, self.device = world_model, torch.device(device)
        self.observation_space = latent_space(world_model)

    def observation(self, observation: Any) -> np.ndarray:
        return encode_observations(self.world_model, np.asarray(observation)[None], self.device)[0]


class LatentObservationVector(gym.vector.VectorObservationWrapper):
    """A vector env's uint8 (N, S, H, W) observations as float32 latents (N, *latent_shape), one encode for all.

    Args:
        env: a vector env with uint8 frame-stack observations (e.g. `mbrl.envs.atari.make_vector_env`).
        world_model: encodes the observations (it must live on `device`).
        device: torch device of the encoding.
    """

    def __init__(self, env: gym.vector.VectorEnv, world_model: WorldModel, device: str = "cpu") -> None:
        super().__init__(env)
        _check_frames(env.single_observation_space)
        self.world_model, self.device = world_model, torch.device(device)
        self.single_observation_space = latent_space(world_model)
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def observations(self, observations: Any) -> np.ndarray:
        return encode_observations(self.world_model, np.asarray(observations), self.device)


@torch.no_grad()
def encode_observations(world_model: WorldModel, observations: np.ndarray, device: torch.device) -> np.ndarray:
    """uint8 frame stacks (N, S, H, W) -> float32 latents (N, *latent_shape), one batched encode."""
    frames = torch.as_tensor(observations, device=device)[:, None]  # (N, 1, S, H, W)
    return world_model.encode(frames)[:, 0].float().cpu().numpy()


def _check_frames(space: gym.Space) -> None:
    if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
        raise ValueError(f"expected uint8 (S, H, W) frame-stack observations, got {space}")
