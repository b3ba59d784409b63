"""Model-predictive path integral: refit the sampling distribution to all candidates, exponentially weighted."""

from __future__ import annotations

from torch import Tensor

from mbrl.agents.planners.base import Planner


class MPPI(Planner):
    """Each round weights every candidate by softmax(return / (temperature * std of returns)) and refits to all.

    The temperature is in units of the spread of the problem's candidate returns, not of
    return itself, so one setting serves objectives of any scale and the search keeps
    narrowing as the candidates' returns draw together (with a fixed temperature in return
    units it stalls once their spread falls below it). A low temperature approaches CEM with
    one elite, a high one averages all candidates. The plan is the mode of the final
    distribution (per-timestep most probable action, or the Gaussian mean): MPPI executes the
    weighted average rather than one sample.
    """

    act_from_best = False

    def weights(self, returns: Tensor) -> Tensor:
        """returns (B, N) -> weights (B, N), a softmax over N; uniform where all returns are equal."""
        spread = returns.std(dim=1, keepdim=True).clamp_min(1e-6)
        return ((returns - returns.amax(dim=1, keepdim=True)) / (self.config.temperature * spread)).softmax(dim=1)
