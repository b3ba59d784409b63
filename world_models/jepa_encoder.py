"""The JEPA's observation side: the ViT encoder, the parts of its masked stage-1 objective, the pixel decoder.

Stage 1 (`JEPAWorldModel.loss(batch, "encoder")`): the online encoder sees an observation with
`mask_ratio` of its patches replaced by a mask token (`random_mask`), the EMA target encoder sees it
whole. A predictor that reads only the online summary tokens and one positional query per patch
(`predict_targets`: what it says about the patches must pass through the latent) predicts the target's
summary tokens (L1) and, at every patch, the patch's normalised pixels and frame differences
(`motion_targets`, MSE through a linear pixel head), so that a moving 1-pixel ball weighs as much as a
brick wall. The decoder learns pictures from stop-gradient latents in stages 2 and 3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mbrl.world_models.base import TrainBatch
from mbrl.world_models.blocks import (
    Block,
    CrossBlock,
    PatchEmbed,
    grid_positions,
    patchify,
    rope_angles,
    update_running_stats,
)
from mbrl.world_models.heads import event_losses

if TYPE_CHECKING:
    from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel

PIXEL_EPS = 1e-3
"""Added to a patch's pixel variance before normalising it, so flat patches give ~0, not noise."""


class Encoder(nn.Module):
    """ViT over one observation: (N, C, H, W) uint8 -> tokens (N, K + P, dim), K summary tokens first."""

    rope_cos: Tensor
    rope_sin: Tensor

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


def random_mask(n: int, patches: int, ratio: float, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> Tensor:
    """bool (n, patches) with exactly round(ratio * patches) patches masked per observation, drawn at random."""
    count = round(ratio * patches)
    scores = torch.rand(n, patches, generator=generator, device=device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < count


def predict_targets(blocks: nn.ModuleList, queries: Tensor, online: Tensor, encoder: Encoder) -> Tensor:
    """The stage-1 predictor: online tokens (N, K+P, dim) -> predicted target tokens (N, K+P, dim).

    It reads only the K online summary tokens; the patch tokens are replaced by `queries` (P, dim), one per
    patch, which with the encoder's rotary positions say which patch to predict.
    """
    k = encoder.summary.shape[0]
    x = torch.cat([online[:, :k], queries.expand(len(online), -1, -1)], dim=1)  # (N, K+P, dim)
    rope = (encoder.rope_cos, encoder.rope_sin)
    for block in blocks:
        x = block(x, rope=rope)
    return x


def motion_targets(obs: Tensor, patch: int) -> Tensor:
    """uint8 (N, C, H, W) -> what stage 1 predicts at each patch (N, P, (2C - 1) * patch^2): its pixels, then the
    differences of consecutive frames of the stack, each part normalised per patch on its own."""
    x = obs.float() / 255.0
    patches = [patchify(part, patch) for part in (x, x[:, 1:] - x[:, :-1])]
    return torch.cat([(x - x.mean(-1, keepdim=True)) * (x.var(-1, keepdim=True) + PIXEL_EPS).rsqrt()
                      for x in patches], dim=-1)


def encoder_loss(model: JEPAWorldModel, batch: TrainBatch) -> dict[str, Tensor]:
    """The stage-1 loss of `model`'s parts (also part of stage 3): predicted target summary tokens (L1) and every
    patch's motion targets (MSE) from the online summary tokens of masked observations, plus the event loss. In
    training it moves the running statistics of the latents (the target's summary tokens)."""
    cfg, k = model.config, model.config.summary_tokens
    obs = batch.frames.flatten(0, 1)  # (N, C, H, W), every observation of every window
    mask = random_mask(len(obs), model.num_patches, cfg.mask_ratio, device=model.online.summary.device)
    with torch.no_grad():
        target = model.target(obs)
        if model.training:
            update_running_stats(model.latent_mean, model.latent_var, model.stats_count, target[:, :k],
                                 cfg.stats_momentum)
    online = model.online(obs, mask)
    x = predict_targets(model.jepa_predictor, model.patch_queries, online, model.online)  # (N, K+P, dim)
    patches = F.mse_loss(model.pixel_head(x[:, k:].flatten(0, 1)), motion_targets(obs, cfg.patch).flatten(0, 1))
    summary = F.l1_loss(x[:, :k], target[:, :k])
    total = patches + summary
    parts = {"jepa_patches": patches, "jepa_summary": summary, "target_std": target[:, :k].std(dim=0).mean().detach()}
    if cfg.event_weight:  # the event head reads each observation but a window's first: (B, L, K * dim) -> (B, L, 5)
        logits = model.event_head(online[:, :k].unflatten(0, batch.frames.shape[:2])[:, 1:].flatten(2))
        reward, end = event_losses(logits[..., :3].flatten(0, 1), logits[..., 3:].flatten(0, 1), batch)
        events = reward + end
        total = total + cfg.event_weight * events
        parts["events"] = events
    return {"total": total, **parts}


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
