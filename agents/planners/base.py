"""What every planner shares: action spaces, their sampling distributions and one optimisation loop.

A planner optimises open-loop action sequences for `B` planning problems at once (one per
real env). Each round it samples `N` candidate sequences of `H` actions per problem from a
per-timestep distribution, scores all `B x N` of them with one call of the objective, and
refits the distribution to the scores. Planners differ only in how scores become weights
(`Planner.weights`); the action space decides what the distribution is:

- `DiscreteSpace`: a categorical distribution per timestep, probs (B, H, A).
- `BoxSpace`: a Gaussian per timestep and action dimension, mean and std (B, H, D); samples
  are clipped to the bounds.

Planners see only tensors and the objective `(state, action_sequences) -> returns`; they know
nothing of envs or world models (see `mbrl.agents.planners.objective` for the world-model one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Objective = Callable[[Any, Tensor], Tensor]
"""(state, action_sequences (B, N, H) or (B, N, H, D)) -> returns (B, N); `state` holds B problems."""


class Categorical(NamedTuple):
    """Independent categorical distributions per timestep: probs (B, H, A), rows sum to 1."""

    probs: Tensor


class Gaussian(NamedTuple):
    """Independent Gaussians per timestep and action dimension: mean, std (B, H, D)."""

    mean: Tensor
    std: Tensor


Distribution = Categorical | Gaussian


@dataclass(frozen=True)
class PlannerConfig:
    """How a planner searches.

    Attributes:
        horizon: actions per candidate sequence (H).
        candidates: sequences sampled per round and problem (N; at most 4096, as all are imagined in one batch).
        iterations: rounds of sample, score, refit (I). Random shooting spends the same
            budget, N * I candidates, in one round.
        elite_fraction: CEM refits to the best max(1, round(elite_fraction * N)) candidates.
        temperature: MPPI weights candidates by softmax(return / (temperature * std of the returns)).
        smoothing: weight of the previous distribution in a refit (0: forget it).
        min_prob: floor of every categorical probability, so no action is ever ruled out
            (must be below 1 / num_actions).
        min_std: floor of every Gaussian std, in action units.
    """

    horizon: int = 12
    candidates: int = 512
    iterations: int = 4
    elite_fraction: float = 0.1
    temperature: float = 0.5
    smoothing: float = 0.1
    min_prob: float = 0.05
    min_std: float = 0.05

    ranges: ClassVar[dict[str, str]] = {
        "horizon": "[1, 64]", "candidates": "[1, 4096]", "iterations": "[1, 64]", "elite_fraction": "(0, 1]",
        "temperature": "(0, inf)", "smoothing": "[0, 1)", "min_prob": "[0, 1)", "min_std": "[0, inf)"}
    """Checked by `mbrl.core.config.from_dict` (planners import nothing of mbrl); `__post_init__` checks the
    bounds that keep a planner meaningful when the config is made in Python."""

    def __post_init__(self) -> None:
        for name in ("horizon", "candidates", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.elite_fraction <= 1.0:
            raise ValueError(f"elite_fraction must be in (0, 1], got {self.elite_fraction}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.min_prob < 0.0 or self.min_std < 0.0:
            raise ValueError(f"min_prob and min_std must be >= 0, got {self.min_prob}, {self.min_std}")


@dataclass(frozen=True)
class DiscreteSpace:
    """`n` discrete actions; sequences are int64 (B, N, H), distributions `Categorical`."""

    n: int

    def prior(self, batch: int, horizon: int, device: torch.device) -> Categorical:
        """Uniform probs (batch, horizon, n)."""
        return Categorical(torch.full((batch, horizon, self.n), 1.0 / self.n, device=device))

    def sample(self, dist: Distribution, n: int, generator: torch.Generator | None) -> Tensor:
        """int64 (B, n, H) sequences drawn from probs (B, H, A)."""
        assert isinstance(dist, Categorical)
        b, h, a = dist.probs.shape
        draws = torch.multinomial(dist.probs.reshape(b * h, a), n, replacement=True, generator=generator)
        return draws.view(b, h, n).transpose(1, 2)

    def refit(self, dist: Distribution, candidates: Tensor, weights: Tensor, config: PlannerConfig) -> Categorical:
        """Weighted action frequencies per timestep, smoothed towards `dist`, floored at min_prob.

        Args:
            candidates: int64 (B, N, H).
            weights: (B, N) non-negative, summing to 1 over N.
        """
        assert isinstance(dist, Categorical)
        if self.n * config.min_prob >= 1.0:
            raise ValueError(f"min_prob {config.min_prob} leaves nothing to learn with {self.n} actions")
        onehot = F.one_hot(candidates, self.n).to(weights.dtype)  # (B, N, H, A)
        freq = torch.einsum("bn,bnha->bha", weights, onehot)
        probs = (1.0 - config.smoothing) * freq + config.smoothing * dist.probs
        return Categorical(config.min_prob + (1.0 - self.n * config.min_prob) * probs)

    def mode(self, dist: Distribution) -> Tensor:
        """int64 (B, H) most probable action per timestep."""
        assert isinstance(dist, Categorical)
        return dist.probs.argmax(-1)


@dataclass(frozen=True)
class BoxSpace:
    """Continuous actions in [low, high] per dimension; sequences float (B, N, H, D), distributions `Gaussian`.

    Attributes:
        low, high: bounds per action dimension, length D.
        init_std: std of the prior; None = half the range of each dimension.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    init_std: float | None = None

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"BoxSpace needs low < high of equal length, got {self.low}, {self.high}")

    def bounds(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """low, high: (D,) tensors."""
        return torch.tensor(self.low, device=device), torch.tensor(self.high, device=device)

    def prior(self, batch: int, horizon: int, device: torch.device) -> Gaussian:
        """Mean at the centre of the box, std init_std (or half the range): (batch, horizon, D)."""
        low, high = self.bounds(device)
        std = (high - low) / 2 if self.init_std is None else torch.full_like(low, self.init_std)
        shape = (batch, horizon, len(self.low))
        return Gaussian(((low + high) / 2).expand(shape).clone(), std.expand(shape).clone())

    def sample(self, dist: Distribution, n: int, generator: torch.Generator | None) -> Tensor:
        """(B, n, H, D) draws from mean, std (B, H, D), clipped to the bounds."""
        assert isinstance(dist, Gaussian)
        b, h, d = dist.mean.shape
        noise = torch.randn(b, n, h, d, generator=generator, device=dist.mean.device)
        low, high = self.bounds(dist.mean.device)
        return (dist.mean[:, None] + dist.std[:, None] * noise).clamp(low, high)

    def refit(self, dist: Distribution, candidates: Tensor, weights: Tensor, config: PlannerConfig) -> Gaussian:
        """Weighted mean and std per timestep, smoothed towards `dist`, std floored at min_std.

        Args:
            candidates: (B, N, H, D).
            weights: (B, N) non-negative, summing to 1 over N.
        """
        assert isinstance(dist, Gaussian)
        w = weights[:, :, None, None]
        mean = (w * candidates).sum(1)  # (B, H, D)
        std = (w * (candidates - mean[:, None]).square()).sum(1).sqrt()
        a = config.smoothing
        return Gaussian((1 - a) * mean + a * dist.mean, ((1 - a) * std + a * dist.std).clamp_min(config.min_std))

    def mode(self, dist: Distribution) -> Tensor:
        """(B, H, D) the means."""
        assert isinstance(dist, Gaussian)
        return dist.mean


ActionSpace = DiscreteSpace | BoxSpace


class Plan(NamedTuple):
    """A planner's answer for B problems.

    Attributes:
        actions: (B, H) int64 or (B, H, D) the sequence to execute (its first action is acted).
        returns: (B,) the best return among all evaluated candidates.
        distribution: the last refit distribution (an MPC agent shifts it into the next warm start).
    """

    actions: Tensor
    returns: Tensor
    distribution: Distribution


class Planner(ABC):
    """Sample candidates from a distribution, score them with one batched objective call, refit; repeat.

    Args:
        space: the action space (what the distribution is).
        config: search settings.
        device: where distributions and samples live (that of the objective).

    Attributes:
        act_from_best: the plan is the best candidate evaluated (True) or the mode of the
            final distribution (False).
    """

    act_from_best = True

    def __init__(self, space: ActionSpace, config: PlannerConfig, device: torch.device | str = "cpu") -> None:
        self.space, self.config, self.device = space, config, torch.device(device)

    @property
    def rounds(self) -> int:
        """Sample-score-refit rounds per plan."""
        return self.config.iterations

    @property
    def samples(self) -> int:
        """Candidates per round and problem."""
        return self.config.candidates

    def prior(self, batch: int) -> Distribution:
        """The distribution a plan starts from without a warm start, and that fills a shifted plan's last step."""
        return self.space.prior(batch, self.config.horizon, self.device)

    @abstractmethod
    def weights(self, returns: Tensor) -> Tensor | None:
        """Refit weights (B, N), non-negative and summing to 1 over N, from returns (B, N); None: no refit."""

    @torch.no_grad()
    def plan(self, objective: Objective, state: Any, batch: int, generator: torch.Generator | None = None,
             init: Distribution | None = None) -> Plan:
        """Optimise an action sequence for each of `batch` problems.

        Args:
            objective: scores candidates, see `Objective`.
            state: the `batch` problems' start, passed to the objective untouched.
            batch: number of problems (B).
            generator: the source of all sampling randomness (same state, same plan).
            init: the distribution of the first round, e.g. a shifted previous plan; None = the prior.
        """
        dist = self.prior(batch) if init is None else init
        best_actions: Tensor | None = None
        best_returns = torch.full((batch,), -torch.inf, device=self.device)
        rows = torch.arange(batch, device=self.device)
        for _ in range(self.rounds):
            candidates = self.space.sample(dist, self.samples, generator)  # (B, N, H[, D])
            returns = objective(state, candidates)  # (B, N)
            if returns.shape != candidates.shape[:2]:
                raise ValueError(f"objective returned {tuple(returns.shape)}, expected {tuple(candidates.shape[:2])}")
            top = returns.argmax(1)  # (B,)
            better = returns[rows, top] > best_returns
            best_returns = torch.where(better, returns[rows, top], best_returns)
            found = candidates[rows, top]  # (B, H[, D])
            if best_actions is None:
                best_actions = found
            else:
                best_actions = torch.where(better.view(-1, *[1] * (found.ndim - 1)), found, best_actions)
            weights = self.weights(returns)
            if weights is not None:
                dist = self.space.refit(dist, candidates, weights, self.config)
        assert best_actions is not None
        actions = best_actions if self.act_from_best else self.space.mode(dist)
        return Plan(actions, best_returns, dist)
