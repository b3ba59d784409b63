"""JEPA latent world model: masked-ViT encoder with an EMA target, action-conditioned predictor, heads, decoder.

Stage 1 (`loss(batch, "encoder")`): the online encoder sees observations with ~40% of their
patches replaced by a mask token, the EMA target encoder sees them whole, and a small
predictor maps online tokens to target tokens (L1 on masked patches and summary tokens).
Switches against a collapsed latent (see JEPAConfig; measured in runs/jepa_experiments.md): a
summary-token bottleneck (the predictor sees only the online summary tokens and positional
queries), patch targets at all positions, as target tokens, per-patch normalised pixels or pixels
plus frame differences, a VICReg variance/covariance regulariser on the online summary tokens, and
latents standardised per feature with running statistics of the target encoder. The defaults
(bottleneck, all positions, "motion" targets, mask ratio 0.15, standardised latents) replaced the
plain masked-token JEPA, whose latent varied by ~0.002 per feature and whose dynamics did worse
than copying the last latent.
Stage 2 (`"dynamics"`): with the encoder frozen, a causal transformer predicts the next latent
from a sliding window of the history of latents and actions (0.7 teacher forcing + 0.3 open-loop rollout L1), a
reward and a termination head read (z_t, z_t+1), and a decoder learns pictures from
stop-gradient latents. Stage 3 (`"finetune"`) trains all parts together.

A latent is the `summary_tokens` output tokens of the target encoder: compact, so one
imagined step costs a few tokens of the predictor, not a forward pass over the image.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard, cast

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mbrl.world_models.base import CheckedPart, StepOutput, TrainBatch, TreeOutput, WorldModel, map_state
from mbrl.world_models.blocks import (
    Block,
    CrossBlock,
    Folded,
    PatchEmbed,
    grid_positions,
    linear_pair,
    patchify,
    rope_angles,
    standardize,
    update_running_stats,
)
from mbrl.world_models.heads import (
    HEADS,
    FoldedHeads,
    StandardizedHead,
    expected_events,
    fold_standardized_heads,
    shifted_logits,
    standardized_heads,
    standardized_sources,
    transition_head,
)
from mbrl.world_models.jepa_reads import (
    ReadFold,
    fold_reads,
    read_sources,
    step_with_reads,
    supports_reads,
    tree_with_reads,
    with_reads,
)

TREE_CHUNK = 4
"""Depths of a tree `JEPAWorldModel.step_tree` imagines per call of `tree_with_reads`: compiled, each number of
depths is a graph of its own (minutes to compile), so chunks bound them to 1..4 for any horizon; a round of 8
depths makes 2 calls (~1 ms of fixed cost each)."""


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
        jepa_predictor_depth: blocks of the stage-1 predictor (online -> target tokens).
        predictor_dim: width of the dynamics predictor.
        predictor_depth: blocks of the dynamics predictor.

            The default predictor (add conditioning, 2 blocks of width 64, a rank-128 linear path,
            heads of 64 hidden units) costs 0.49M multiply-adds per imagined step of one rollout,
            against 2.39M for the previous one (token conditioning, 3 blocks of width 128, a full
            linear path, heads of 256). With 3 blocks (0.54M), in two stage-2 runs (two seeds)
            against one of the previous, on the same encoder, it was as good one step out and
            drifted far less: imagined-latent error over copying 0.58 / 0.76-0.77 / 0.79 at 1 / 5 /
            10 steps against 0.60 / 0.91 / 1.23, ball-x probe 5 steps out 0.32-0.35 against -2.09;
            2 blocks measured about the same (run m_depth2; benchmarks/RESULTS.md, "What an
            imagined step costs").
        context: history steps each token of the dynamics predictor attends to (a sliding window, so
            imagination keeps the window's keys and values instead of re-reading it every step).
        action_conditioning: "add" (the action's embedding added to the latent's token: one token per
            step), "token" (an action token per step in the sequence: twice the blocks' work per
            imagined step) or "cross" (the latent cross-attends to the embedded last `action_history`
            actions).
        action_history: actions the "cross" conditioning attends to.
        predictor_skip: a linear map from (z_t, z_t - z_t-1) to the change of the latent, added to the
            transformer's: its tokens (width `predictor_dim`) are a narrow bottleneck for the 512
            latent features, while a linear map of the last two latents alone explains most of the
            change (ridge regression: 0.32 of the error of repeating the last latent, one step).
        skip_rank: 0 = the linear path is one full map (2 x 512 -> 512 features for the default latent, as
            many multiply-adds per imagined step as the predictor's blocks); r > 0 = a rank-r map (through
            r features), a fraction of the work: ridge regression of the change on the same held-out
            latents leaves 0.339 of the copy error at full rank, 0.352 at rank 128, 0.399 at rank 64.
        rollout_steps: open-loop steps of the rollout loss.
        context_noise: standard deviation of Gaussian noise added, in training only, to the
            (standardised) latents the stage-2 predictor reads (teacher forcing and the rollout's
            real context; the targets and the latents the heads read stay clean), so that it
            learns to pull a latent that is off, as its own open-loop predictions are, back towards
            real ones instead of compounding the error. Off by default: in two runs at 0.25 the
            ball probes 5 steps out improved, the latent error and the paddle probe got worse
            (benchmarks/RESULTS.md).
        teacher_forcing_weight: weight of the teacher-forcing loss; the rollout loss gets 1 minus it.
        dynamics_loss: the error of predicted latents in stage 2 and 3, "l1" or "mse". L1 regresses each
            feature to its median given the inputs, MSE to its mean: an effect that shows in different
            features from case to case (a served ball appears at one of many places) has a median change
            of zero in each of them, but not a mean one.
        decoder_dim: width of the pixel decoder.
        decoder_batch: observations per stage-2/3 update the decoder learns from, a random subset of
            the batch's (it serves only pictures: decoding 64x64 frames cost more than the rest of
            stage 2 together when it learnt from all of them, and 32 of them still took 40% of a stage-2
            update, for 0.2 dB more PSNR than 8 after the same 800 updates); 0 = all.
        jepa_bottleneck: the stage-1 predictor sees only the online summary tokens and one positional
            query per patch (not the online patch tokens), so what it predicts about the patches
            must pass through the latent.
        jepa_positions: patch positions the stage-1 loss covers, "masked" or "all".
        jepa_target: what the stage-1 predictor predicts at patch positions: "tokens" (the target
            encoder's patch tokens, L1), "pixels" (per-patch normalised pixels, MSE, as in MAE) or
            "motion" (those pixels and, normalised per patch on their own, the differences of
            consecutive frames of the stack, so a moving 1-pixel ball weighs as much as a brick wall).
        variance_weight: weight of the VICReg variance hinge, mean(relu(1 - std)) of each online
            summary-token feature across the batch (0 disables).
        covariance_weight: weight of the VICReg covariance term, squared off-diagonal covariances of
            the online summary-token features / their number (0 disables).
        event_weight: weight of a stage-1 (and stage-3) auxiliary loss: a linear head on the online
            summary tokens of each observation but a window's first predicts the clipped reward,
            life loss and game over of the transition that led to it (its frames show the brick
            vanish or the ball go), so that the latent keeps what the reward and termination
            heads need (0 disables).
        standardize_latents: latents are the target's summary tokens standardised per feature by
            running mean and variance (updated in stage-1 and stage-3 training, frozen otherwise).
        stats_momentum: update rate of those running statistics (the first updates average exactly).
        head: the reward and termination heads, "mlp", "attention" or "standardized" (world_models/heads.py).
        head_hidden: hidden units of each "standardized" head (64; 256 before, four times the work).
        open_loop_heads: the heads also learn from the rollout loss's open-loop pairs, where both
            latents are predictions (what imagination gives them after its first step), not only
            from real pairs and pairs with a teacher-forced next latent. Without them the heads
            met drifted latents only in imagination and paid 4-8 times the data's reward over 10
            imagined steps, twice as much for RIGHT as for LEFT; with them they under-pay, alike for
            every action (benchmarks/RESULTS.md, "Heads in imagination").
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
    action_conditioning: str = "add"
    action_history: int = 4
    predictor_skip: bool = True
    skip_rank: int = 128
    rollout_steps: int = 4
    context_noise: float = 0.0
    teacher_forcing_weight: float = 0.7
    dynamics_loss: str = "l1"
    decoder_dim: int = 64
    decoder_batch: int = 8
    jepa_bottleneck: bool = True
    jepa_positions: str = "all"
    jepa_target: str = "motion"
    variance_weight: float = 0.0
    covariance_weight: float = 0.0
    event_weight: float = 1.0
    standardize_latents: bool = True
    stats_momentum: float = 0.01
    head: str = "standardized"
    head_hidden: int = 64
    open_loop_heads: bool = True

    absent_in_old_checkpoints: ClassVar[dict[str, Any]] = {
        "jepa_bottleneck": False, "jepa_positions": "masked", "jepa_target": "tokens", "variance_weight": 0.0,
        "covariance_weight": 0.0, "standardize_latents": False, "stats_momentum": 0.01,
        "head": "attention", "predictor_skip": False, "event_weight": 0.0,
        "context_noise": 0.0, "open_loop_heads": False, "head_hidden": 256, "skip_rank": 0}
    """What a checkpoint saved before these fields existed was trained with (its config lacks them)."""

    ranges: ClassVar[dict[str, str]] = {
        "num_actions": "[1, 1024]", "frame_size": "[8, 256]", "frame_stack": "[1, 16]", "patch": "[1, 64]",
        "dim": "[8, 4096]", "depth": "[1, 64]", "heads": "[1, 64]", "summary_tokens": "[1, 256]",
        "mask_ratio": "[0, 1)", "ema_decay": "[0, 1]", "jepa_predictor_depth": "[1, 64]", "predictor_dim": "[8, 4096]",
        "predictor_depth": "[1, 64]", "context": "[1, 1024]", "action_history": "[1, 1024]", "skip_rank": "[0, 4096]",
        "rollout_steps": "[1, 64]", "context_noise": "[0, 10]", "teacher_forcing_weight": "[0, 1]",
        "decoder_dim": "[1, 4096]", "decoder_batch": "[0, 4096]", "variance_weight": "[0, inf)",
        "covariance_weight": "[0, inf)", "event_weight": "[0, inf)", "stats_momentum": "(0, 1]",
        "head_hidden": "[1, 8192]"}
    """Every size's range (the widths and depths bound the model's memory), checked by mbrl.core.config.from_dict
    (a world model imports nothing of mbrl): YAML, `--set` and checkpoints' metadata."""

    def __post_init__(self) -> None:
        for name, allowed in (("action_conditioning", ("token", "add", "cross")),
                              ("jepa_positions", ("masked", "all")), ("jepa_target", ("tokens", "pixels", "motion")),
                              ("head", HEADS), ("dynamics_loss", ("l1", "mse"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.patch < 1 or self.patch & (self.patch - 1) or self.frame_size % self.patch:
            raise ValueError(f"patch {self.patch} must be a power of 2 that divides frame_size {self.frame_size} "
                             "(the decoder doubles the patch grid up to the frame)")
        # a head's width carries rotary positions: an even share per axis, 2 axes over patches, 1 over time
        for name, multiple in (("dim", 4), ("predictor_dim", 2), ("decoder_dim", 1)):
            width = getattr(self, name)
            if self.heads < 1 or width % self.heads or (width // self.heads) % multiple:
                raise ValueError(f"{name} {width} must split into {self.heads} heads of a width divisible by "
                                 f"{multiple}")


PIXEL_EPS = 1e-3
"""Added to a patch's pixel variance before normalising it, so flat patches give ~0, not noise."""


class Encoder(nn.Module):
    """ViT over one observation: (N, C, H, W) uint8 -> tokens (N, K + P, dim), K summary tokens first."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        self.embed = PatchEmbed(cfg.frame_stack, cfg.dim, cfg.patch)
        self.summary = nn.Parameter(torch.randn(cfg.summary_tokens, cfg.dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        side = cfg.frame_size // cfg.patch
        # summary tokens sit at a virtual position (-1, -1): attention between patches depends
        # only on their relative offsets, as RoPE promises
        positions = torch.cat([torch.full((cfg.summary_tokens, 2), -1), grid_positions(side, side)])
        cos, sin = rope_angles(positions, cfg.dim // cfg.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """obs: uint8 (N, C, H, W); mask: bool (N, P), True = patch hidden behind the mask token."""
        x = self.embed(obs.float() / 255.0)  # (N, P, dim)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        x = torch.cat([self.summary.expand(len(x), -1, -1), x], dim=1)  # (N, K+P, dim)
        for block in self.blocks:
            x = block(x, rope=(self.rope_cos, self.rope_sin))
        return self.norm(x)


class Decoder(nn.Module):
    """Latent (N, K, dim) -> newest frame (N, H, W) in [0, 1]: spatial queries cross-attend, then upsample."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        self.side = cfg.frame_size // cfg.patch
        d = cfg.decoder_dim
        self.proj = nn.Linear(cfg.dim, d)
        self.queries = nn.Parameter(torch.randn(self.side * self.side, d) * 0.02)
        self.attend = nn.ModuleList(CrossBlock(d, cfg.heads) for _ in range(2))
        layers: list[nn.Module] = []
        size, channels = self.side, d
        while size < cfg.frame_size:
            layers += [nn.ConvTranspose2d(channels, max(channels // 2, 16), 4, stride=2, padding=1), nn.GELU()]
            channels, size = max(channels // 2, 16), size * 2
        self.up = nn.Sequential(*layers, nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        context = self.proj(z)
        x = self.queries.expand(len(z), -1, -1)
        for block in self.attend:
            x = block(x, context)
        x = rearrange(x, "n (h w) d -> n d h w", h=self.side)
        return torch.sigmoid(self.up(x))[:, 0]


class Dynamics(nn.Module):
    """Causal transformer over the history of latents and actions -> next latent at every step.

    Every token attends to the tokens of the last `context` steps (itself included), so a step's
    prediction reads a sliding window of history and imagination can keep the window's keys and
    values instead of recomputing them (`prefill` a real context, then `advance` one step at a
    time; the result equals `forward` over the whole history).
    """

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, width = cfg.summary_tokens * cfg.dim, cfg.predictor_dim
        self.inp = nn.Linear(d, width)
        self.action = nn.Embedding(cfg.num_actions, width)
        if cfg.action_conditioning == "cross":
            self.history_pos = nn.Parameter(torch.randn(cfg.action_history, width) * 0.02)
            self.condition = CrossBlock(width, cfg.heads)
        elif cfg.action_conditioning not in ("token", "add"):
            raise ValueError(f"action_conditioning must be 'token', 'add' or 'cross', got {cfg.action_conditioning!r}")
        self.blocks = nn.ModuleList(Block(width, cfg.heads) for _ in range(cfg.predictor_depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)
        if cfg.predictor_skip:
            self.skip = nn.Linear(2 * d, d) if not cfg.skip_rank else nn.Sequential(
                nn.Linear(2 * d, cfg.skip_rank, bias=False), nn.Linear(cfg.skip_rank, d))
            self._folded_skip = Folded()
            last = cast(nn.Linear, self.skip if isinstance(self.skip, nn.Linear) else self.skip[-1])
            nn.init.zeros_(last.weight)  # starts as the plain predictor
            nn.init.zeros_(last.bias)
        self._rope_table: tuple[Tensor, Tensor] | None = None  # see _rope_at
        self.per_step = 2 if cfg.action_conditioning == "token" else 1  # tokens per step: z_t and a_t, or one
        self.window = self.per_step * cfg.context  # tokens a token attends to, itself included

    def forward(self, z: Tensor, actions: Tensor) -> Tensor:
        """z: (B, T, K, dim) latents, actions: (B, T) -> predicted z_t+1 for every t: (B, T, K, dim)."""
        x = self._tokens(z, actions)  # (B, T * per_step, width)
        n = x.shape[1]
        at = torch.arange(n, device=x.device)
        cos, sin = rope_angles(at[:, None], x.shape[-1] // self.cfg.heads)
        band = _window_mask(at, at, self.window)
        for block in self.blocks:
            x = block(x, rope=(cos, sin), mask=band)
        previous = torch.cat([z[:, :1], z[:, :-1]], dim=1)  # the first step has none: no change
        return z + self._predict(x) + self._skip(z, previous)

    # ---- imagination with a key/value cache ----------------------------------------------

    def prefill(self, z: Tensor, actions: Tensor) -> dict[str, Any]:
        """Imagination state of a real context: z (B, T, K, dim) latents and the (B, T-1) actions between them.

        The state holds the newest latent and the one before it (for the linear path; the newest
        again for a one-latent context), the last `action_history - 1` actions (left-padded with
        action 0, as in training), and per block a ring buffer of the keys and values of the last
        `window - 1 + per_step` tokens with each slot's token position (`key_at`; far in the past
        for slots not written yet), so it has one shape for every context length. Stepping
        writes into the ring in place: a state is consumed by `step`.
        """
        b, width, heads = z.shape[0], self.cfg.predictor_dim, self.cfg.heads
        ring = self.window - 1 + self.per_step  # a step's tokens and the window before them
        keys = [z.new_zeros(b, heads, ring, width // heads) for _ in self.blocks]
        values = [z.new_zeros(b, heads, ring, width // heads) for _ in self.blocks]
        key_at = torch.full((b, ring), -2 * self.window, dtype=torch.long, device=z.device)
        n = 0
        if z.shape[1] > 1:  # the context's tokens in one pass, as in training; the ring keeps the last ones
            x = self._tokens(z[:, :-1], actions)
            n = x.shape[1]
            at = torch.arange(n, device=z.device)
            rope = rope_angles(at[:, None], width // heads)
            band = _window_mask(at, at, self.window)
            kept = at[-ring:]
            for block, block_keys, block_values in zip(self.blocks, keys, values):
                assert isinstance(block, Block)
                x, k, v = block.forward_kv(x, rope, mask=band)
                block_keys[:, :, kept % ring], block_values[:, :, kept % ring] = k[:, :, kept], v[:, :, kept]
            key_at[:, kept % ring] = kept
        return {"latent": z[:, -1], "previous": z[:, -2 if z.shape[1] > 1 else -1],
                "actions": _left_pad(actions, self.cfg.action_history - 1), "keys": keys, "values": values,
                "key_at": key_at, "position": torch.full((b,), n, dtype=torch.long, device=z.device)}

    def step(self, state: dict[str, Any], action: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Action (B,) at the state's newest latent -> the predicted next latent (B, K, dim) and the next state.

        Updates the state's key/value ring in place (see `prefill`).
        """
        x, state = self._advance(state, action)
        z = state["latent"]
        z_next = z + self._predict(x)[:, 0] + self._skip(z, state["previous"])
        return z_next, {**state, "latent": z_next, "previous": z}

    def _advance(self, state: dict[str, Any], action: Tensor, projected: Tensor | None = None
                 ) -> tuple[Tensor, dict[str, Any]]:
        """The tokens of the state's newest latent and `action` (B,) through the blocks over the ring ->
        block outputs (B, per_step, width) and the state with the ring and the action history advanced.
        `projected`: the input layer's output for the newest latent (B, width), if the caller has it."""
        history = torch.cat([state["actions"], action[:, None]], dim=1)
        x = self._tokens(state["latent"][:, None], history, None if projected is None else projected[:, None])
        b, n = x.shape[:2]
        at = state["position"][:, None] + torch.arange(n, device=x.device)  # (B, N) positions of the new tokens
        slots = at % state["key_at"].shape[1]  # overwrites tokens older than any new one attends to
        key_at = state["key_at"].scatter(1, slots, at)
        offsets = at[:, :, None] - key_at[:, None, :]  # (B, N, ring)
        bias = torch.where((offsets >= 0) & (offsets < self.window), 0.0, float("-inf"))[:, None]
        cos, sin = self._rope_at(at.reshape(-1))
        rope = (cos.view(b, 1, n, -1), sin.view(b, 1, n, -1))
        for block, keys, values in zip(self.blocks, state["keys"], state["values"]):
            assert isinstance(block, Block)
            x = block.forward_ring(x, rope, keys, values, slots, bias)
        return x, {**state, "key_at": key_at, "position": state["position"] + n,
                   "actions": _left_pad(history, self.cfg.action_history - 1)}

    def _rope_at(self, at: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary cos and sin (N, head_dim / 2) of token positions `at` (N,), read from a table of positions
        0, 1, ... that grows with the longest rollout (the same values as `rope_angles` of `at`, for two index
        operations instead of ~10 small ones and a cos and sin of every row)."""
        if torch.compiler.is_compiling():  # the table's size check would read `at` back: compute them instead
            return rope_angles(at[:, None], self.cfg.predictor_dim // self.cfg.heads)
        last = int(at.max()) if at.numel() else 0
        table = self._rope_table
        if table is None or table[0].device != at.device or last >= len(table[0]):
            positions = torch.arange(max(2 * (last + 1), 64), device=at.device)
            table = self._rope_table = rope_angles(positions[:, None], self.cfg.predictor_dim // self.cfg.heads)
        return table[0].index_select(0, at), table[1].index_select(0, at)

    # ---- shared by both paths ------------------------------------------------------------

    def _tokens(self, z: Tensor, actions: Tensor, projected: Tensor | None = None) -> Tensor:
        """Latents (B, T, K, dim) and actions (B, T') -> tokens (B, T * per_step, width).

        The last T actions are those taken at the T latents; with "cross" conditioning the
        earlier ones (T' > T) are history the first latents' tokens attend to. `projected`: the
        input layer's output for the latents (B, T, width), if the caller has it.
        """
        t = z.shape[1]
        x = self.inp(z.flatten(2)) if projected is None else projected  # (B, T, width)
        if self.cfg.action_conditioning == "cross":
            return x + self._attend_to_actions(x, actions)
        a = self.action(actions[:, actions.shape[1] - t :])
        if self.cfg.action_conditioning == "add":
            return x + a
        return rearrange(torch.stack([x, a], dim=2), "b t two w -> b (t two) w")  # z_0, a_0, z_1, a_1, ...

    def _predict(self, x: Tensor) -> Tensor:
        """Block outputs (B, T * per_step, width) -> latent changes (B, T, K, dim), read at each step's last token."""
        x = self.norm(x[:, self.per_step - 1 :: self.per_step])  # the action token predicts the next latent
        return self.out(x).unflatten(-1, self.latent_shape)

    def _skip(self, z: Tensor, previous: Tensor) -> Tensor | float:
        """The linear path's change of latents (..., K, dim) given the latents before them (0 without it).

        Its first layer reads [z, z - previous]: W_a z + W_b (z - previous) = (W_a + W_b) z - W_b previous,
        so imagination reads the two latents with two matrix products without building its input.
        """
        if not self.cfg.predictor_skip:
            return 0.0
        layers = [self.skip] if isinstance(self.skip, nn.Linear) else list(cast(nn.Sequential, self.skip))
        first = cast(nn.Linear, layers[0])
        if torch.is_grad_enabled():
            x = first(torch.cat([z.flatten(-2), (z - previous).flatten(-2)], dim=-1))
        else:
            x = linear_pair(z.flatten(-2), previous.flatten(-2), *self.skip_reads(), first.bias)
        for layer in layers[1:]:
            x = layer(x)
        return x.unflatten(-1, self.latent_shape)

    def skip_reads(self) -> tuple[Tensor, Tensor]:
        """The linear path's first layer as two reads, (W_a + W_b) of z and -W_b of the latent before it (see
        `_skip`), cached until the weight changes."""
        first = cast(nn.Linear, self.skip if isinstance(self.skip, nn.Linear) else cast(nn.Sequential, self.skip)[0])

        def fold() -> tuple[Tensor, Tensor]:
            w_a, w_b = first.weight.chunk(2, dim=1)
            return w_a + w_b, -w_b

        return cast(tuple[Tensor, Tensor], self._folded_skip.get((first.weight,), fold))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.cfg.summary_tokens, self.cfg.dim)

    def _attend_to_actions(self, x: Tensor, actions: Tensor) -> Tensor:
        """Each step's latent cross-attends to the embeddings of its last `action_history` actions."""
        k = self.cfg.action_history
        padded = F.pad(actions, (k - 1, 0), value=0)  # (B, T'+k-1)
        window = padded.unfold(1, k, 1)[:, -x.shape[1] :]  # (B, T, k): actions t-k+1 .. t
        history = self.action(window) + self.history_pos  # (B, T, k, width)
        b, t = window.shape[:2]
        out = self.condition(x.reshape(b * t, 1, -1), history.reshape(b * t, k, -1))
        return out.view(b, t, -1) - x


def _event_losses(reward_logits: Tensor, end_logits: Tensor, batch: TrainBatch,
                  transitions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the clipped-reward logits (B*M, 3) and binary cross-entropy of the game-over and
    life-loss logits (B*M, 2) against the batch's transitions: pair j of window i (row i*M + j) is the
    window's transition `transitions[j]` (M,) (default: pair t is transition t, M = L)."""
    at = torch.arange(batch.actions.shape[1], device=batch.rewards.device) if transitions is None else transitions
    reward_class = batch.rewards.sign().long()[:, at] + 1  # (B, M): -1, 0, +1 -> 0, 1, 2
    ends = torch.stack([batch.terminated, batch.life_loss], dim=-1).float()[:, at]  # (B, M, 2)
    reward = F.cross_entropy(reward_logits, reward_class.flatten())
    return reward, F.binary_cross_entropy_with_logits(end_logits, ends.flatten(0, 1))


def _all_standardized(heads: tuple[nn.Module, ...]) -> TypeGuard[tuple[StandardizedHead, ...]]:
    return all(isinstance(head, StandardizedHead) for head in heads)


def _window_mask(query_at: Tensor, key_at: Tensor, window: int) -> Tensor:
    """bool (Q, K): a query may attend to the keys of the last `window` positions up to its own."""
    offsets = query_at[:, None] - key_at[None]
    return (offsets >= 0) & (offsets < window)


def _standard_strides(tensor: Tensor) -> Tensor:
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


def _left_pad(actions: Tensor, length: int) -> Tensor:
    """The last `length` actions of (B, T), left-padded with action 0 when T < length."""
    padded = F.pad(actions, (max(0, length - actions.shape[1]), 0), value=0)
    return padded[:, padded.shape[1] - length :]


def variance_covariance(z: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """VICReg terms of features z (N, D) across the batch.

    Returns:
        variance: mean over features of relu(1 - std), zero once every feature varies with std >= 1.
        covariance: sum of squared off-diagonal covariances / D, zero for decorrelated features.
    """
    z = z - z.mean(0)
    variance = F.relu(1.0 - (z.var(0) + eps).sqrt()).mean()
    cov = z.T @ z / max(len(z) - 1, 1)  # (D, D)
    covariance = (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / z.shape[1]
    return variance, covariance


class JEPAWorldModel(WorldModel):
    """The default mbrl world model (see the module docstring)."""

    latent_mean: Tensor
    latent_var: Tensor
    stats_count: Tensor

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()  # the config's choices and shapes were checked by JEPAConfig.__post_init__
        self.config = config
        self.num_actions = config.num_actions
        self.latent_shape = (config.summary_tokens, config.dim)
        self.num_patches = (config.frame_size // config.patch) ** 2
        self.online = Encoder(config)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.jepa_predictor = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.jepa_predictor_depth))
        if config.jepa_bottleneck:  # one query per patch; RoPE and this embedding say which patch
            self.patch_queries = nn.Parameter(torch.randn(self.num_patches, config.dim) * 0.02)
        if config.jepa_target != "tokens":
            channels = config.frame_stack if config.jepa_target == "pixels" else 2 * config.frame_stack - 1
            self.pixel_head = nn.Linear(config.dim, channels * config.patch**2)
        if config.event_weight:
            self.event_head = nn.Linear(config.summary_tokens * config.dim, 5)  # reward -1/0/+1, game over, life
        if config.standardize_latents:
            k = config.summary_tokens
            self.register_buffer("latent_mean", torch.zeros(k, config.dim))
            self.register_buffer("latent_var", torch.ones(k, config.dim))
            self.register_buffer("stats_count", torch.zeros(()))
        self.dynamics = Dynamics(config)
        heads = (config.dim, config.summary_tokens, config.heads)
        momentum, hidden = config.stats_momentum, config.head_hidden
        self.reward_head = transition_head(config.head, *heads, 3, momentum, hidden)  # clipped reward -1, 0, +1
        self.end_head = transition_head(config.head, *heads, 2, momentum, hidden)  # game over, life loss
        self._folded_heads = Folded()  # both standardized heads as one, for imagination
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
        state = self.dynamics.prefill(latents, actions)
        return with_reads(state, self._read_fold()[0]) if supports_reads(self.dynamics) else state

    @torch.no_grad()
    def step(self, state: dict[str, Any], action: Tensor, latent: bool = True) -> StepOutput:
        """One imagined step; states from `observe` carry their latent's linear reads (world_models/jepa_reads.py)
        unless the linear path is full-rank, and with the standardized heads `latent=False` skips computing the
        latent. With those heads this is a tree of one depth (compiled with `step_tree`'s, see
        `compile_imagination`)."""
        if "reads" not in state:
            z_next, new_state = self.dynamics.step(state, action)
            return StepOutput(new_state, z_next, *self.transition(state["latent"], z_next))
        fold, heads = self._read_fold()
        if heads is None:  # heads that read latents: the step computes its latent
            predicted, new_state, _ = step_with_reads(self.dynamics, fold, None, state, action)
            assert predicted is not None
            return StepOutput(new_state, predicted, *self.transition(state["latent"], predicted))
        z, new_state, events = self._imagine_tree(fold, heads, state, [None], [action], latent)
        return StepOutput(new_state, z, *events[0])

    @torch.no_grad()
    def step_tree(self, state: dict[str, Any], parents: Sequence[Tensor | None], actions: Sequence[Tensor],
                  latent: bool = False) -> TreeOutput:
        """`WorldModel.step_tree`; with carried reads and the standardized heads, up to TREE_CHUNK depths at a time in
        one call of `tree_with_reads` (compiled by `compile_imagination`)."""
        fold, heads = self._read_fold()
        if "reads" not in state or heads is None:
            return super().step_tree(state, parents, actions, latent)
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
                    return run(self._tree_with_reads, map_state(_standard_strides, state))
            except Exception as error:  # one graph (fullgraph): compiling fails before it runs, the state untouched
                warnings.warn(f"compiled imagination failed ({type(error).__name__}: {error}); imagining eagerly",
                              stacklevel=2)
                self._tree_with_reads = tree_with_reads
        return run(tree_with_reads, state)

    def compile_imagination(self) -> None:
        """Imagine with carried reads and the standardized heads (the defaults) through `torch.compile`, one graph
        per number of depths a `tree_with_reads` call has (1 to TREE_CHUNK: a `step` is one depth; CEM at N=512,
        H=12, I=4 makes its first levels and each round's two halves calls of 4) and per torch thread count, with
        dynamic sizes. The first call of each compiles it (with the default config on 2 CPU cores ~2 minutes for
        4 depths, less with torch's on-disk compile cache warm); then CEM at N=512, H=12, I=4 plans in ~0.7 of
        the time of compiled single steps (README, "Compiled trees"), with the same results to float rounding.
        Sizes that happen to be equal when a graph is traced get symbols of their own (no duck shapes), so that
        they need not stay equal, and a state's tensors are given with the strides of new tensors. A planner's
        first levels from one env's state (a batch of 1) and its rounds compile twice. The graph runs from a C++
        wrapper (inductor's `cpp_wrapper`: 0.93 of the time per plan against its Python one, README "C++
        wrapper"). Where compiling fails (no C++ compiler, say), it warns once and imagines as before."""
        if self._tree_with_reads is tree_with_reads:
            self._tree_with_reads = torch.compile(tree_with_reads, dynamic=True, fullgraph=True,
                                                  options={"cpp_wrapper": True})

    def _read_fold(self) -> tuple[ReadFold, FoldedHeads | None]:
        """The folded weights of imagination with carried reads (and of the standardized heads, or None), kept
        until a weight or statistic changes."""
        heads = (self.reward_head, self.end_head)
        if not _all_standardized(heads):
            return self._folded_reads.get(read_sources(self.dynamics), lambda: (fold_reads(self.dynamics, None), None))

        def fold() -> tuple[ReadFold, FoldedHeads]:
            folded_heads = fold_standardized_heads(heads, self._folded_heads)
            return fold_reads(self.dynamics, folded_heads), folded_heads

        return self._folded_reads.get(read_sources(self.dynamics) + standardized_sources(heads), fold)

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
        heads = (self.reward_head, self.end_head)
        if imagined and _all_standardized(heads) and not (self.training or torch.is_grad_enabled()):
            reward, end = standardized_heads(heads, self._folded_heads, z, z_next)  # both as one
        else:
            reward, end = self.reward_head(z, z_next), self.end_head(z, z_next)
        return self._corrected(reward, end) if corrected else (reward, end)

    def _corrected(self, reward_logits: Tensor, end_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Reward and end logits with the prior correction for the real event rates (`event_shift`) added."""
        return shifted_logits(reward_logits, end_logits, self.event_shift)

    def standardize(self, summary: Tensor) -> Tensor:
        """Summary tokens (..., K, dim) -> latents: standardised per feature when standardize_latents is set."""
        if not self.config.standardize_latents:
            return summary
        return standardize(summary, self.latent_mean, self.latent_var)

    @torch.no_grad()
    def fit_latent_stats(self, frames: Iterable[Tensor]) -> None:
        """Standardise latents by the exact per-feature mean and variance of the target encoder's summary tokens
        over `frames` (batches of uint8 (..., C, H, W) observations), replacing the running statistics.

        Called when the encoder stops training: the running statistics lag the EMA target encoder they
        track, and at the end of stage 1 they were off by ~8 standard deviations of the features (mean
        |mean| of the standardised latents of the run's own data), which saturates a tanh MLP reading them.
        """
        if not self.config.standardize_latents:
            return
        k = self.config.summary_tokens
        summary = torch.cat([self.target(f.flatten(0, -4))[:, :k] for f in frames]).float()  # (N, K, dim)
        self.latent_mean.copy_(summary.mean(0))
        self.latent_var.copy_(summary.var(0, correction=0))

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        if stage == "encoder":
            return self._encoder_loss(batch)
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

    def random_mask(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """bool (n, P) with exactly round(mask_ratio * P) patches masked per observation."""
        count = round(self.config.mask_ratio * self.num_patches)
        scores = torch.rand(n, self.num_patches, generator=generator, device=self.online.summary.device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return ranks < count

    def _jepa_predict(self, online: Tensor) -> Tensor:
        """Online tokens (N, K+P, dim) -> predicted target tokens (N, K+P, dim).

        With the bottleneck, the online patch tokens are replaced by positional queries first.
        """
        if not self.config.jepa_bottleneck:
            x = online
            for block in self.jepa_predictor:
                x = block(x)
            return x
        k = self.config.summary_tokens
        queries = self.patch_queries.expand(len(online), -1, -1)  # (N, P, dim)
        x = torch.cat([online[:, :k], queries], dim=1)
        rope = (self.online.rope_cos, self.online.rope_sin)
        for block in self.jepa_predictor:
            x = block(x, rope=rope)
        return x

    def _pixel_targets(self, obs: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> per-patch normalised pixels (N, P, C * patch^2), for "motion" followed by
        per-patch normalised differences of consecutive frames (N, P, (2C - 1) * patch^2)."""
        x = obs.float() / 255.0
        parts = [x, x[:, 1:] - x[:, :-1]] if self.config.jepa_target == "motion" else [x]
        patches = [patchify(part, self.config.patch) for part in parts]
        return torch.cat([(x - x.mean(-1, keepdim=True)) * (x.var(-1, keepdim=True) + PIXEL_EPS).rsqrt()
                          for x in patches], dim=-1)

    def _encoder_loss(self, batch: TrainBatch) -> dict[str, Tensor]:
        cfg, k = self.config, self.config.summary_tokens
        obs = batch.frames.flatten(0, 1)  # (N, C, H, W), every observation of every window
        mask = self.random_mask(len(obs))
        with torch.no_grad():
            target = self.target(obs)
            if cfg.standardize_latents and self.training:
                update_running_stats(self.latent_mean, self.latent_var, self.stats_count, target[:, :k],
                                     cfg.stats_momentum)
        online = self.online(obs, mask)
        x = self._jepa_predict(online)  # (N, K+P, dim)
        where = mask if cfg.jepa_positions == "masked" else torch.ones_like(mask)
        if cfg.jepa_target != "tokens":
            patches = F.mse_loss(self.pixel_head(x[:, k:][where]), self._pixel_targets(obs)[where])
        else:
            patches = F.l1_loss(x[:, k:][where], target[:, k:][where])
        summary = F.l1_loss(x[:, :k], target[:, :k])
        total = patches + summary
        parts = {"jepa_patches": patches, "jepa_summary": summary,
                 "target_std": target[:, :k].std(dim=0).mean().detach()}
        if cfg.event_weight:
            events = self._event_loss(online[:, :k].unflatten(0, batch.frames.shape[:2]), batch)
            total = total + cfg.event_weight * events
            parts["events"] = events
        if cfg.variance_weight or cfg.covariance_weight:
            variance, covariance = variance_covariance(online[:, :k].flatten(1))
            total = total + cfg.variance_weight * variance + cfg.covariance_weight * covariance
            parts.update(variance=variance, covariance=covariance)
        return {"total": total, **parts}

    def _event_loss(self, summary: Tensor, batch: TrainBatch) -> Tensor:
        """Online summary tokens (B, L+1, K, dim) -> loss of predicting each transition's events from its result."""
        logits = self.event_head(summary[:, 1:].flatten(2))  # (B, L, 5)
        reward, end = _event_losses(logits[..., :3].flatten(0, 1), logits[..., 3:].flatten(0, 1), batch)
        return reward + end

    def _dynamics_loss(self, batch: TrainBatch, finetune: bool) -> dict[str, Tensor]:
        b, steps = batch.actions.shape
        z = self.encode(batch.frames) if batch.latents is None else batch.latents  # (B, L+1, K, dim) targets
        if finetune:  # inputs from the online encoder, so the dynamics loss shapes it too
            summary = self.online(batch.frames.flatten(0, 1))[:, : self.config.summary_tokens]
            z_in = self.standardize(summary).unflatten(0, (b, -1))
        else:
            z_in = z
        noise = self.config.context_noise if self.training else 0.0
        z_ctx = z_in + noise * torch.randn_like(z_in) if noise else z_in  # what the predictor reads
        pred = self.dynamics(z_ctx[:, :-1], batch.actions)  # (B, L, K, dim) teacher forcing
        error = F.l1_loss if self.config.dynamics_loss == "l1" else F.mse_loss
        teacher = error(pred, z[:, 1:])

        # open loop: from a real context, feed back predictions for rollout_steps steps
        start = max(1, steps + 1 - self.config.rollout_steps)
        history, rolled = z_ctx[:, :start], []
        for t in range(start, steps + 1):
            nxt = self.dynamics(history, batch.actions[:, :t])
            rolled.append(nxt[:, -1])
            history = torch.cat([history, nxt[:, -1:]], dim=1)
        open_loop = torch.stack(rolled, dim=1)  # (B, R, K, dim) for o_start .. o_L
        rollout = error(open_loop, z[:, start:])

        # heads read real pairs, pairs with a predicted next latent and (open_loop_heads) the open loop's
        # pairs, where both latents are predictions: what imagination gives them one and several steps out
        transitions = torch.arange(steps, device=z.device)
        z_t, z_n, seen = [z_in[:, :-1], z_in[:, :-1]], [z[:, 1:], pred.detach()], [transitions, transitions]
        if self.config.open_loop_heads:
            open_loop = open_loop.detach()
            z_t += [history[:, start - 1 : start], open_loop[:, :-1]]
            z_n.append(open_loop)
            seen.append(transitions[start - 1 :])
        pairs_t, pairs_n = torch.cat(z_t, dim=1).flatten(0, 1), torch.cat(z_n, dim=1).flatten(0, 1)  # (B*M, K, dim)
        reward_logits, end_logits = self._head_logits(pairs_t, pairs_n, corrected=not self.training)
        reward, end = _event_losses(reward_logits, end_logits, batch, torch.cat(seen))  # M pairs per window

        newest, latents = batch.frames[:, :, -1].flatten(0, 1), z.flatten(0, 1).detach()  # (N, H, W), (N, K, dim)
        if 0 < self.config.decoder_batch < len(latents):
            pick = torch.randperm(len(latents), device=latents.device)[: self.config.decoder_batch]
            newest, latents = newest[pick], latents[pick]
        pixels = F.mse_loss(self.decoder(latents), newest.float() / 255.0)

        w = self.config.teacher_forcing_weight
        parts = {"teacher_forcing": teacher, "rollout": rollout, "reward": reward, "end": end, "decoder": pixels}
        total = w * teacher + (1 - w) * rollout + reward + end + pixels
        if finetune:
            encoder = self._encoder_loss(batch)
            total = total + encoder.pop("total")
            parts.update(encoder)
        return {"total": total, **parts}

    @property
    def _frame_shape(self) -> tuple[int, int]:
        return (self.config.frame_size, self.config.frame_size)

    def checked_parts(self, stage: str) -> dict[str, CheckedPart]:
        """Stage 2 keeps the best predictor (by its own losses), heads and decoder each on its own: the heads
        learn from detached latents and the decoder from stop-gradient ones, so neither shapes the
        predictor. One check of the sum stopped a stage-2 run at 1,700 updates when the heads' held-out
        loss turned up, with the predictor's still falling (benchmarks/RESULTS.md)."""
        if stage != "dynamics":
            return super().checked_parts(stage)
        w = self.config.teacher_forcing_weight
        return {"predictor": CheckedPart(("dynamics.",), {"teacher_forcing": w, "rollout": 1.0 - w}),
                "heads": CheckedPart(("reward_head.", "end_head."), {"reward": 1.0, "end": 1.0}),
                "decoder": CheckedPart(("decoder.",), {"decoder": 1.0})}

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """The parameters a stage trains."""
        encoder: list[nn.Module] = [self.online, self.jepa_predictor]
        if self.config.jepa_target != "tokens":
            encoder.append(self.pixel_head)
        if self.config.event_weight:
            encoder.append(self.event_head)
        extra = [self.patch_queries] if self.config.jepa_bottleneck else []
        if stage == "encoder":
            modules = encoder
        elif stage == "dynamics":
            modules, extra = [self.dynamics, self.reward_head, self.end_head, self.decoder], []
        elif stage == "finetune":
            modules = [*encoder, self.dynamics, self.reward_head, self.end_head, self.decoder]
        else:
            raise ValueError(f"unknown stage {stage!r}")
        return [p for m in modules for p in m.parameters()] + extra
