"""JEPA latent world model: masked-ViT encoder with an EMA target, action-conditioned predictor, heads, decoder.

Stage 1 (`loss(batch, "encoder")`, world_models/jepa_encoder.py): the online encoder sees masked
observations, the EMA target encoder whole ones, and a predictor that reads only the online summary
tokens predicts the target's summary tokens and every patch's pixels and frame differences, plus the
events of the transition into each observation. Stage 2 (`"dynamics"`, world_models/jepa_dynamics.py):
with the encoder frozen, a causal transformer predicts the next latent from a sliding window of latents
and actions (teacher forcing and an open-loop rollout, L1), reward and termination heads
(world_models/heads.py) read (z_t, z_t+1), and a decoder learns pictures from stop-gradient latents.
Stage 3 (`"finetune"`) trains all parts together.

A latent is the `summary_tokens` output tokens of the target encoder, standardised per feature by running
statistics: compact, so one imagined step costs a few tokens of the predictor, not a pass over the image.
Imagination carries the linear reads of its newest latent (world_models/jepa_reads.py).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch import Tensor, nn

from mbrl.world_models.base import CheckedPart, StepOutput, TrainBatch, TreeOutput, WorldModel, map_state
from mbrl.world_models.blocks import Block, Folded, standardize
from mbrl.world_models.heads import (
    FoldedHeads,
    StandardizedHead,
    event_losses,
    expected_events,
    shifted_logits,
    standardized_heads,
)
from mbrl.world_models.jepa_dynamics import Dynamics
from mbrl.world_models.jepa_encoder import Decoder, Encoder, encoder_loss
from mbrl.world_models.jepa_reads import ReadFold, fold_imagination, standard_strides, tree_with_reads, with_reads

TREE_CHUNK = 4
"""Depths of a tree `JEPAWorldModel.step_tree` imagines per call of `tree_with_reads`: compiled, each number of
depths is a graph of its own, so chunks bound them to 1..4 for any horizon (a round of 8 depths makes 2 calls)."""


@dataclass(frozen=True)
class JEPAConfig:
    """JEPA world model settings.

    Attributes:
        num_actions: size of the discrete action space.
        frame_size: observations are frame_stack x frame_size x frame_size.
        frame_stack: frames per observation (the encoder's input channels).
        patch: patch side in pixels.
        dim: encoder width.
        depth: encoder transformer blocks.
        heads: attention heads everywhere.
        summary_tokens: learned tokens whose outputs form the latent, shape (summary_tokens, dim).
        mask_ratio: fraction of patches masked for the online encoder in stage 1.
        ema_decay: target encoder update, target <- decay * target + (1 - decay) * online.
        jepa_predictor_depth: blocks of the stage-1 predictor (online summary tokens -> target tokens, pixels).
        predictor_dim: width of the dynamics predictor.
        predictor_depth: blocks of the dynamics predictor.
        context: history steps each token of the dynamics predictor attends to (a sliding window, so
            imagination keeps the window's keys and values instead of re-reading it every step).
        skip_rank: features of the predictor's linear path, a rank-`skip_rank` map from (z_t, z_t - z_t-1) to the
            change of the latent, added to the transformer's (whose tokens, `predictor_dim` wide, are a
            narrow bottleneck for the latent's features).
        rollout_steps: open-loop steps of the rollout loss.
        teacher_forcing_weight: weight of the teacher-forcing loss; the rollout loss gets 1 minus it.
        decoder_dim: width of the pixel decoder.
        decoder_batch: observations per stage-2/3 update the decoder learns from, a random subset of the
            batch's (it serves only pictures, and decoding every frame would cost more than the rest of
            stage 2); 0 = all.
        event_weight: weight of a stage-1 (and stage-3) auxiliary loss: a linear head on the online
            summary tokens of each observation but a window's first predicts the clipped reward,
            life loss and game over of the transition that led to it (its frames show the brick
            vanish or the ball go), so that the latent keeps what the reward and termination
            heads need (0 disables).
        stats_momentum: update rate of the running statistics that standardise the latents (updated in stage-1
            and stage-3 training, frozen otherwise) and the heads' inputs (the first updates average exactly).
        head_hidden: hidden units of each of the reward and termination heads (world_models/heads.py).
    """

    num_actions: int = 4
    frame_size: int = 64
    frame_stack: int = 4
    patch: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    summary_tokens: int = 4
    mask_ratio: float = 0.15
    ema_decay: float = 0.996
    jepa_predictor_depth: int = 2
    predictor_dim: int = 64
    predictor_depth: int = 2
    context: int = 8
    skip_rank: int = 128
    rollout_steps: int = 4
    teacher_forcing_weight: float = 0.7
    decoder_dim: int = 64
    decoder_batch: int = 8
    event_weight: float = 1.0
    stats_momentum: float = 0.01
    head_hidden: int = 64

    retired: ClassVar[dict[str, Any]] = {
        "action_conditioning": "add", "action_history": 4, "predictor_skip": True, "context_noise": 0.0,
        "dynamics_loss": "l1", "jepa_bottleneck": True, "jepa_positions": "all", "jepa_target": "motion",
        "variance_weight": 0.0, "covariance_weight": 0.0, "standardize_latents": True, "head": "standardized",
        "open_loop_heads": True}
    """Removed fields and the value whose behaviour the code kept (mbrl.core.config.from_dict drops them from saved
    configs at that value and refuses any other)."""

    absent_in_old_checkpoints: ClassVar[dict[str, Any]] = {
        "stats_momentum": 0.01, "event_weight": 0.0, "head_hidden": 256, "skip_rank": 0}
    """What a checkpoint saved before these fields existed was trained with (its config lacks them); skip_rank 0, a
    full-rank linear path the code no longer has, is refused by its range."""

    ranges: ClassVar[dict[str, str]] = {
        "num_actions": "[1, 1024]", "frame_size": "[8, 256]", "frame_stack": "[1, 16]", "patch": "[1, 64]",
        "dim": "[8, 4096]", "depth": "[1, 64]", "heads": "[1, 64]", "summary_tokens": "[1, 256]",
        "mask_ratio": "[0, 1)", "ema_decay": "[0, 1]", "jepa_predictor_depth": "[1, 64]", "predictor_dim": "[8, 4096]",
        "predictor_depth": "[1, 64]", "context": "[1, 1024]", "skip_rank": "[1, 4096]", "rollout_steps": "[1, 64]",
        "teacher_forcing_weight": "[0, 1]", "decoder_dim": "[1, 4096]", "decoder_batch": "[0, 4096]",
        "event_weight": "[0, inf)", "stats_momentum": "(0, 1]", "head_hidden": "[1, 8192]"}
    """Every size's range (the widths and depths bound the model's memory), checked by mbrl.core.config.from_dict
    (a world model imports nothing of mbrl): YAML, `--set` and checkpoints' metadata."""

    def __post_init__(self) -> None:
        if self.patch < 1 or self.patch & (self.patch - 1) or self.frame_size % self.patch:
            raise ValueError(f"patch {self.patch} must be a power of 2 that divides frame_size {self.frame_size} "
                             "(the decoder doubles the patch grid up to the frame)")
        # a head's width carries rotary positions: an even share per axis, 2 axes over patches, 1 over time
        for name, multiple in (("dim", 4), ("predictor_dim", 2), ("decoder_dim", 1)):
            width = getattr(self, name)
            if self.heads < 1 or width % self.heads or (width // self.heads) % multiple:
                raise ValueError(f"{name} {width} must split into {self.heads} heads of a width divisible by "
                                 f"{multiple}")


class JEPAWorldModel(WorldModel):
    """The default mbrl world model (see the module docstring)."""

    latent_mean: Tensor
    latent_var: Tensor
    stats_count: Tensor

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()  # the config's shapes were checked by JEPAConfig.__post_init__
        self.config = config
        self.num_actions = config.num_actions
        self.latent_shape = (config.summary_tokens, config.dim)
        self.num_patches = (config.frame_size // config.patch) ** 2
        self.online = Encoder(config)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.jepa_predictor = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.jepa_predictor_depth))
        # one query per patch for the stage-1 predictor; RoPE and this embedding say which patch
        self.patch_queries = nn.Parameter(torch.randn(self.num_patches, config.dim) * 0.02)
        self.pixel_head = nn.Linear(config.dim, (2 * config.frame_stack - 1) * config.patch**2)  # motion_targets
        if config.event_weight:
            self.event_head = nn.Linear(config.summary_tokens * config.dim, 5)  # reward -1/0/+1, game over, life
        k = config.summary_tokens
        self.register_buffer("latent_mean", torch.zeros(k, config.dim))
        self.register_buffer("latent_var", torch.ones(k, config.dim))
        self.register_buffer("stats_count", torch.zeros(()))
        self.dynamics = Dynamics(config)
        width, momentum, hidden = config.summary_tokens * config.dim, config.stats_momentum, config.head_hidden
        self.reward_head = StandardizedHead(width, 3, momentum, hidden)  # clipped reward -1, 0, +1
        self.end_head = StandardizedHead(width, 2, momentum, hidden)  # game over, life loss
        self._folded_heads = Folded()  # both heads as one, for imagination
        self._folded_reads = Folded()  # what imagination carries the reads of latents with
        self._tree_with_reads: Callable[..., Any] = tree_with_reads  # torch.compile'd by compile_imagination
        self.decoder = Decoder(config)

    # ---- the WorldModel interface --------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        b = frames.shape[0]
        tokens = self.target(frames.flatten(0, 1))
        return self.standardize(tokens[:, : self.config.summary_tokens]).unflatten(0, (b, -1))

    @torch.no_grad()
    def observe(self, latents: Tensor, actions: Tensor) -> dict[str, Any]:
        return with_reads(self.dynamics.prefill(latents, actions), self._read_fold()[0])

    @torch.no_grad()
    def step(self, state: dict[str, Any], action: Tensor, latent: bool = True) -> StepOutput:
        """One imagined step; states from `observe` carry their latent's linear reads (world_models/jepa_reads.py),
        and `latent=False` skips computing the latent. It is a tree of one depth (compiled with `step_tree`'s, see
        `compile_imagination`); a state of `dynamics.prefill` alone reads each new latent."""
        if "reads" not in state:
            z_next, new_state = self.dynamics.step(state, action)
            return StepOutput(new_state, z_next, *self.transition(state["latent"], z_next))
        fold, heads = self._read_fold()
        z, new_state, events = self._imagine_tree(fold, heads, state, [None], [action], latent)
        return StepOutput(new_state, z, *events[0])

    @torch.no_grad()
    def step_tree(self, state: dict[str, Any], parents: Sequence[Tensor | None], actions: Sequence[Tensor],
                  latent: bool = False) -> TreeOutput:
        """`WorldModel.step_tree`; with carried reads, up to TREE_CHUNK depths at a time in one call of
        `tree_with_reads` (compiled by `compile_imagination`)."""
        if "reads" not in state:
            return super().step_tree(state, parents, actions, latent)
        fold, heads = self._read_fold()
        events: list[tuple[Tensor, Tensor, Tensor]] = []
        z = None
        for start in range(0, len(actions), TREE_CHUNK):
            end = start + TREE_CHUNK
            z, state, chunk = self._imagine_tree(fold, heads, state, parents[start:end], actions[start:end],
                                                 latent and end >= len(actions))
            events += chunk
        return TreeOutput(state, z, *(tuple(parts) for parts in zip(*events)))

    def _imagine_tree(self, fold: ReadFold, heads: FoldedHeads, state: dict[str, Any],
                      parents: Sequence[Tensor | None], actions: Sequence[Tensor], latent: bool
                      ) -> tuple[Tensor | None, dict[str, Any], list[tuple[Tensor, Tensor, Tensor]]]:
        """`tree_with_reads`, compiled if asked and compiling works."""
        def run(function: Callable[..., Any], state: dict[str, Any]) -> Any:
            return function(self.dynamics, fold, heads, self.event_shift, state, list(parents), list(actions), latent)

        if self._tree_with_reads is not tree_with_reads:
            try:
                with fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]
                    return run(self._tree_with_reads, map_state(standard_strides, state))
            except Exception as error:  # one graph (fullgraph): compiling fails before it runs, the state untouched
                warnings.warn(f"compiled imagination failed ({type(error).__name__}: {error}); imagining eagerly",
                              stacklevel=2)
                self._tree_with_reads = tree_with_reads
        return run(tree_with_reads, state)

    def compile_imagination(self) -> None:
        """Imagine through `torch.compile`, one graph per number of depths a `tree_with_reads` call has (1 to
        TREE_CHUNK; a `step` is one depth) and per torch thread count, with dynamic sizes, from a C++ wrapper
        (inductor's `cpp_wrapper`). The first call of each compiles it; the results equal the eager ones to float
        rounding. Sizes equal when a graph is traced get symbols of their own (no duck shapes), so that they need
        not stay equal, and a state's tensors are given with the strides of new tensors. A planner's first levels
        from one env's state (a batch of 1) and its rounds compile twice. Where compiling fails (no C++ compiler,
        say), it warns once and imagines as before."""
        if self._tree_with_reads is tree_with_reads:
            self._tree_with_reads = torch.compile(tree_with_reads, dynamic=True, fullgraph=True,
                                                  options={"cpp_wrapper": True})

    def _read_fold(self) -> tuple[ReadFold, FoldedHeads]:
        """The folded weights of imagination with carried reads and of the heads, kept until one changes."""
        return fold_imagination(self.dynamics, (self.reward_head, self.end_head), self._folded_heads,
                                self._folded_reads)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        lead = latents.shape[: -len(self.latent_shape)]
        return self.decoder(latents.reshape(-1, *self.latent_shape)).reshape(*lead, *self._frame_shape)

    def read_events(self, z: Tensor, z_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.transition(z, z_next)

    def transition(self, z: Tensor, z_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Expected clipped reward, continue probability and life-loss probability of (z, z_next): (N,) each."""
        return expected_events(*self._head_logits(z, z_next, corrected=True, imagined=True))

    def _head_logits(self, z: Tensor, z_next: Tensor, corrected: bool, imagined: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """Reward (N, 3) and end (N, 2) logits of transitions (z, z_next), each (N, K, dim); `corrected` adds
        the prior correction (for data at the real event rates: imagination, validation), training does not
        (its windows oversample events, and the heads learn that prior); `imagined` (no autograd, eval mode) runs
        the two heads as one."""
        if imagined and not (self.training or torch.is_grad_enabled()):
            reward, end = standardized_heads((self.reward_head, self.end_head), self._folded_heads, z, z_next)
        else:
            reward, end = self.reward_head(z, z_next), self.end_head(z, z_next)
        return shifted_logits(reward, end, self.event_shift) if corrected else (reward, end)

    def standardize(self, summary: Tensor) -> Tensor:
        """Summary tokens (..., K, dim) -> latents, standardised per feature by the running statistics."""
        return standardize(summary, self.latent_mean, self.latent_var)

    @torch.no_grad()
    def fit_latent_stats(self, frames: Iterable[Tensor]) -> None:
        """Standardise latents by the exact per-feature mean and variance of the target encoder's summary tokens
        over `frames` (batches of uint8 (..., C, H, W) observations), replacing the running statistics.

        Called when the encoder stops training: the running statistics lag the EMA target encoder they
        track, and latents standardised by stale statistics would saturate a tanh MLP reading them.
        """
        k = self.config.summary_tokens
        summary = torch.cat([self.target(f.flatten(0, -4))[:, :k] for f in frames]).float()  # (N, K, dim)
        self.latent_mean.copy_(summary.mean(0))
        self.latent_var.copy_(summary.var(0, correction=0))

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        if stage == "encoder":
            return encoder_loss(self, batch)
        if stage in ("dynamics", "finetune"):
            return self._dynamics_loss(batch, finetune=stage == "finetune")
        raise ValueError(f"unknown stage {stage!r}; stages: encoder, dynamics, finetune")

    # ---- training ------------------------------------------------------------------------

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA step of the target encoder towards the online one (after each stage-1 or stage-3 update)."""
        decay = self.config.ema_decay
        for target, online in zip(self.target.parameters(), self.online.parameters()):
            target.lerp_(online, 1.0 - decay)

    def _dynamics_loss(self, batch: TrainBatch, finetune: bool) -> dict[str, Tensor]:
        b, steps = batch.actions.shape
        z = self.encode(batch.frames) if batch.latents is None else batch.latents  # (B, L+1, K, dim) targets
        if finetune:  # inputs from the online encoder, so the dynamics loss shapes it too
            summary = self.online(batch.frames.flatten(0, 1))[:, : self.config.summary_tokens]
            z_in = self.standardize(summary).unflatten(0, (b, -1))
        else:
            z_in = z
        pred = self.dynamics(z_in[:, :-1], batch.actions)  # (B, L, K, dim) teacher forcing
        teacher = F.l1_loss(pred, z[:, 1:])

        # open loop: from a real context, feed back predictions for rollout_steps steps
        start = max(1, steps + 1 - self.config.rollout_steps)
        history, rolled = z_in[:, :start], []
        for t in range(start, steps + 1):
            nxt = self.dynamics(history, batch.actions[:, :t])
            rolled.append(nxt[:, -1])
            history = torch.cat([history, nxt[:, -1:]], dim=1)
        open_loop = torch.stack(rolled, dim=1)  # (B, R, K, dim) for o_start .. o_L
        rollout = F.l1_loss(open_loop, z[:, start:])

        # heads read real pairs, pairs with a predicted next latent and the open loop's pairs, where both
        # latents are predictions: what imagination gives them one and several steps out
        transitions = torch.arange(steps, device=z.device)
        open_loop = open_loop.detach()
        z_t = [z_in[:, :-1], z_in[:, :-1], history[:, start - 1 : start], open_loop[:, :-1]]
        z_n = [z[:, 1:], pred.detach(), open_loop]
        seen = [transitions, transitions, transitions[start - 1 :]]
        pairs_t, pairs_n = torch.cat(z_t, dim=1).flatten(0, 1), torch.cat(z_n, dim=1).flatten(0, 1)  # (B*M, K, dim)
        reward_logits, end_logits = self._head_logits(pairs_t, pairs_n, corrected=not self.training)
        reward, end = event_losses(reward_logits, end_logits, batch, torch.cat(seen))  # M pairs per window

        newest, latents = batch.frames[:, :, -1].flatten(0, 1), z.flatten(0, 1).detach()  # (N, H, W), (N, K, dim)
        if 0 < self.config.decoder_batch < len(latents):
            pick = torch.randperm(len(latents), device=latents.device)[: self.config.decoder_batch]
            newest, latents = newest[pick], latents[pick]
        pixels = F.mse_loss(self.decoder(latents), newest.float() / 255.0)

        w = self.config.teacher_forcing_weight
        parts = {"teacher_forcing": teacher, "rollout": rollout, "reward": reward, "end": end, "decoder": pixels}
        total = w * teacher + (1 - w) * rollout + reward + end + pixels
        if finetune:
            encoder = encoder_loss(self, batch)
            total = total + encoder.pop("total")
            parts.update(encoder)
        return {"total": total, **parts}

    @property
    def _frame_shape(self) -> tuple[int, int]:
        return (self.config.frame_size, self.config.frame_size)

    def checked_parts(self, stage: str) -> dict[str, CheckedPart]:
        """Stage 2 keeps the best predictor (by its own losses), heads and decoder each on its own: the heads
        learn from detached latents and the decoder from stop-gradient ones, so neither shapes the predictor,
        and one check of their sum could stop the stage while the predictor still improves."""
        if stage != "dynamics":
            return super().checked_parts(stage)
        w = self.config.teacher_forcing_weight
        return {"predictor": CheckedPart(("dynamics.",), {"teacher_forcing": w, "rollout": 1.0 - w}),
                "heads": CheckedPart(("reward_head.", "end_head."), {"reward": 1.0, "end": 1.0}),
                "decoder": CheckedPart(("decoder.",), {"decoder": 1.0})}

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """The parameters a stage trains."""
        encoder: list[nn.Module] = [self.online, self.jepa_predictor, self.pixel_head]
        if self.config.event_weight:
            encoder.append(self.event_head)
        extra = [self.patch_queries]
        if stage == "encoder":
            modules = encoder
        elif stage == "dynamics":
            modules, extra = [self.dynamics, self.reward_head, self.end_head, self.decoder], []
        elif stage == "finetune":
            modules = [*encoder, self.dynamics, self.reward_head, self.end_head, self.decoder]
        else:
            raise ValueError(f"unknown stage {stage!r}")
        return [p for m in modules for p in m.parameters()] + extra

