"""JEPA imagination that carries the linear reads of its newest latent instead of computing them again.

Everything that reads a latent in an imagined step starts with a linear map of it: the
predictor's input layer, the two reads of the linear path (of the newest latent and of the one
before it) and the standardized heads' folded first layers (of z_t and of z_t+1). Stacked, they
are one matrix P (R x D). A step changes the latent by a low-rank amount,

    z_t+1 = z_t + U u_t + c,    u_t = [norm(h_t), s_t]

(h_t: the predictor's output token, predictor_dim wide; s_t: the linear path's hidden units,
skip_rank wide; U: the output layer and the linear path's second layer side by side; c: their
biases), so the reads follow without reading the new latent:

    P z_t+1 = P z_t + (P U) u_t + P c.

For the default model (D = 512, R = 576, C = 64 + 128) a step then costs R x C + D x C
multiply-adds for the reads and the latent instead of R x D, in two matrix products instead of
seven: 0.31M multiply-adds in all instead of 0.49M, 0.21M when the caller does not need the
latent (`step(..., latent=False)`: the state then carries the changes not yet added to it). The
reads drift from P z_t by float rounding only (checked against the plain step in
tests/test_jepa.py).

The model uses these reads when its linear path is low-rank or absent (`JEPAConfig.skip_rank`
> 0 or no `predictor_skip`); a full-rank linear path (512 x 1024) would make C larger than D.

`tree_with_reads` runs such steps over the depths of a tree of rollouts (`WorldModel.step_tree`),
copying each depth's parent rows first: compiled (`JEPAWorldModel.compile_imagination`), up to 4
depths of a planner's round are one call, so the fixed cost of a call (~1 ms on 2 CPU cores) is paid
once per 4 depths instead of once per depth, and the copies fuse with the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from mbrl.world_models.base import select_state
from mbrl.world_models.heads import FoldedHeads, expected_events, shifted_logits

if TYPE_CHECKING:
    from mbrl.world_models.jepa import Dynamics


class ReadFold(NamedTuple):
    """The folded weights of imagination with carried reads.

    Attributes:
        read: P (R, D), rows in the order of `sizes`.
        change: [U, c] (D, C + 1): the latent's change is change @ [u, 1].
        read_change: [P U, P c] (R, C + 1): the reads' change.
        sizes: rows of P for the input layer, the linear path's reads of z_t and z_t-1 (0 without it)
            and the heads' reads of z_t and z_t+1 (0 when the heads read latents themselves).
    """

    read: Tensor
    change: Tensor
    read_change: Tensor
    sizes: tuple[int, int, int, int, int]


def supports_reads(dynamics: Dynamics) -> bool:
    """Whether the predictor's linear path is low-rank or absent (see the module docstring)."""
    return not dynamics.cfg.predictor_skip or dynamics.cfg.skip_rank > 0


def fold_reads(dynamics: Dynamics, heads: FoldedHeads | None) -> ReadFold:
    """P, [U, c] and [P U, P c] from the current weights (`heads`: the folded standardized heads, or None)."""
    inp, out = dynamics.inp, dynamics.out
    rows, columns = [inp.weight], [out.weight]
    bias: Tensor = out.bias
    skip = 0
    if dynamics.cfg.predictor_skip:
        second = cast(nn.Linear, cast(nn.Sequential, dynamics.skip)[1])
        rows += dynamics.skip_reads()  # of z and of the latent before it
        columns.append(second.weight)
        bias = bias + second.bias
        skip = second.in_features
    head_rows = 0
    if heads is not None:
        rows += [heads.w_z, heads.w_next]
        head_rows = len(heads.bias)
    read = torch.cat(rows)
    change = torch.cat([*columns, bias[:, None]], dim=1)
    return ReadFold(read, change, read @ change, (inp.out_features, skip, skip, head_rows, head_rows))


def read_sources(dynamics: Dynamics) -> tuple[Tensor, ...]:
    """The predictor's tensors `fold_reads` reads (with the heads', they key its cache)."""
    sources = (dynamics.inp.weight, dynamics.out.weight, dynamics.out.bias)
    if not dynamics.cfg.predictor_skip:
        return sources
    first, second = (cast(nn.Linear, layer) for layer in cast(nn.Sequential, dynamics.skip))
    return (*sources, first.weight, second.weight, second.bias)


def with_reads(state: dict[str, Any], fold: ReadFold) -> dict[str, Any]:
    """A prefilled imagination state with its newest latent's reads, the linear path's read of the latent
    before it in place of that latent, and no change pending (see `step_with_reads`)."""
    reads = state["latent"].flatten(1) @ fold.read.T
    state = {**state, "reads": reads, "pending": reads.new_zeros(len(reads), fold.change.shape[1])}
    previous = state.pop("previous")
    if fold.sizes[1]:
        start, skip = fold.sizes[0] + fold.sizes[1], fold.sizes[2]
        state["previous_read"] = previous.flatten(1) @ fold.read[start : start + skip].T
    return state


def step_with_reads(dynamics: Dynamics, fold: ReadFold, heads: FoldedHeads | None, state: dict[str, Any],
                    action: Tensor, latent: bool = True) -> tuple[Tensor | None, dict[str, Any], list[Tensor] | None]:
    """One imagined step of a state from `with_reads`: the next latent (B, K, dim), the next state and the
    heads' logits (None when `heads` is None: the caller runs them on the latents).

    The reads are updated in place (a state is consumed by its step), which spares a copy of them.
    With `latent=False` (and standardized heads) the latent is not computed: the state keeps its last
    computed latent and the sum of the changes [u, 1] since ("pending"), and a later step adds them. Every
    state has "pending" (zeros when nothing is pending), so that all have one structure: a compiled step
    would otherwise compile again for each, and restarting rows of a state in place needs one structure.
    """
    width, skip, _, head_rows, _ = fold.sizes
    reads = state["reads"]
    x, state = dynamics._advance(state, action, reads[:, :width] + dynamics.inp.bias)
    parts = [dynamics.norm(x[:, dynamics.per_step - 1])]  # (B, width): the action token predicts
    if skip:
        parts.append(reads[:, width : width + skip] + state["previous_read"])
    parts.append(reads.new_ones(len(reads), 1))
    u = torch.cat(parts, dim=1)  # (B, C + 1)
    start = width + 2 * skip
    head_input = None if heads is None else reads[:, start : start + head_rows] + heads.bias  # of z_t
    previous_read = reads[:, width + skip : width + 2 * skip].clone() if skip else None  # of z_t by the path
    reads = torch.addmm(reads, u, fold.read_change.T, out=reads)  # in place; addmm_ would escape FLOP counts
    logits = None
    if heads is not None:
        assert head_input is not None
        logits = heads.logits(head_input.add_(reads[:, start + head_rows :]))  # and of z_t+1
    state = {**state, "reads": reads}
    if skip:
        state["previous_read"] = previous_read
    change = state["pending"] + u
    if not latent and heads is not None:
        return None, {**state, "pending": change}, logits
    z = state["latent"]
    z_next = torch.addmm(z.flatten(1), change, fold.change.T).view_as(z)
    return z_next, {**state, "latent": z_next, "pending": torch.zeros_like(change)}, logits


def tree_with_reads(dynamics: Dynamics, fold: ReadFold, heads: FoldedHeads, shift: Tensor, state: dict[str, Any],
                    parents: Sequence[Tensor | None], actions: Sequence[Tensor], latent: bool = False
                    ) -> tuple[Tensor | None, dict[str, Any], list[tuple[Tensor, Tensor, Tensor]]]:
    """`step_with_reads` over the depths of a tree of rollouts (see `WorldModel.step_tree`): the last depth's
    latents (None unless `latent`), its state, and per depth the expected reward, continue and life-loss
    probabilities (M_d,) of the heads' logits corrected by `shift` (the model's event_shift)."""
    events = []
    z = None
    for depth, (parent, action) in enumerate(zip(parents, actions, strict=True)):
        if parent is not None:
            state = select_state(state, parent)
        z, state, logits = step_with_reads(dynamics, fold, heads, state, action, latent and depth == len(actions) - 1)
        assert logits is not None
        events.append(expected_events(*shifted_logits(logits[0], logits[1], shift)))
    return z, state, events
