"""The interface every world-model family implements, and its typed inputs and outputs.

Batch first, tensors in and out: no numpy, no gymnasium. The dream env, the planners and the
training loop use only this interface, so a new family is one new file plus a registry entry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class TrainBatch(NamedTuple):
    """`B` windows of `L` transitions from the replay buffer, as tensors.

    Attributes:
        frames: uint8 (B, L+1, C, H, W) observations o_0 .. o_L (C = frame stack).
        actions: int64 (B, L) action a_t taken at o_t.
        rewards: float32 (B, L) clipped reward of transition t (-1, 0 or 1).
        terminated: bool (B, L) the game ended with transition t.
        life_loss: bool (B, L) a life was lost in transition t.
        latents: (B, L+1, *latent_shape) `encode(frames)`, when the caller has them cached (the
            encoder being frozen), else None; a family may use them instead of encoding frames.
    """

    frames: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    life_loss: Tensor
    latents: Tensor | None = None


class StepOutput(NamedTuple):
    """One imagined step for a batch of rollouts.

    Attributes:
        state: the family's imagination state after the step (pass it to the next `step`).
        latent: (B, *latent_shape) the predicted next latent; None when the step was asked not to
            give it (`WorldModel.step(..., latent=False)`) and the family skipped it.
        reward: (B,) expected clipped reward of the step.
        cont: (B,) probability that the episode continues (no game over).
        life_loss: (B,) probability that a life was lost in the step.
    """

    state: Any
    latent: Tensor | None
    reward: Tensor
    cont: Tensor
    life_loss: Tensor


class TreeOutput(NamedTuple):
    """A tree of imagined rollouts, depth by depth (see `WorldModel.step_tree`).

    Attributes:
        state: the imagination state of the last depth's nodes.
        latent: (M, *latent_shape) the last depth's predicted latents; None unless asked for.
        reward, cont, life_loss: per depth d, (M_d,) as in `StepOutput`, one entry per node.
    """

    state: Any
    latent: Tensor | None
    reward: tuple[Tensor, ...]
    cont: tuple[Tensor, ...]
    life_loss: tuple[Tensor, ...]


class CheckedPart(NamedTuple):
    """A part of a model whose best weights early stopping keeps on its own (see `WorldModel.checked_parts`).

    Attributes:
        prefixes: state-dict key prefixes of the part's tensors.
        losses: validation loss parts and their weights; the weighted sum scores the part.
    """

    prefixes: tuple[str, ...]
    losses: dict[str, float]


EVENTS = ("reward -1", "reward 0", "reward +1", "game over", "life loss")
"""The events whose rates the heads' priors are corrected for, in the order of `event_logit_shift`."""


def event_logit_shift(trained: Tensor, natural: Tensor, eps: float = 1e-6) -> Tensor:
    """What to add to the logits of heads trained where the events (EVENTS, (5,) rates) occur at rates
    `trained` so that they predict for data where they occur at rates `natural`.

    A classifier learns p(y | x) under its training prior; when only the prior differs (windows drawn
    by whether they end on an event), Bayes' rule moves a class's log-probability by
    log(natural / trained): the reward's three classes share one softmax, so each class gets that
    shift; game over and life loss are two independent Bernoulli outputs, so each logit moves by
    logit(natural) - logit(trained). Rates of 0 in both give 0.
    """
    trained, natural = trained.clamp(eps, 1 - eps), natural.clamp(eps, 1 - eps)
    return torch.cat([natural[:3].log() - trained[:3].log(), torch.logit(natural[3:]) - torch.logit(trained[3:])])


class WorldModel(nn.Module, ABC):
    """A learned model of an environment, used for imagination, planning and pictures.

    Attributes:
        latent_shape: shape of one latent.
        num_actions: size of the discrete action space.
        config: the family's frozen dataclass config (saved in checkpoints).
        event_shift: float (5,) logit corrections of the reward and end heads for the event rates
            they were trained under (see `calibrate_events`); families add it to their heads' logits
            when they predict. Zero until calibrated, and in checkpoints from before it existed.
    """

    latent_shape: tuple[int, ...]
    num_actions: int
    config: Any
    event_shift: Tensor
    has_value: bool = False
    """Whether `value` is trained (a family with a value head); planners add it at their horizon's end."""
    optional_tensors: tuple[str, ...] = ("event_shift",)
    """State-dict entries a checkpoint may lack (loading keeps their current value: zero in a new model)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("event_shift", torch.zeros(len(EVENTS)))

    def calibrate_events(self, trained: Tensor, natural: Tensor) -> None:
        """Record the event rates (EVENTS, (5,) each) the heads are trained under and those of the real
        data, so that predicted rewards and ends follow the real rates (see `event_logit_shift`)."""
        self.event_shift.copy_(event_logit_shift(trained.double(), natural.double()).float())

    @abstractmethod
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 (B, T, C, H, W) -> latents (B, T, *latent_shape); the target (EMA) encoder where there is one."""

    @abstractmethod
    def observe(self, latents: Tensor, actions: Tensor) -> Any:
        """A real context -> imagination state.

        Args:
            latents: (B, T, *latent_shape) encoded real observations o_1 .. o_T.
            actions: (B, T-1) actions taken between them.
        """

    @abstractmethod
    def step(self, state: Any, action: Tensor, latent: bool = True) -> StepOutput:
        """Imagine one step for every rollout: int64 (B,) actions taken at the current latent.

        The step consumes `state`: a family may update its tensors in place (JEPA writes its
        key/value cache), so continue from the returned state only; to imagine several
        continuations of one state, step copies of it (e.g. rows chosen with `index_select`).
        With `latent=False` the caller does not read this step's latent (a planner that scores
        rewards only), and a family may skip computing it (StepOutput.latent None); the next
        steps are the same either way.
        """

    def step_tree(self, state: Any, parents: Sequence[Tensor | None], actions: Sequence[Tensor],
                  latent: bool = False) -> TreeOutput:
        """Imagine a tree of rollouts depth by depth, as a planner does with candidates that share prefixes.

        Node i of depth d continues node `parents[d][i]` of depth d - 1 (depth -1: the rows of
        `state`) with action `actions[d][i]`; a parent entry None means node i continues node i.
        The same results as stepping `select_state` copies of the parents' states, which is what
        this default does; a family may run all depths at once (JEPA compiles them into one call).
        `state` is consumed only when `parents[0]` is None.

        Args:
            state: an imagination state (`observe`, or a previous step's).
            parents: per depth, int64 (M_d,) rows of the previous depth, or None.
            actions: per depth, (M_d,) actions (as `step` takes them).
            latent: also give the last depth's latents.
        """
        outs = []
        for depth, (parent, action) in enumerate(zip(parents, actions, strict=True)):
            if parent is not None:
                state = select_state(state, parent)
            outs.append(self.step(state, action, latent=latent and depth == len(actions) - 1))
            state = outs[-1].state
        return tree_output(outs, latent)

    def compile_imagination(self) -> None:
        """Compile `step` and `step_tree` for speed where the family can (e.g. torch.compile of its imagined
        steps): the same results, a one-off compile on the first steps. Default: nothing to compile."""

    def read_events(self, z: Tensor, z_next: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """The reward and end heads read on given transitions z (N, *latent_shape) -> z_next: (N,) expected
        reward, continue and life-loss probabilities, as `step` gives them for its own predictions; on real
        next latents they separate the heads' errors from the dynamics'. None where a family cannot."""
        return None

    def value(self, latents: Tensor) -> Tensor:
        """latents (N, *latent_shape) -> (N,) the discounted return expected from each (families with `has_value`)."""
        raise NotImplementedError(f"{type(self).__name__} has no value head")

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """latents (..., *latent_shape) -> float frames (..., H, W) in [0, 1] (the newest frame), for pictures."""

    @abstractmethod
    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        """Named loss parts of a training stage for a batch; the key "total" is what is minimised."""

    def checked_parts(self, stage: str) -> dict[str, CheckedPart]:
        """The parts early stopping judges separately in `stage`: each ends the stage with the weights of its
        own best validation check, and the stage stops when none improved for a while. Default: the whole
        model, scored by the total loss. A family whose stage trains parts that do not feed each other
        (a predictor and heads that read its detached outputs) can split them, so that one part
        overfitting early does not stop the others."""
        return {"model": CheckedPart(("",), {"total": 1.0})}


@torch.no_grad()
def imagine(model: WorldModel, latents: Tensor, actions: Tensor) -> StepOutput:
    """Open-loop imagination from a real context under given actions.

    Args:
        latents: (B, C, *latent_shape) encoded real observations o_1 .. o_C.
        actions: (B, C - 1 + H) the C - 1 actions between them, then the H actions to imagine.

    Returns:
        StepOutput whose latent is (B, H, *latent_shape), reward / cont / life_loss (B, H), and
        state the imagination state after the last step.
    """
    context = latents.shape[1]
    state = model.observe(latents, actions[:, : context - 1])
    outs = []
    for t in range(context - 1, actions.shape[1]):
        out = model.step(state, actions[:, t])
        state = out.state
        outs.append(out)
    predicted = [out.latent for out in outs if out.latent is not None]
    if len(predicted) < len(outs):
        raise RuntimeError(f"{type(model).__name__}.step gave no latent although asked for one")
    return StepOutput(state, torch.stack(predicted, dim=1),
                      *(torch.stack(parts, dim=1) for parts in list(zip(*outs))[2:]))


def tree_output(outs: Sequence[StepOutput], latent: bool) -> TreeOutput:
    """The `TreeOutput` of a tree's steps, one per depth (`latent`: the last one's latent was asked for)."""
    if latent and outs[-1].latent is None:
        raise RuntimeError("a step gave no latent although asked for one")
    return TreeOutput(outs[-1].state, outs[-1].latent if latent else None, *(tuple(parts) for parts in
                                                                              list(zip(*outs))[2:]))


def select_state(state: Any, index: Tensor) -> Any:
    """Rows `index` (M,) of every tensor in a (nested) imagination state, batch dim first: a copy."""
    return map_state(lambda tensor: tensor.index_select(0, index), state)


def map_state(fn: Callable[..., Any], state: Any, *others: Any) -> Any:
    """`fn` applied to every tensor of a (nested) imagination state, with the tensors at the same place in
    `others` (states of the same structure) as further arguments; the results in the state's structure.

    A state is tensors (batch dim first) in dicts, lists and (named) tuples; any other value is kept as it
    is and must be equal in all the states.
    """
    if isinstance(state, Tensor):
        return fn(state, *others)
    if isinstance(state, dict):
        return {key: map_state(fn, value, *(other[key] for other in others)) for key, value in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(map_state(fn, *values) for values in zip(state, *others, strict=True)))
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, *values) for values in zip(state, *others, strict=True))
    if any(other != state for other in others):
        raise TypeError(f"cannot combine imagination states whose {type(state).__name__} values differ")
    return state
