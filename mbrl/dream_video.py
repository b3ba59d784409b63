"""`mbrl dream`: the world model's imagination next to the real game, under the same real actions."""

from __future__ import annotations

import numpy as np
import torch

from mbrl.replay import ReplayBuffer
from world_models.base import WorldModel, imagine


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
    decoded = model.decode(imagined)[0]  # (steps, H, W) in [0, 1]
    real = window.frames[0, context:, -1]  # (steps, H, W) newest frames of the same steps
    return real, (decoded.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
