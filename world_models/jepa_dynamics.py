"""The JEPA's dynamics predictor: a causal transformer over a sliding window of latents and actions.

One token per step, the latent's projection with the action's embedding added, attends to the tokens of
the last `context` steps; the predicted change of the latent is the transformer's output plus a low-rank
linear path from (z_t, z_t - z_t-1). Imagination keeps the window's keys and values in a ring (`prefill` a
real context, then `step`), which gives what `forward` gives over the whole history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from mbrl.world_models.blocks import Block, Folded, linear_pair, rope_angles

if TYPE_CHECKING:
    from mbrl.world_models.jepa import JEPAConfig


class Dynamics(nn.Module):
    """Causal transformer over the history of latents and actions -> next latent at every step.

    Every token attends to the tokens of the last `context` steps (itself included), so a step's
    prediction reads a sliding window of history and imagination can keep the window's keys and
    values instead of recomputing them (`prefill` a real context, then `step` one step at a
    time; the result equals `forward` over the whole history).
    """

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, width = cfg.summary_tokens * cfg.dim, cfg.predictor_dim
        self.inp = nn.Linear(d, width)
        self.action = nn.Embedding(cfg.num_actions, width)
        self.blocks = nn.ModuleList(Block(width, cfg.heads) for _ in range(cfg.predictor_depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)
        # the linear path: its tokens (width `predictor_dim`) are a narrow bottleneck for the latent's features,
        # while a linear map of the last two latents explains most of a step's change
        self.skip = nn.Sequential(nn.Linear(2 * d, cfg.skip_rank, bias=False), nn.Linear(cfg.skip_rank, d))
        self._folded_skip = Folded()
        last = cast(nn.Linear, self.skip[-1])
        nn.init.zeros_(last.weight)  # starts as the plain predictor
        nn.init.zeros_(last.bias)
        self._rope_table: tuple[Tensor, Tensor] | None = None  # see _rope_at
        self.window = cfg.context  # tokens a token attends to, itself included

    def forward(self, z: Tensor, actions: Tensor) -> Tensor:
        """z: (B, T, K, dim) latents, actions: (B, T) -> predicted z_t+1 for every t: (B, T, K, dim)."""
        x = self._tokens(z, actions)  # (B, T, width)
        at = torch.arange(x.shape[1], device=x.device)
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
        again for a one-latent context) and per block a ring buffer of the keys and values of the
        last `window` tokens with each slot's token position (`key_at`; far in the past for slots not
        written yet), so it has one shape for every context length. Stepping writes into the ring in
        place: a state is consumed by `step`.
        """
        b, width, heads = z.shape[0], self.cfg.predictor_dim, self.cfg.heads
        ring = self.window  # a step's token and the window before it
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
        return {"latent": z[:, -1], "previous": z[:, -2 if z.shape[1] > 1 else -1], "keys": keys, "values": values,
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
        """The token of the state's newest latent and `action` (B,) through the blocks over the ring -> block
        outputs (B, 1, width) and the state with the ring advanced. `projected`: the input layer's output for
        the newest latent (B, width), if the caller has it."""
        x = self._tokens(state["latent"][:, None], action[:, None], None if projected is None else projected[:, None])
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
        return x, {**state, "key_at": key_at, "position": state["position"] + n}

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
        """Latents (B, T, K, dim) and the actions taken at them (B, T) -> tokens (B, T, width), the action's
        embedding added to the latent's projection. `projected`: the input layer's output for the latents
        (B, T, width), if the caller has it."""
        x = self.inp(z.flatten(2)) if projected is None else projected  # (B, T, width)
        return x + self.action(actions)

    def _predict(self, x: Tensor) -> Tensor:
        """Block outputs (B, T, width) -> the transformer's latent changes (B, T, K, dim)."""
        return self.out(self.norm(x)).unflatten(-1, self.latent_shape)

    def _skip(self, z: Tensor, previous: Tensor) -> Tensor:
        """The linear path's change of latents (..., K, dim) given the latents before them.

        Its first layer reads [z, z - previous]: W_a z + W_b (z - previous) = (W_a + W_b) z - W_b previous,
        so imagination reads the two latents with two matrix products without building its input.
        """
        first, second = (cast(nn.Linear, layer) for layer in self.skip)
        if torch.is_grad_enabled():
            x = first(torch.cat([z.flatten(-2), (z - previous).flatten(-2)], dim=-1))
        else:
            x = linear_pair(z.flatten(-2), previous.flatten(-2), *self.skip_reads(), first.bias)
        return second(x).unflatten(-1, self.latent_shape)

    def skip_reads(self) -> tuple[Tensor, Tensor]:
        """The linear path's first layer as two reads, (W_a + W_b) of z and -W_b of the latent before it (see
        `_skip`), cached until the weight changes."""
        first = cast(nn.Linear, self.skip[0])

        def fold() -> tuple[Tensor, Tensor]:
            w_a, w_b = first.weight.chunk(2, dim=1)
            return w_a + w_b, -w_b

        return cast(tuple[Tensor, Tensor], self._folded_skip.get((first.weight,), fold))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.cfg.summary_tokens, self.cfg.dim)


def _window_mask(query_at: Tensor, key_at: Tensor, window: int) -> Tensor:
    """bool (Q, K): a query may attend to the keys of the last `window` positions up to its own."""
    offsets = query_at[:, None] - key_at[None]
    return (offsets >= 0) & (offsets < window)
