"""Exhaustive search: every action sequence of the horizon, scored at once (for small discrete action spaces)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch
from torch import Tensor

from mbrl.agents.planners.base import (
    ActionSpace,
    Categorical,
    DiscreteSpace,
    Distribution,
    Objective,
    Plan,
    Planner,
    PlannerConfig,
)


class ExhaustiveTree(Planner):
    """Scores all A^H sequences of the horizon in one objective call and keeps the best: with a value at the
    leaves (`world_model_objective(value_fn=...)`) this is a depth-H search tree, 64 leaves for 4 actions and
    H=3. The objective imagines shared prefixes once, so the tree costs A + A^2 + ... + A^H imagined steps.

    The plan's distribution is the best sequence (floored at `min_prob`, as CEM's refit): an MPC agent that
    draws its first action from it keeps every action possible. Candidates, iterations and warm starts are
    not used. Raises ValueError for continuous actions or more than 4096 sequences.
    """

    MAX_SEQUENCES = 4096

    def __init__(self, space: ActionSpace, config: PlannerConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(space, config, device)
        if not isinstance(space, DiscreteSpace):
            raise ValueError("the tree planner needs discrete actions; use cem or mppi")
        count = space.n ** config.horizon
        if count > self.MAX_SEQUENCES:
            raise ValueError(f"the tree planner would score {space.n}^{config.horizon} = {count} sequences "
                             f"(at most {self.MAX_SEQUENCES}); shorten mpc.search.horizon or use cem")
        grid = itertools.product(range(space.n), repeat=config.horizon)
        self.sequences = torch.tensor(list(grid), dtype=torch.long, device=self.device)  # (A^H, H)

    @property
    def rounds(self) -> int:
        return 1

    @property
    def samples(self) -> int:
        return len(self.sequences)

    def weights(self, returns: Tensor) -> None:
        return None

    @torch.no_grad()
    def plan(self, objective: Objective, state: Any, batch: int, generator: torch.Generator | None = None,
             init: Distribution | None = None) -> Plan:
        candidates = self.sequences[None].expand(batch, -1, -1)  # (B, A^H, H)
        returns = objective(state, candidates)  # (B, A^H)
        best = returns.argmax(1)
        rows = torch.arange(batch, device=self.device)
        weights = torch.zeros_like(returns)
        weights[rows, best] = 1.0
        assert isinstance(self.space, DiscreteSpace)
        dist = self.space.refit(self.prior(batch), candidates, weights, dataclasses.replace(self.config, smoothing=0.0))
        assert isinstance(dist, Categorical)
        return Plan(candidates[rows, best], returns[rows, best], dist)
