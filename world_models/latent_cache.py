"""Latents of replay-buffer rows, each encoded once, for whoever needs them while an encoder is frozen.

The dream env restarts rollouts from real contexts and stage-2 training reads the latents of
its windows; both index this cache instead of running the encoder again on a row seen before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mbrl.world_models.base import WorldModel


class LatentCache:
    """Latents of replay-buffer rows, each encoded once, on the world model's device.

    A row seen before costs an index instead of an encoder pass. Valid only while the world
    model's encoder stays as it was: whoever trains the encoder while a cache lives must
    `clear()` it (the trainer does after every stage-1 or stage-3 update; the Dyna loop freezes
    the encoder after its warm-up, so one cache serves its stage-2 refits and all its dreams).

    Args:
        world_model: encodes rows not yet cached.
        stacks: reads the uint8 (n, S, H, W) frame stacks of buffer rows (n,) not cached yet, e.g. the
            buffer's `ReplayBuffer.stacks`; a cache is a cache of one buffer.
    """

    def __init__(self, world_model: WorldModel, stacks: Callable[[np.ndarray], np.ndarray]) -> None:
        self.world_model, self.stacks = world_model, stacks
        self._latents: Tensor | None = None  # (capacity, *latent_shape)
        self._known = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        """Rows cached."""
        return int(self._known.sum())

    def clear(self) -> None:
        """Forget every cached latent."""
        self._latents, self._known = None, np.zeros(0, dtype=bool)

    @torch.no_grad()
    def encode(self, rows: np.ndarray, device: torch.device) -> Tensor:
        """Latents (B, T, *latent_shape) of the observations at buffer rows (B, T) (only rows not cached yet
        read their frames)."""
        flat = rows.reshape(-1)
        self._grow(int(flat.max()) + 1, device)
        assert self._latents is not None
        new = np.unique(flat[~self._known[flat]])
        if len(new):
            obs = torch.as_tensor(self.stacks(new), device=device)
            self._latents[torch.as_tensor(new, device=device)] = self.world_model.encode(obs[:, None])[:, 0]
            self._known[new] = True
        return self._latents[torch.as_tensor(flat, device=device)].view(*rows.shape, *self._latents.shape[1:])

    def _grow(self, size: int, device: torch.device) -> None:
        if size <= len(self._known):
            return
        capacity = max(size, 2 * len(self._known), 1024)
        latents = torch.zeros(capacity, *self.world_model.latent_shape, device=device)
        if self._latents is not None:
            latents[: len(self._known)] = self._latents
        self._latents = latents
        self._known = np.concatenate([self._known, np.zeros(capacity - len(self._known), dtype=bool)])
