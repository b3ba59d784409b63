"""Cross-entropy method: refit the sampling distribution to the elite candidates, uniformly weighted."""

from __future__ import annotations

import torch
from torch import Tensor

from mbrl.agents.planners.base import Planner


class CEM(Planner):
    """Each round keeps the best max(1, round(elite_fraction * N)) candidates of every problem and refits to them.

    The plan is the best candidate evaluated over all rounds.
    """

    def weights(self, returns: Tensor) -> Tensor:
        """returns (B, N) -> weights (B, N): 1 / elites on the elites, 0 elsewhere."""
        elites = max(1, round(self.config.elite_fraction * returns.shape[1]))
        top = returns.topk(elites, dim=1).indices  # (B, elites)
        weights = torch.zeros_like(returns)
        return weights.scatter_(1, top, 1.0 / elites)
