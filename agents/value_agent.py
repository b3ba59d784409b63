"""The agent of a value-aware world model: epsilon-greedy on the model's own value head (Q per action)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mbrl.agents.sb3_agent import explore
from mbrl.world_models.jepa_value import ValueJEPAWorldModel


class LatentPolicy:
    """The greedy action of a value head on latents, with SB3's `predict` signature."""

    def __init__(self, world_model: ValueJEPAWorldModel) -> None:
        self.world_model = world_model

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        latents = torch.as_tensor(np.asarray(observation), dtype=torch.float32,
                                  device=next(self.world_model.parameters()).device)
        with torch.no_grad():
            return self.world_model.q_values(latents).argmax(-1).cpu().numpy().astype(np.int64), None


class ValueAgent:
    """Acts on real uint8 (K, S, H, W) frame stacks with the online network's Q values.

    Calling the agent (a collection policy) takes a uniformly random action with probability
    `epsilon`, else the greedy one; `predict` (SB3's signature, for `mbrl.evaluate`) does the same
    with `eval_epsilon`, a small chance that keeps a greedy Breakout agent from waiting forever
    without serving.

    Args:
        model: the world model whose value head acts.
        device: where it runs.
        epsilon: random-action probability when called (the loop lowers it on a schedule).
        eval_epsilon: random-action probability in `predict`.
        seed: seeds the exploration.
    """

    def __init__(self, model: ValueJEPAWorldModel, device: torch.device, epsilon: float = 0.0,
                 eval_epsilon: float = 0.0, seed: int | list[int] = 0) -> None:
        self.world_model, self.device = model, device
        self.epsilon, self.eval_epsilon = epsilon, eval_epsilon
        self.rng = np.random.default_rng(seed)

    @property
    def model(self) -> LatentPolicy:
        """The agent acting on latents instead of frames (what `mbrl dream --agent` follows in imagination)."""
        return LatentPolicy(self.world_model)

    def greedy(self, observation: np.ndarray) -> np.ndarray:
        """int64 (K,) the actions of highest Q."""
        frames = torch.as_tensor(np.asarray(observation), device=self.device)
        return self.world_model.act_values(frames).argmax(-1).cpu().numpy().astype(np.int64)

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        actions = self.greedy(observation)
        if deterministic:
            return actions, None
        return explore(actions, self.eval_epsilon, self.world_model.num_actions, self.rng), None

    def __call__(self, observation: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        return explore(self.greedy(observation), self.epsilon, self.world_model.num_actions, self.rng)
