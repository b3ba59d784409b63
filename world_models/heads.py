"""Reward and termination heads: read a transition (z_t, z_t+1), each (N, K, dim), -> (N, outputs) logits.

A `StandardizedHead` is one hidden layer over z_t and z_t+1 - z_t, each feature standardised by running
statistics, with dropout. In imagination (eval mode, no autograd) the JEPA's two heads run as one
(`standardized_heads`), with the standardisation and the difference folded into their first layers;
`event_losses` scores their logits against a batch's transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mbrl.world_models.base import TrainBatch
from mbrl.world_models.blocks import STATS_EPS, Folded, linear_pair, standardize, update_running_stats


class StandardizedHead(nn.Module):
    """One hidden layer over [z_t, z_t+1 - z_t] (2 x width features), each standardised by running statistics.

    The change of a latent is small next to the latent, so unscaled it barely reaches a first layer
    initialised for unit inputs; standardised, a moving ball or a vanished brick weighs like the
    rest. The statistics follow the training batches (`momentum`) and stay fixed in eval mode.
    """

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, width: int, outputs: int, momentum: float, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(2 * width))
        self.register_buffer("var", torch.ones(2 * width))
        self.register_buffer("count", torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(2 * width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, outputs))
        self._folded = Folded()

    def forward(self, z: Tensor, z_next: Tensor) -> Tensor:
        if not self.training and not torch.is_grad_enabled():  # imagination: no input to build
            return self.mlp[1:](linear_pair(z.flatten(1), z_next.flatten(1), *self._first_layer()))
        x = torch.cat([z.flatten(1), (z_next - z).flatten(1)], dim=1)
        if self.training:
            update_running_stats(self.mean, self.var, self.count, x, self.momentum)
        return self.mlp(standardize(x, self.mean, self.var))

    def _first_layer(self) -> tuple[Tensor, Tensor, Tensor]:
        """The first layer with the standardisation and the difference folded in, for frozen statistics: with
        V = W / std (per input), W (x - mean) / std + b = (V_z - V_d) z + V_d z_next + (b - V mean), where V_z
        and V_d read z and z_next - z. So a step reads z and z_next with two matrix products instead of
        building, centring and scaling [z, z_next - z] (10x faster for 512 rollouts and 64 hidden units)."""
        first = cast(nn.Linear, self.mlp[0])

        def fold() -> tuple[Tensor, Tensor, Tensor]:
            scaled = first.weight * (self.var + STATS_EPS).rsqrt()
            v_z, v_d = scaled.chunk(2, dim=1)
            return v_z - v_d, v_d, first.bias - scaled @ self.mean

        return cast(tuple[Tensor, Tensor, Tensor],
                    self._folded.get((first.weight, first.bias, self.mean, self.var), fold))


class FoldedHeads(NamedTuple):
    """Several standardized heads as one, for imagination (eval-mode statistics, no autograd): hidden units
    gelu(w_z z + w_next z_next + bias), then logits hidden @ w_out.T + b_out, `sizes` logits per head."""

    w_z: Tensor
    w_next: Tensor
    bias: Tensor
    w_out: Tensor
    b_out: Tensor
    sizes: tuple[int, ...]

    def logits(self, hidden: Tensor) -> list[Tensor]:
        """The heads' logits from their pre-activation hidden units (N, hidden)."""
        return list(torch.addmm(self.b_out, F.gelu(hidden), self.w_out.T).split(self.sizes, dim=1))


def shifted_logits(reward_logits: Tensor, end_logits: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Reward (N, 3) and end (N, 2) logits with a model's `event_shift` (5,) added: the prior correction for the
    real event rates (`WorldModel.calibrate_events`)."""
    return reward_logits + shift[:3], end_logits + shift[3:]


def expected_events(reward_logits: Tensor, end_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Expected clipped reward, continue and life-loss probabilities (N,) from the heads' (corrected) reward
    logits (N, 3: -1, 0, +1) and end logits (N, 2: game over, life loss)."""
    probs = reward_logits.softmax(-1)
    ends = torch.sigmoid(end_logits)
    return probs[:, 2] - probs[:, 0], 1.0 - ends[:, 0], ends[:, 1]


def fold_standardized_heads(heads: Sequence[StandardizedHead], folded: Folded) -> FoldedHeads:
    """Their folded first layers stacked, their output layers as one block-diagonal matrix; `folded` caches
    them until a weight or statistic changes."""
    outs = [cast(nn.Linear, head.mlp[3]) for head in heads]

    def fold() -> FoldedHeads:
        w_z, w_next, bias = (torch.cat(parts) for parts in zip(*(head._first_layer() for head in heads)))
        return FoldedHeads(w_z, w_next, bias, torch.block_diag(*(out.weight for out in outs)),
                           torch.cat([o.bias for o in outs]), tuple(out.out_features for out in outs))

    return cast(FoldedHeads, folded.get(standardized_sources(heads), fold))


def standardized_sources(heads: Sequence[StandardizedHead]) -> tuple[Tensor, ...]:
    """The weights and statistics the folded heads are computed from (a `Folded` cache's key; read by attribute,
    since imagination checks it every step)."""
    sources: list[Tensor] = []
    for head in heads:
        first, out = cast(nn.Linear, head.mlp[0]), cast(nn.Linear, head.mlp[3])
        sources += (first.weight, first.bias, head.mean, head.var, out.weight, out.bias)
    return tuple(sources)


def standardized_heads(heads: Sequence[StandardizedHead], folded: Folded, z: Tensor, z_next: Tensor) -> list[Tensor]:
    """What each of several standardized heads gives for the same transitions, in imagination (eval mode,
    no autograd) as one head: one pair of matrix products, one GELU, one output product."""
    one = fold_standardized_heads(heads, folded)
    return one.logits(linear_pair(z.flatten(1), z_next.flatten(1), one.w_z, one.w_next, one.bias))


def event_losses(reward_logits: Tensor, end_logits: Tensor, batch: TrainBatch,
                 transitions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the clipped-reward logits (B*M, 3) and binary cross-entropy of the game-over and
    life-loss logits (B*M, 2) against the batch's transitions: pair j of window i (row i*M + j) is the
    window's transition `transitions[j]` (M,) (default: pair t is transition t, M = L)."""
    at = torch.arange(batch.actions.shape[1], device=batch.rewards.device) if transitions is None else transitions
    reward_class = batch.rewards.sign().long()[:, at] + 1  # (B, M): -1, 0, +1 -> 0, 1, 2
    ends = torch.stack([batch.terminated, batch.life_loss], dim=-1).float()[:, at]  # (B, M, 2)
    reward = F.cross_entropy(reward_logits, reward_class.flatten())
    return reward, F.binary_cross_entropy_with_logits(end_logits, ends.flatten(0, 1))
