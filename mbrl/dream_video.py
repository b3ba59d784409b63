"""`mbrl dream`: the world model's imagination next to the real game, or following an agent."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from mbrl.core.replay import ReplayBuffer
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.world_models.base import WorldModel, imagine


@torch.no_grad()
def open_loop(
    model: WorldModel, buffer: ReplayBuffer, episodes: np.ndarray, steps: int, context: int,
    rng: np.random.Generator, device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Real frames and imagined frames of one held-out window, open loop from a real context.

    The model sees `context` real observations, then imagines `steps` steps under the actions
    really taken. Returns uint8 (steps, H, W) each: the real newest frames and the decoded
    imagined ones at the same steps.

    Raises:
        ValueError: no episode holds `context - 1 + steps` transitions.
    """
    window = buffer.sample(1, context - 1 + steps, rng, episodes=episodes)
    frames = torch.from_numpy(window.frames).to(device)  # (1, context + steps, S, H, W)
    actions = torch.from_numpy(window.actions).to(device)  # (1, context - 1 + steps)
    imagined = imagine(model, model.encode(frames[:, :context]), actions).latent  # (1, steps, *latent_shape)
    assert imagined is not None  # imagine always gives them
    decoded = model.decode(imagined)[0]  # (steps, H, W) in [0, 1]
    real = window.frames[0, context:, -1]  # (steps, H, W) newest frames of the same steps
    return real, (decoded.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def agent_dream(
    model: WorldModel, buffer: ReplayBuffer, episodes: np.ndarray, policy: Any, steps: int, config: DreamConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Imagined frames that follow an agent: the dream env under `policy`, restarting when an episode ends.

    Args:
        policy: acts on latents, with SB3's `predict(obs, deterministic=...)` (e.g. a learner from train-agent).
        config: the dream's settings (latent observations are used whatever `config.observation` says).

    Returns:
        uint8 frames (steps, H, W) decoded from the imagined latents, and float32 rewards (steps,)
        the dream gave.
    """
    env = DreamVectorEnv(model, buffer, 1, dataclasses.replace(config, observation="latent"), seed=seed,
                         episodes=episodes, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames, rewards = [], []
    for _ in range(steps):
        action, _ = policy.predict(obs, deterministic=False)
        obs, reward, _, _, _ = env.step(np.asarray(action, dtype=np.int64).reshape(1))
        frame = env.render()
        assert frame is not None
        frames.append(frame[0, :, :, 0])
        rewards.append(float(reward[0]))
    return np.stack(frames), np.asarray(rewards, dtype=np.float32)
