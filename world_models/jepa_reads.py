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
tests/test_jepa.py). They pay while C (`predictor_dim + skip_rank`) stays well below D.

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
from mbrl.world_models.blocks import Folded
from mbrl.world_models.heads import (
    FoldedHeads,
    StandardizedHead,
    expected_events,
    fold_standardized_heads,
    shifted_logits,
    standardized_sources,
)

if TYPE_CHECKING:
    from mbrl.world_models.jepa_dynamics import Dynamics


class ReadFold(NamedTuple):
    """The folded weights of imagination with carried reads.

    Attributes:
        read: P (R, D), rows in the order of `sizes`.
        change: [U, c] (D, C + 1): the latent's change is change @ [u, 1].
        read_change: [P U, P c] (R, C + 1): the reads' change.
        sizes: rows of P for the input layer, the linear path's reads of z_t and z_t-1 and the heads'
            reads of z_t and z_t+1.
    """

    read: Tensor
    change: Tensor
    read_change: Tensor
    sizes: tuple[int, int, int, int, int]


def fold_reads(dynamics: Dynamics, heads: FoldedHeads) -> ReadFold:
    """P, [U, c] and [P U, P c] from the current weights (`heads`: the folded standardized heads)."""
    inp, out = dynamics.inp, dynamics.out
    second = cast(nn.Linear, dynamics.skip[1])
    rows = [inp.weight, *dynamics.skip_reads(), heads.w_z, heads.w_next]  # the linear path's of z and z_t-1
    columns = [out.weight, second.weight]
    bias = out.bias + second.bias
    read = torch.cat(rows)
    change = torch.cat([*columns, bias[:, None]], dim=1)
    skip, head_rows = second.in_features, len(heads.bias)
    return ReadFold(read, change, read @ change, (inp.out_features, skip, skip, head_rows, head_rows))


def read_sources(dynamics: Dynamics) -> tuple[Tensor, ...]:
    """The predictor's tensors `fold_reads` reads (with the heads', they key its cache)."""
    first, second = (cast(nn.Linear, layer) for layer in dynamics.skip)
    return (dynamics.inp.weight, dynamics.out.weight, dynamics.out.bias, first.weight, second.weight, second.bias)


def fold_imagination(dynamics: Dynamics, heads: Sequence[StandardizedHead], folded_heads: Folded,
                     folded_reads: Folded) -> tuple[ReadFold, FoldedHeads]:
    """The folded weights of imagination with carried reads (`fold_reads`) and of the heads as one, kept in the
    caches `folded_reads` and `folded_heads` until a weight or statistic they are computed from changes."""
    def fold() -> tuple[ReadFold, FoldedHeads]:
        one = fold_standardized_heads(heads, folded_heads)
        return fold_reads(dynamics, one), one

    return cast(tuple[ReadFold, FoldedHeads], folded_reads.get(read_sources(dynamics) + standardized_sources(heads),
                                                                fold))


def with_reads(state: dict[str, Any], fold: ReadFold) -> dict[str, Any]:
    """A prefilled imagination state with its newest latent's reads, the linear path's read of the latent
    before it in place of that latent, and no change pending (see `step_with_reads`)."""
    reads = state["latent"].flatten(1) @ fold.read.T
    state = {**state, "reads": reads, "pending": reads.new_zeros(len(reads), fold.change.shape[1])}
    previous = state.pop("previous")
    start, skip = fold.sizes[0] + fold.sizes[1], fold.sizes[2]
    state["previous_read"] = previous.flatten(1) @ fold.read[start : start + skip].T
    return state


def step_with_reads(dynamics: Dynamics, fold: ReadFold, heads: FoldedHeads, state: dict[str, Any],
                    action: Tensor, latent: bool = True) -> tuple[Tensor | None, dict[str, Any], list[Tensor]]:
    """One imagined step of a state from `with_reads`: the next latent (B, K, dim), the next state and the
    heads' logits.

    The reads are updated in place (a state is consumed by its step), which spares a copy of them.
    With `latent=False` the latent is not computed: the state keeps its last
    computed latent and the sum of the changes [u, 1] since ("pending"), and a later step adds them. Every
    state has "pending" (zeros when nothing is pending), so that all have one structure: a compiled step
    would otherwise compile again for each, and restarting rows of a state in place needs one structure.
    """
    width, skip, _, head_rows, _ = fold.sizes
    reads = state["reads"]
    x, state = dynamics._advance(state, action, reads[:, :width] + dynamics.inp.bias)
    parts = [dynamics.norm(x[:, 0]), reads[:, width : width + skip] + state["previous_read"],
             reads.new_ones(len(reads), 1)]  # (B, width): the predictor's output token; the linear path's
    u = torch.cat(parts, dim=1)  # (B, C + 1)
    start = width + 2 * skip
    head_input = reads[:, start : start + head_rows] + heads.bias  # of z_t
    previous_read = reads[:, width + skip : width + 2 * skip].clone()  # of z_t by the linear path
    reads = torch.addmm(reads, u, fold.read_change.T, out=reads)  # in place; addmm_ would escape FLOP counts
    logits = heads.logits(head_input.add_(reads[:, start + head_rows :]))  # and of z_t+1
    state = {**state, "reads": reads, "previous_read": previous_read}
    change = state["pending"] + u
    if not latent:
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
        events.append(expected_events(*shifted_logits(logits[0], logits[1], shift)))
    return z, state, events


def standard_strides(tensor: Tensor) -> Tensor:
    """`tensor`, or a copy of it with the strides of a new tensor of its shape (a compiled graph's guards compare
    strides: a view of one row of a batch, contiguous by torch's rule, would make it compile again) that is no
    view (a graph traced with a view guards on its base, so the same tensor as a view or not compiled twice)."""
    stride, standard = 1, []
    for size in reversed(tensor.shape):
        standard.append(stride)
        stride *= size
    if tensor.stride() == tuple(reversed(standard)) and not tensor._is_view():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
