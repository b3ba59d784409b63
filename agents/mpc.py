"""Model-predictive control in a world model's latent space: plan, act the first action, shift, repeat.

At every real step `MPCAgent` encodes the newest frame stack of each of K real envs, appends
it (and the action just taken) to that env's history, turns the histories into one batched
imagination state with `world_model.observe`, plans for all K envs in one planner call, acts
each plan's first action (the best sequence's with `deterministic=True`, else one drawn from the
plan's distribution for the first step) and keeps the plan's distribution shifted by one step as
the next warm start. It has SB3's `predict` signature, so the evaluation code scores it like a policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mbrl.agents.planners import PLANNERS, DiscreteSpace, Distribution, Plan, PlannerConfig, world_model_objective
from mbrl.core.config import check_ranges
from mbrl.world_models.base import WorldModel


@dataclass(frozen=True)
class MPCConfig:
    """MPC agent settings.

    With the default JEPA model on 2 CPU cores the default search (N=64, H=8, I=2) takes a
    median 22 ms per real action and N=512, H=12, I=4 about 0.11 s (`benchmarks/planning.py`,
    2026-12-02, AMD EPYC).

    Attributes:
        planner: "cem", "mppi" or "shooting" (a key of `mbrl.agents.planners.PLANNERS`).
        search: the planner's search budget and refit settings (horizon, candidates, iterations, ...).
        discount: per-step discount of imagined rewards.
        life_loss_penalty: return charged per expected lost life (see `mbrl.agents.planners.objective`).
        context: real latents given to `observe` (with the actions between them); None = the
            world model's own `config.context` if it has one, else 1.
        warm_start: start each plan from the previous plan's distribution shifted by one step.
        compile: compile the world model's imagination (`WorldModel.compile_imagination`): a one-off
            compile on the first plans (a few minutes for the default JEPA model on 2 CPU cores, less
            with torch's compile cache warm), then faster plans (`benchmarks/planning.py`).
    """

    planner: str = "cem"
    search: PlannerConfig = field(default_factory=lambda: PlannerConfig(horizon=8, candidates=64, iterations=2))
    discount: float = 0.97
    life_loss_penalty: float = 1.0
    context: int | None = None
    warm_start: bool = True
    compile: bool = False

    ranges: ClassVar[dict[str, str]] = {"discount": "(0, 1]", "life_loss_penalty": "[0, inf)", "context": "[1, 1024]"}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.planner not in PLANNERS:
            raise ValueError(f"planner must be one of {sorted(PLANNERS)}, got {self.planner!r}")


def shift(dist: Distribution, prior: Distribution) -> Distribution:
    """Warm start from a plan's distribution: drop its first step, append the prior's last step.

    Args:
        dist, prior: distributions of the same kind, every field (B, H, ...).
    """
    return type(dist)(*(torch.cat([d[:, 1:], p[:, -1:]], dim=1) for d, p in zip(dist, prior)))


def _where_rows(mask: Tensor, a: Distribution, b: Distribution) -> Distribution:
    """Rows of `a` where mask (B,) is True, else rows of `b`."""
    return type(a)(*(torch.where(mask.view(-1, *[1] * (x.ndim - 1)), x, y) for x, y in zip(a, b)))


class MPCAgent:
    """Plans in a world model's imagination for K real envs at once; SB3-style `predict`.

    History of env k: its last `context` encoded observations and the actions between them,
    newest last. After an episode start the history is filled with copies of the first
    latent and no-op (0) actions, so that envs with histories of different lengths share one
    batched state; histories are cut to the longest real one in the batch, so envs that all
    started together see exactly their real context.

    Args:
        world_model: the model to plan in (discrete actions); it is put in eval mode.
        config: MPC settings.
        device: where encoding and imagination run (that of the world model).
        seed: seeds the planner's generator.
        value_fn: optional terminal value of the last imagined latent, (M, *latent_shape) -> (M,).
    """

    def __init__(self, world_model: WorldModel, config: MPCConfig | None = None, device: torch.device | str = "cpu",
                 seed: int = 0, value_fn: Callable[[Tensor], Tensor] | None = None) -> None:
        self.world_model = world_model.eval()
        self.config = config = config or MPCConfig()
        if config.compile:
            world_model.compile_imagination()
        self.device = torch.device(device)
        self.context = config.context or int(getattr(world_model.config, "context", 1) or 1)
        self.planner = PLANNERS[config.planner](DiscreteSpace(world_model.num_actions), config.search,
                                                self.device)
        self.objective = world_model_objective(world_model, config.discount, value_fn, config.life_loss_penalty)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.last_plan: Plan | None = None
        self._latents = torch.zeros(0)  # (K, context, *latent_shape) newest last
        self._actions = torch.zeros(0, dtype=torch.long)  # (K, context - 1) actions between them
        self._length = torch.zeros(0, dtype=torch.long)  # (K,) real latents in each history
        self._last_action = torch.zeros(0, dtype=torch.long)  # (K,) action taken at the previous step
        self._warm: Distribution | None = None  # (K, H, ...) next plan's start

    @torch.no_grad()
    def predict(self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Plan and return the first action of every env.

        Args:
            obs: uint8 (K, S, H, W) frame stacks of K real envs (or one (S, H, W)).
            state: unused (SB3 signature; the agent keeps its own histories).
            episode_start: bool (K,), True where obs is the first of an episode: that env's
                history and warm start are reset. None: True on the first call (or when K
                changes), else False.
            deterministic: act each plan's best sequence's first action (True), or draw the first action
                from the plan's final distribution (False, as `mbrl evaluate` asks by default: a plan
                that never finds the point of an action, such as FIRE to serve in Breakout, would
                otherwise never take it and stall the game). Both depend only on the generator's state.

        Returns:
            actions: int64 (K,) (a 0-d array for a single obs), and None for the recurrent state.
        """
        single = obs.ndim == 3
        frames = torch.as_tensor(np.asarray(obs), device=self.device)
        frames = frames[None] if single else frames
        k = frames.shape[0]
        fresh = self._latents.shape[0] != k
        start = torch.ones(k, dtype=torch.bool) if episode_start is None or fresh else torch.zeros(k, dtype=torch.bool)
        if episode_start is not None:
            start |= torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(k))
        start = start.to(self.device)
        z = self.world_model.encode(frames[:, None])[:, 0]  # (K, *latent_shape)
        self._remember(z, start, fresh)

        first = self.context - int(self._length.max())  # cut the histories to the longest real one
        imagination = self.world_model.observe(self._latents[:, first:], self._actions[:, first:])
        prior = self.planner.prior(k)
        init = prior if self._warm is None or not self.config.warm_start else _where_rows(start, prior, self._warm)
        plan = self.planner.plan(self.objective, imagination, k, self.generator, init)
        if deterministic:
            actions = plan.actions[:, 0]
        else:  # (K, 1, H[, D]) one sequence per env; its first action
            actions = self.planner.space.sample(plan.distribution, 1, self.generator)[:, 0, 0]
        self.last_plan, self._warm, self._last_action = plan, shift(plan.distribution, prior), actions
        out = actions.cpu().numpy().astype(np.int64)
        return (out[0] if single else out), None

    def __call__(self, obs: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        """The agent as a collection policy (`mbrl.collect.Policy`): `predict(obs, None, starts)` with each first
        action drawn from its plan's distribution, which keeps every action at least the search's `min_prob`."""
        return self.predict(obs, None, starts, deterministic=False)[0]

    def reset(self) -> None:
        """Forget every history and warm start: the next `predict` starts all envs afresh."""
        self._latents = torch.zeros(0)
        self._warm = None

    def _remember(self, z: Tensor, start: Tensor, fresh: bool) -> None:
        """Append latents z (K, *latent_shape) and the last actions; refill the histories of starting envs."""
        if fresh:
            k = len(z)
            self._latents = z[:, None].repeat(1, self.context, *[1] * (z.ndim - 1))
            self._actions = torch.zeros(k, self.context - 1, dtype=torch.long, device=self.device)
            self._length = torch.ones(k, dtype=torch.long, device=self.device)
            self._last_action = torch.zeros(k, dtype=torch.long, device=self.device)
            self._warm = None
            return
        self._latents = torch.cat([self._latents[:, 1:], z[:, None]], dim=1)
        if self.context > 1:
            self._actions = torch.cat([self._actions[:, 1:], self._last_action[:, None]], dim=1)
        self._length = (self._length + 1).clamp_max(self.context)
        mask = start.view(-1, *[1] * (self._latents.ndim - 1))
        self._latents = torch.where(mask, z[:, None], self._latents)
        self._actions = self._actions.masked_fill(start[:, None], 0)
        self._length = torch.where(start, 1, self._length)
