"""Layers shared by the world-model families: running statistics, RoPE attention, blocks, patch embedding."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

STATS_EPS = 1e-6
"""Added to a running variance before standardising by it (latents, head inputs)."""


@torch.no_grad()
def update_running_stats(mean: Tensor, var: Tensor, count: Tensor, x: Tensor, momentum: float) -> None:
    """Move running per-feature `mean` and `var` towards those of a batch x (N, *features), in place; the first
    updates average exactly (rate 1 / (count + 1) until it falls below `momentum`)."""
    rate = max(momentum, 1.0 / (float(count) + 1.0))
    mean.lerp_(x.mean(0), rate)
    var.lerp_(x.var(0, correction=0), rate)
    count += 1


def standardize(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """x (..., *features) standardised per feature by running statistics (see `update_running_stats`)."""
    return (x - mean) * (var + STATS_EPS).rsqrt()


def tensor_versions(tensors: Iterable[Tensor]) -> tuple[tuple[int, int, torch.dtype], ...]:
    """Where each tensor lives, how often it was changed in place (optimiser steps, loading) and its dtype:
    equal tuples mean unchanged tensors."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


class Folded:
    """A tensor computed from parameters and buffers (e.g. weights with a normalisation folded in), computed
    again only when one of them changes: their version counters move with every in-place update
    (optimiser steps, loading) and their storage with a move to another device."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: Any = None

    def get(self, sources: tuple[Tensor, ...], compute: Callable[[], Any]) -> Any:
        key = tensor_versions(sources)
        if self._key != key:
            with torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value


def linear_pair(x: Tensor, y: Tensor, w_x: Tensor, w_y: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ w_x.T + y @ w_y.T (+ bias) for x, y (..., features): a linear layer over [x, y] without building it."""
    lead = x.shape[:-1]
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    out = torch.mm(x, w_x.T) if bias is None else torch.addmm(bias, x, w_x.T)
    return torch.addmm(out, y, w_y.T).view(*lead, -1)  # not in place: torch's FLOP counter skips addmm_


def rope_angles(positions: Tensor, dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of rotary angles for integer `positions`.

    Args:
        positions: (N, A) positions along A axes (A=1 for time, A=2 for image rows and columns).
        dim: head dimension; each axis rotates dim // A channels (must be even per axis).

    Returns:
        cos, sin: (N, dim // 2) each.
    """
    axes = positions.shape[-1]
    per_axis = dim // axes
    if per_axis % 2 or per_axis * axes != dim:
        raise ValueError(f"head dim {dim} must split into {axes} even parts")
    freqs = base ** (-torch.arange(0, per_axis, 2, dtype=torch.float32, device=positions.device) / per_axis)
    angles = positions.float()[..., None] * freqs  # (N, A, per_axis/2)
    angles = angles.flatten(-2)  # (N, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (x[2i], x[2i+1]) of `x` (..., N, dim) by the angles of each of its N positions.

    One complex multiplication per pair, (x1 + i x2)(cos + i sin), instead of four real ones and a stack
    (in float32 for half-precision inputs, which have no complex type on every device). Compiled, the real
    ones: torch's compiler generates no code for complex numbers and would call eager kernels for them.
    """
    if torch.compiler.is_compiling():
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.complex(cos.float(), sin.float())).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention; optional rotary positions and causal mask: `project` the tokens, then
    `attend` (or `attend_few`), so that a caller can keep the keys and values (`Block.forward_kv`).

    Args:
        dim: model width.
        heads: attention heads (dim must divide evenly).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def project(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, N, dim) -> queries, keys, values (B, heads, N, head_dim), queries and keys rotated by `rope`."""
        b, n, _ = x.shape  # view and permute: einops' parsing costs as much as a small step's projection
        qkv = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        if rope is None:
            return qkv[0], qkv[1], qkv[2]
        q, k = apply_rope(qkv[:2], *rope)  # both in one rotation
        return q, k, qkv[2]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False, mask: Tensor | None = None) -> Tensor:
        """Queries (B, heads, Q, d) over keys and values (B, heads, N, d) -> (B, Q, dim); `mask`: bool (Q, N) or
        broadcastable to (B, heads, Q, N), True = may attend."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(out.transpose(1, 2).flatten(2))  # (B, N, heads * d)

    def attend_few(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """`attend` for a few queries per row over a few keys: queries (B, heads, Q, d) over keys and values
        (B, heads, N, d) with an additive `bias` (B, 1, Q, N) (0 = may attend, -inf = may not) -> (B, Q, dim).

        Elementwise products and sums instead of batched matrix products, and the softmax over the keys
        taken along a long axis: with a query per row and 8 keys (imagination steps) this takes 0.23 ms
        where two batched products and a softmax over the last axis take 0.34 (B=256, 4 heads, 2 threads).
        """
        b, heads, queries, d = q.shape
        scores = (q[:, :, :, None] * k[:, :, None]).sum(-1).mul_(d**-0.5).add_(bias)  # (B, heads, Q, N)
        weights = scores.view(-1, k.shape[2]).t().softmax(0).t().view(scores.shape)
        out = (weights[..., None] * v[:, :, None]).sum(-2)  # (B, heads, Q, d)
        return self.out(out.transpose(1, 2).flatten(2))  # (B, Q, heads * d)


class CrossAttention(nn.Module):
    """Queries attend to a context: (B, Q, dim), (B, N, dim) -> (B, Q, dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        q = rearrange(self.q(queries), "b q (h d) -> b h q d", h=self.heads)
        k, v = rearrange(self.kv(context), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(out, "b h q d -> b q (h d)"))


class MLP(nn.Sequential):
    """dim -> hidden -> dim with GELU."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, causal: bool = False, mask: Tensor | None = None
    ) -> Tensor:
        return self.forward_kv(x, rope, causal, mask)[0]

    def forward_kv(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, causal: bool = False, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`forward`, also returning the attention's keys and values (B, heads, N, d) (for a key/value cache)."""
        q, k, v = self.attn.project(self.norm1(x), rope)
        x = x + self.attn.attend(q, k, v, causal, mask)
        return x + self.mlp(self.norm2(x)), k, v

    def forward_ring(self, x: Tensor, rope: tuple[Tensor, Tensor], keys: Tensor, values: Tensor, slots: Tensor,
                     bias: Tensor) -> Tensor:
        """New tokens x (B, N, dim) write their keys and values into ring slots, then attend to the ring.

        `keys`, `values`: (B, heads, R, d) ring buffers, updated in place at `slots` (B, N); `bias`:
        (B, 1, N, R), 0 where a new token may attend to a slot and -inf where not (see `Attention.attend_few`).
        """
        q, k, v = self.attn.project(self.norm1(x), rope)
        b, heads, ring, d = keys.shape
        head_rows = torch.arange(b * heads, device=x.device).view(b, heads, 1) * ring  # index_copy_ beats scatter_
        rows = (head_rows + slots[:, None]).view(-1)  # (B * heads * N) rows of keys.view(-1, d) to write
        keys.view(-1, d).index_copy_(0, rows, k.reshape(-1, d))
        values.view(-1, d).index_copy_(0, rows, v.reshape(-1, d))
        x = x + self.attn.attend_few(q, keys, values, bias)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: queries attend to a context, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        x = queries + self.attn(self.norm_q(queries), self.norm_c(context))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Per-step patch embedding (time kernel 1): (B, C, H, W) -> (B, H/p * W/p, dim) and the patch grid."""

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


def patchify(x: Tensor, patch: int) -> Tensor:
    """Pixels of non-overlapping patches, in PatchEmbed's order: (B, C, H, W) -> (B, H/p * W/p, C * p * p)."""
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch, p2=patch)


def grid_positions(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(height * width, 2) row and column of each patch, row-major."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)
