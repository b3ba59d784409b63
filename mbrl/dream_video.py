"""`mbrl dream`: the world model's imagination next to the real game, under the same real actions."""

from __future__ import annotations

import numpy as np
import torch

from mbrl.replay import ReplayBuffer
from world_models.base import WorldModel


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
    state = model.observe(model.encode(frames[:, :context]), actions[:, : context - 1])
    imagined = []
    for t in range(steps):
        out = model.step(state, actions[:, context - 1 + t])
        state = out.state
        imagined.append(out.latent)
    decoded = model.decode(torch.stack(imagined, dim=1))[0]  # (steps, H, W) in [0, 1]
    real = window.frames[0, context:, -1]  # (steps, H, W) newest frames of the same steps
    return real, (decoded.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
