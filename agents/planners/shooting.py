"""Random shooting: the best of many candidates drawn once, with no refit."""

from __future__ import annotations

from torch import Tensor

from mbrl.agents.planners.base import Planner


class RandomShooting(Planner):
    """Draws all of its budget, `candidates * iterations` sequences per problem, in one round from the
    initial distribution (the prior, or a warm start) and keeps the best; it never refits.

    Same candidate budget as CEM and MPPI with the same config, so the three compare fairly.
    """

    @property
    def rounds(self) -> int:
        return 1

    @property
    def samples(self) -> int:
        return self.config.candidates * self.config.iterations

    def weights(self, returns: Tensor) -> None:
        """No refit: the distribution stays what it was."""
        return None
