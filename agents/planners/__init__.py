"""Planners that optimise action sequences against an objective: CEM, MPPI, random shooting and an exhaustive tree.

They see only tensors and an objective callable `(state, action_sequences) -> returns`
(`mbrl.agents.planners.objective.world_model_objective` builds one from a world model); choose one
by name from `PLANNERS`.
"""

from __future__ import annotations

from mbrl.agents.planners.base import (
    ActionSpace,
    BoxSpace,
    Categorical,
    DiscreteSpace,
    Distribution,
    Gaussian,
    Objective,
    Plan,
    Planner,
    PlannerConfig,
)
from mbrl.agents.planners.cem import CEM
from mbrl.agents.planners.mppi import MPPI
from mbrl.agents.planners.objective import world_model_objective
from mbrl.agents.planners.shooting import RandomShooting
from mbrl.agents.planners.tree import ExhaustiveTree

PLANNERS: dict[str, type[Planner]] = {"cem": CEM, "mppi": MPPI, "shooting": RandomShooting, "tree": ExhaustiveTree}
"""Planner classes by name: PLANNERS[name](space, config, device)."""

__all__ = [
    "CEM", "MPPI", "PLANNERS", "ActionSpace", "BoxSpace", "Categorical", "DiscreteSpace", "Distribution",
    "ExhaustiveTree", "Gaussian",
    "Objective", "Plan", "Planner", "PlannerConfig", "RandomShooting", "world_model_objective",
]
