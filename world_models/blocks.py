"""Layers shared by the world-model families: RoPE attention, transformer blocks, patch embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


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
    """Rotate channel pairs of `x` (..., N, dim) by the angles of each of its N positions."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


class Attention(nn.Module):
    """Multi-head self-attention; optional rotary positions and causal mask.

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

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, causal: bool = False, mask: Tensor | None = None
    ) -> Tensor:
        """x: (B, N, dim) -> (B, N, dim). `rope`: cos, sin (N, head_dim/2); `mask`: bool (N, N), True = may attend."""
        q, k, v = self.project(x, rope)
        return self.attend(q, k, v, causal, mask)

    def project(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, N, dim) -> queries, keys, values (B, heads, N, head_dim), queries and keys rotated by `rope`."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False, mask: Tensor | None = None) -> Tensor:
        """Queries (B, heads, Q, d) over keys and values (B, heads, N, d) -> (B, Q, dim)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))


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
        x = x + self.attn(self.norm1(x), rope=rope, causal=causal, mask=mask)
        return x + self.mlp(self.norm2(x))

    def forward_cached(self, x: Tensor, rope: tuple[Tensor, Tensor], past_k: Tensor, past_v: Tensor,
                       mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """New tokens x (B, N, dim) attend to cached keys and values (B, heads, P, d) and to each other.

        `mask`: bool broadcastable to (B, heads, N, P + N), True = may attend. Returns the block's
        output (B, N, dim) and the keys and values of the cached and the new tokens (B, heads, P + N, d).
        """
        q, k, v = self.attn.project(self.norm1(x), rope)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        x = x + self.attn.attend(q, k, v, mask=mask)
        return x + self.mlp(self.norm2(x)), k, v


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
