"""JEPA latent world model: masked-ViT encoder with an EMA target, action-conditioned predictor, heads, decoder.

Stage 1 (`loss(batch, "encoder")`): the online encoder sees observations with ~40% of their
patches replaced by a mask token, the EMA target encoder sees them whole, and a small
predictor maps online tokens to target tokens (L1 on masked patches and summary tokens).
Stage 2 (`"dynamics"`): with the encoder frozen, a causal transformer predicts the next latent
from the history of latents and actions (0.7 teacher forcing + 0.3 open-loop rollout L1), a
reward and a termination head read (z_t, z_t+1), and a decoder learns pictures from
stop-gradient latents. Stage 3 (`"finetune"`) trains all parts together.

A latent is the `summary_tokens` output tokens of the target encoder: compact, so one
imagined step costs a few tokens of the predictor, not a forward pass over the image.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from world_models.base import StepOutput, TrainBatch, WorldModel
from world_models.blocks import Block, CrossBlock, PatchEmbed, grid_positions, rope_angles


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
        context: history steps the dynamics predictor sees.
        action_conditioning: "token" (an action token per step in the sequence) or "cross"
            (the latent cross-attends to the embedded last `action_history` actions).
        action_history: actions the "cross" conditioning attends to.
        rollout_steps: open-loop steps of the rollout loss.
        teacher_forcing_weight: weight of the teacher-forcing L1; the rollout L1 gets 1 minus it.
        decoder_dim: width of the pixel decoder.
    """

    num_actions: int = 4
    frame_size: int = 64
    frame_stack: int = 4
    patch: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    summary_tokens: int = 4
    mask_ratio: float = 0.4
    ema_decay: float = 0.996
    jepa_predictor_depth: int = 2
    predictor_dim: int = 128
    predictor_depth: int = 3
    context: int = 8
    action_conditioning: str = "token"
    action_history: int = 4
    rollout_steps: int = 4
    teacher_forcing_weight: float = 0.7
    decoder_dim: int = 64


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


class TransitionHead(nn.Module):
    """A learnable CLS token attends over (z_t, z_t+1) tokens -> `outputs` logits."""

    def __init__(self, dim: int, heads: int, outputs: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.which = nn.Parameter(torch.randn(2, 1, dim) * 0.02)  # marks tokens of z_t and of z_t+1
        self.attend = CrossBlock(dim, heads)
        self.out = nn.Linear(dim, outputs)

    def forward(self, z: Tensor, z_next: Tensor) -> Tensor:
        """z, z_next: (N, K, dim) -> (N, outputs)."""
        context = torch.cat([z + self.which[0], z_next + self.which[1]], dim=1)  # (N, 2K, dim)
        return self.out(self.attend(self.cls.expand(len(z), -1, -1), context)[:, 0])


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
    """Causal transformer: history of latents and actions -> next latent at every step."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, width = cfg.summary_tokens * cfg.dim, cfg.predictor_dim
        self.inp = nn.Linear(d, width)
        self.action = nn.Embedding(cfg.num_actions, width)
        if cfg.action_conditioning == "cross":
            self.history_pos = nn.Parameter(torch.randn(cfg.action_history, width) * 0.02)
            self.condition = CrossBlock(width, cfg.heads)
        elif cfg.action_conditioning != "token":
            raise ValueError(f"action_conditioning must be 'token' or 'cross', got {cfg.action_conditioning!r}")
        self.blocks = nn.ModuleList(Block(width, cfg.heads) for _ in range(cfg.predictor_depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)

    def forward(self, z: Tensor, actions: Tensor) -> Tensor:
        """z: (B, T, K, dim) latents, actions: (B, T) -> predicted z_t+1 for every t: (B, T, K, dim)."""
        b, t = actions.shape
        x = self.inp(z.flatten(2))  # (B, T, width)
        a = self.action(actions)  # (B, T, width)
        if self.cfg.action_conditioning == "token":
            x = rearrange(torch.stack([x, a], dim=2), "b t two w -> b (t two) w")  # z_0, a_0, z_1, a_1, ...
        else:
            x = x + self._attend_to_actions(x, actions)
        cos, sin = rope_angles(torch.arange(x.shape[1], device=x.device)[:, None], x.shape[-1] // self.cfg.heads)
        for block in self.blocks:
            x = block(x, rope=(cos, sin), causal=True)
        x = self.norm(x)
        if self.cfg.action_conditioning == "token":
            x = x[:, 1::2]  # outputs at the action tokens predict the next latent
        return z + self.out(x).view_as(z)  # residual: predict the change of the latent

    def _attend_to_actions(self, x: Tensor, actions: Tensor) -> Tensor:
        """Each step's latent cross-attends to the embeddings of its last `action_history` actions."""
        k = self.cfg.action_history
        padded = F.pad(actions, (k - 1, 0), value=0)  # (B, T+k-1)
        window = padded.unfold(1, k, 1)  # (B, T, k): actions t-k+1 .. t
        history = self.action(window) + self.history_pos  # (B, T, k, width)
        b, t = actions.shape
        out = self.condition(x.reshape(b * t, 1, -1), history.reshape(b * t, k, -1))
        return out.view(b, t, -1) - x


class JEPAWorldModel(WorldModel):
    """The default mbrl world model (see the module docstring)."""

    def __init__(self, config: JEPAConfig) -> None:
        super().__init__()
        self.config = config
        self.num_actions = config.num_actions
        self.latent_shape = (config.summary_tokens, config.dim)
        self.num_patches = (config.frame_size // config.patch) ** 2
        self.online = Encoder(config)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.jepa_predictor = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.jepa_predictor_depth))
        self.dynamics = Dynamics(config)
        self.reward_head = TransitionHead(config.dim, config.heads, 3)  # logits of clipped reward -1, 0, +1
        self.end_head = TransitionHead(config.dim, config.heads, 2)  # logits of game over, life loss
        self.decoder = Decoder(config)

    # ---- the WorldModel interface --------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        b = frames.shape[0]
        tokens = self.target(frames.flatten(0, 1))
        return tokens[:, : self.config.summary_tokens].unflatten(0, (b, -1))

    @torch.no_grad()
    def observe(self, latents: Tensor, actions: Tensor) -> dict[str, Tensor]:
        keep = self.config.context
        return {"latents": _last(latents, keep), "actions": _last(actions, keep - 1)}

    @torch.no_grad()
    def step(self, state: dict[str, Tensor], action: Tensor) -> StepOutput:
        latents = state["latents"]
        actions = torch.cat([state["actions"], action[:, None]], dim=1)  # (B, T)
        z_next = self.dynamics(latents, actions)[:, -1]
        reward, cont, life_loss = self.transition(latents[:, -1], z_next)
        keep = self.config.context
        history = torch.cat([latents, z_next[:, None]], dim=1)
        new_state = {"latents": _last(history, keep), "actions": _last(actions, keep - 1)}
        return StepOutput(new_state, z_next, reward, cont, life_loss)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        lead = latents.shape[: -len(self.latent_shape)]
        return self.decoder(latents.reshape(-1, *self.latent_shape)).reshape(*lead, *self._frame_shape)

    def transition(self, z: Tensor, z_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Expected clipped reward, continue probability and life-loss probability of (z, z_next): (N,) each."""
        probs = self.reward_head(z, z_next).softmax(-1)
        reward = probs[:, 2] - probs[:, 0]
        ends = torch.sigmoid(self.end_head(z, z_next))
        return reward, 1.0 - ends[:, 0], ends[:, 1]

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

    def _encoder_loss(self, batch: TrainBatch) -> dict[str, Tensor]:
        obs = batch.frames.flatten(0, 1)  # (N, C, H, W), every observation of every window
        mask = self.random_mask(len(obs))
        with torch.no_grad():
            target = self.target(obs)
        x = self.online(obs, mask)
        for block in self.jepa_predictor:
            x = block(x)
        k = self.config.summary_tokens
        masked = F.l1_loss(x[:, k:][mask], target[:, k:][mask])
        summary = F.l1_loss(x[:, :k], target[:, :k])
        return {"total": masked + summary, "jepa_masked": masked, "jepa_summary": summary,
                "target_std": target[:, :k].std(dim=0).mean().detach()}

    def _dynamics_loss(self, batch: TrainBatch, finetune: bool) -> dict[str, Tensor]:
        b, steps = batch.actions.shape
        z = self.encode(batch.frames)  # (B, L+1, K, dim) targets, from the target encoder
        if finetune:  # inputs from the online encoder, so the dynamics loss shapes it too
            z_in = self.online(batch.frames.flatten(0, 1))[:, : self.config.summary_tokens].unflatten(0, (b, -1))
        else:
            z_in = z
        pred = self.dynamics(z_in[:, :-1], batch.actions)  # (B, L, K, dim) teacher forcing
        teacher = F.l1_loss(pred, z[:, 1:])

        # open loop: from a real context, feed back predictions for rollout_steps steps
        start = max(1, steps + 1 - self.config.rollout_steps)
        history, rolled, ctx = z_in[:, :start], [], self.config.context
        for t in range(start, steps + 1):
            nxt = self.dynamics(_last(history, ctx), batch.actions[:, max(0, t - ctx) : t])
            rolled.append(nxt[:, -1])
            history = torch.cat([history, nxt[:, -1:]], dim=1)
        rollout = F.l1_loss(torch.stack(rolled, dim=1), z[:, start:])

        # heads read real pairs and pairs with a predicted next latent (what imagination gives them)
        z_t = torch.cat([z_in[:, :-1], z_in[:, :-1]]).flatten(0, 1)
        z_n = torch.cat([z[:, 1:], pred.detach()]).flatten(0, 1)
        reward_class = (batch.rewards.sign().long() + 1).repeat(2, 1).flatten()
        reward = F.cross_entropy(self.reward_head(z_t, z_n), reward_class)
        ends = torch.stack([batch.terminated, batch.life_loss], dim=-1).float().repeat(2, 1, 1).flatten(0, 1)
        end = F.binary_cross_entropy_with_logits(self.end_head(z_t, z_n), ends)

        newest = batch.frames[:, :, -1].flatten(0, 1).float() / 255.0  # (N, H, W)
        decoded = self.decoder(z.flatten(0, 1).detach())
        pixels = F.mse_loss(decoded, newest)

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

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """The parameters a stage trains."""
        if stage == "encoder":
            modules: list[nn.Module] = [self.online, self.jepa_predictor]
        elif stage == "dynamics":
            modules = [self.dynamics, self.reward_head, self.end_head, self.decoder]
        elif stage == "finetune":
            modules = [self.online, self.jepa_predictor, self.dynamics, self.reward_head, self.end_head, self.decoder]
        else:
            raise ValueError(f"unknown stage {stage!r}")
        return [p for m in modules for p in m.parameters()]


def _last(x: Tensor, n: int) -> Tensor:
    """The last `n` steps of (B, T, ...) (none for n = 0)."""
    return x[:, max(0, x.shape[1] - n) :]
