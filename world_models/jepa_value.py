"""Value-aware JEPA: a jointly trained latent world model whose imagination serves decisions.

One network, trained end to end on the agent's own replay for the whole run (one loss, one
optimiser, `loss(batch, "joint")`):

- **Encoder**: a conv stem (Nature-CNN sized) over the 4-frame stack, giving a spatial latent, a
  (C, h, w) feature map (64 x 4 x 4 at 64x64 frames), so where things are stays in the latent.
  An EMA copy of the whole network (encoder, projection, value head) is the target.
- **Predictor**: an action-conditioned conv transition on the feature map (the action as one-hot
  planes), residual. It is unrolled `unroll` steps open loop from the encoded first observation,
  and each predicted latent is pulled towards the EMA target's latent of the real frame (squared
  error relative to that of copying the target's previous latent, so the loss has the scale of what
  changes in a step; latents min-max scaled per sample, as in SPR): the JEPA objective applied to
  the dynamics. That unroll starts from the encoded latent with its gradient stopped, so the
  consistency loss trains the predictor and the encoder learns from TD and the event heads.
- **Heads on every unrolled latent**: the event head (reward class -1 / 0 / +1, game over, life
  loss of the transition into the latent) and the value head (Q per action) with an n-step TD
  target from the EMA target network, truncated at the window's end and at lives lost, so
  reward and TD gradients reach the encoder through the unroll.
- **Augmentation** (training only): random shifts of up to `shift` pixels and a random intensity
  scale per window, the same for the online and the target network's observations of a window;
  acting, `encode` and imagination see frames as they are.
- **Decoder** (pictures only): transposed convs from the target latent, on stop-gradient latents.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mbrl.world_models.base import StepOutput, TrainBatch, WorldModel


@dataclass(frozen=True)
class ValueJEPAConfig:
    """Value-aware JEPA settings.

    Attributes:
        num_actions: size of the discrete action space (set from the env).
        frame_size: observations are frame_stack x frame_size x frame_size.
        frame_stack: frames per observation (the encoder's input channels).
        channels: output channels of the encoder's three convs; the last is the latent's C.
        hidden: width of the value, event and projection MLPs.
        unroll: K, predictor steps unrolled open loop in training.
        return_steps: n of the n-step TD target (cut at the window's end: training windows hold
            max(unroll, return_steps) transitions).
        discount: per-step discount of the value.
        target_decay: EMA of the target network, target <- decay * target + (1 - decay) * online.
        consistency_weight: weight of the unrolled latents' squared error to the target latents, relative to
            copying the previous target latent. It trains the transition alone (its unroll starts from the
            encoded latent with the gradient stopped); the ratio divides by a step's small change of the latent,
            so its gradient is large, and at a weight much above the default the whole-model gradient clip
            scales the other losses' updates down.
        unroll_decay: weight of the k-th unrolled step's losses relative to the encoded latent's, unroll_decay^k.
        event_weight: weight of the event head's losses.
        value_weight: weight of the TD loss.
        shift: random shift augmentation, in pixels (0: none).
        intensity: std of the random intensity scale 1 + intensity * clip(N(0, 1), -2, 2) (0: none).
    """

    num_actions: int = 4
    frame_size: int = 64
    frame_stack: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    hidden: int = 256
    unroll: int = 5
    return_steps: int = 10
    discount: float = 0.99
    target_decay: float = 0.99
    consistency_weight: float = 0.01
    unroll_decay: float = 0.5
    event_weight: float = 1.0
    value_weight: float = 1.0
    shift: int = 4
    intensity: float = 0.05

    ranges: ClassVar[dict[str, str]] = {
        "num_actions": "[1, 1024]", "frame_size": "[36, 256]", "frame_stack": "[1, 16]", "channels": "[1, 1024]",
        "hidden": "[1, 8192]", "unroll": "[1, 64]", "return_steps": "[1, 256]", "discount": "[0, 1]",
        "target_decay": "[0, 1)", "consistency_weight": "[0, inf)", "unroll_decay": "(0, 1]",
        "event_weight": "[0, inf)", "value_weight": "[0, inf)", "shift": "[0, 32]", "intensity": "[0, 1]"}
    """Every size's range (the encoder needs frames of 36 pixels or more), checked by mbrl.core.config.from_dict (a
    world model imports nothing of mbrl): YAML, `--set` and checkpoints' metadata."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # a checkpoint's JSON gives a list
        if len(self.channels) != 3:
            raise ValueError(f"channels needs 3 entries, got {self.channels}")
        if self.unroll < 1 or self.return_steps < 1:
            raise ValueError("unroll and return_steps must be >= 1")
        if not 0 < self.unroll_decay <= 1:
            raise ValueError(f"unroll_decay must be in (0, 1], got {self.unroll_decay}")
        if not 0 <= self.target_decay < 1:
            raise ValueError(f"target_decay must be in [0, 1), got {self.target_decay}")

    @property
    def window(self) -> int:
        """Transitions per training window."""
        return max(self.unroll, self.return_steps)


CHANGE_FLOOR = 1e-6
"""The smallest mean squared change of a step's target latent that the consistency error is measured against."""

TARGET_PARTS = ("encoder", "q_hidden", "q_out")
"""The parts the EMA target network copies: the encoder and the value head (q_hidden, then q_out)."""

DECODER_SAMPLES = 8
"""Windows of a batch whose first target latent trains the decoder (its transposed convs cost more than the encoder)."""


def _conv_out(size: int) -> int:
    """Side of the feature map after the encoder's convs (kernel 8 stride 4, 4 / 2, 3 / 1)."""
    return ((size - 8) // 4 + 1 - 4) // 2 + 1 - 2


def renormalize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Each latent (N, C, h, w) min-max scaled to [0, 1] over its features (as SPR does), so the consistency
    error has one scale for every latent and the predictor cannot shrink latents to agree with them."""
    flat = z.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(z)


class Encoder(nn.Module):
    """uint8 or float (N, S, H, W) frame stacks -> latents (N, C, h, w), non-negative."""

    def __init__(self, cfg: ValueJEPAConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.net = nn.Sequential(nn.Conv2d(cfg.frame_stack, c1, 8, 4), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2), nn.ReLU(),
                                 nn.Conv2d(c2, c3, 3, 1), nn.ReLU())

    def forward(self, obs: Tensor) -> Tensor:
        return renormalize(self.net(obs.float().mul_(1 / 255.0) if obs.dtype == torch.uint8 else obs))


class Transition(nn.Module):
    """(z (N, C, h, w), actions (N,)) -> next latent (N, C, h, w): residual convs on the map and action planes."""

    def __init__(self, cfg: ValueJEPAConfig) -> None:
        super().__init__()
        c = cfg.channels[-1]
        self.num_actions = cfg.num_actions
        last = nn.Conv2d(c, c, 3, padding=1)
        for param in last.parameters():  # a new predictor copies its latent (z in [0, 1] maps to itself) and learns
            nn.init.zeros_(param)  # what changes: the baseline its consistency error is measured against
        self.net = nn.Sequential(nn.Conv2d(c + cfg.num_actions, c, 3, padding=1), nn.ReLU(), last)

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        planes = F.one_hot(action.long(), self.num_actions).to(z.dtype)[:, :, None, None]  # (N, A, 1, 1)
        planes = planes.expand(-1, -1, *z.shape[-2:])
        return renormalize(F.relu(z + self.net(torch.cat([z, planes], dim=1))))


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Decoder(nn.Module):
    """latents (N, C, h, w) -> the newest frame (N, H, W) in [0, 1]."""

    def __init__(self, cfg: ValueJEPAConfig) -> None:
        super().__init__()
        c = cfg.channels[-1]
        self.size = cfg.frame_size
        self.net = nn.Sequential(nn.ConvTranspose2d(c, 64, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1),
                                 nn.ReLU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(16, 1, 4, 2, 1))

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)  # (N, 1, 16 h, 16 w)
        return torch.sigmoid(F.interpolate(out, size=(self.size, self.size), mode="bilinear")[:, 0])


def augment(obs: Tensor, shift: int, intensity: float) -> Tensor:
    """Random shift (replicate-pad by `shift`, crop back at a random offset) and intensity scale, per sample and
    the same for all of a sample's channels: a window of observations given as channels moves as one, so that
    the predictor's targets are the same view of the scene as its input.

    Args:
        obs: uint8 (N, C, H, W).

    Returns:
        float (N, C, H, W) in [0, ~1.1].
    """
    x = obs.float().mul_(1 / 255.0)
    n, _, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        dy, dx = torch.randint(0, 2 * shift + 1, (2, n)).tolist()
        # a slice per sample: faster on the CPU than one gather over (N, C, H, W) indices (5 ms against 15 for
        # 32 x 28 x 64 x 64)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if intensity > 0:
        noise = torch.randn(n, 1, 1, 1, device=x.device)
        x = x * (1.0 + intensity * noise.clamp(-2, 2))
    return x


def n_step_targets(rewards: Tensor, done: Tensor, bootstrap: Tensor, discount: float, steps: int) -> Tensor:
    """n-step TD targets at every start t of a window, cut at the window's end.

    target_t = sum_{i < n_t} discount^i r_{t+i} (counted while no `done` came before it)
               + discount^{n_t} (no done in t .. t+n_t-1) bootstrap_{t+n_t},   n_t = min(steps, L - t)

    Args:
        rewards: (B, L) rewards of transitions 0 .. L-1.
        done: bool (B, L) transition t ends the value's episode (a life lost or the game over).
        bootstrap: (B, L+1) the target network's value of observations 0 .. L.
        discount: per-step discount.
        steps: n.

    Returns:
        (B, L) targets for starts 0 .. L-1.
    """
    b, length = rewards.shape
    alive = (~done).float()
    targets = torch.empty(b, length, device=rewards.device)
    for t in range(length):  # L <= ~10: a short loop over starts; each start is batched over B and its n steps
        n = min(steps, length - t)
        keep = torch.cumprod(torch.cat([torch.ones(b, 1, device=rewards.device), alive[:, t:t + n]], 1), 1)  # (B, n+1)
        powers = discount ** torch.arange(n + 1, device=rewards.device, dtype=torch.float32)
        paid = (powers[:n] * keep[:, :n] * rewards[:, t:t + n]).sum(1)
        targets[:, t] = paid + powers[n] * keep[:, n] * bootstrap[:, t + n]
    return targets


def _weighted(per_step: Tensor, weights: Tensor) -> Tensor:
    """The weighted mean of per-step losses (K,): weights (K,) normalised to sum to 1."""
    return (per_step * weights).sum() / weights.sum()


class ValueJEPAWorldModel(WorldModel):
    """The jointly trained, value-aware JEPA (see the module docstring); latent (C, h, w)."""

    has_value = True

    def __init__(self, config: ValueJEPAConfig) -> None:
        super().__init__()
        self.config = config
        self.num_actions = config.num_actions
        side = _conv_out(config.frame_size)
        if side < 1:
            raise ValueError(f"value_model.frame_size {config.frame_size} is too small for the encoder (>= 36)")
        self.latent_shape = (config.channels[-1], side, side)
        features = config.channels[-1] * side * side
        self.encoder = Encoder(config)
        self.transition = Transition(config)
        self.q_hidden = nn.Sequential(nn.Flatten(), nn.Linear(features, config.hidden))
        self.q_out = nn.Sequential(nn.ReLU(), nn.Linear(config.hidden, config.num_actions))
        self.event_head = _mlp(features, config.hidden, 5)  # reward -1 / 0 / +1 logits, game over, life loss
        self.decoder = Decoder(config)
        self.target = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in TARGET_PARTS})
        self.target.requires_grad_(False)

    # ---- the WorldModel interface ---------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 (B, T, S, H, W) -> target latents (B, T, C, h, w)."""
        b = frames.shape[0]
        z = self.target["encoder"](rearrange(frames, "b t s h w -> (b t) s h w"))
        return rearrange(z, "(b t) c h w -> b t c h w", b=b)

    def observe(self, latents: Tensor, actions: Tensor) -> Tensor:
        """The transition is Markov in the latent (the frame stack carries motion): the state is the last latent."""
        return latents[:, -1]

    def step(self, state: Tensor, action: Tensor, latent: bool = True) -> StepOutput:
        z = self.transition(state, action.to(state.device))
        reward, cont, life_loss = self.events(z)
        return StepOutput(z, z, reward, cont, life_loss)

    def events(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """latents (N, C, h, w) -> expected clipped reward, continue and life-loss probabilities (N,) each of the
        transition into them, corrected for the event rates the head was trained under (`event_shift`)."""
        logits = self.event_head(z) + self.event_shift
        reward = (logits[:, :3].softmax(-1) * torch.tensor([-1.0, 0.0, 1.0], device=z.device)).sum(-1)
        return reward, 1 - torch.sigmoid(logits[:, 3]), torch.sigmoid(logits[:, 4])

    def read_events(self, z: Tensor, z_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The event head reads the latent a transition leads to alone."""
        return self.events(z_next)

    def q_values(self, latents: Tensor) -> Tensor:
        """latents (N, C, h, w) -> Q (N, A) of the online value head."""
        return self.q_out(self.q_hidden(latents))

    def value(self, latents: Tensor) -> Tensor:
        """latents (N, C, h, w) -> (N,) the value max_a Q: the return expected from there (till a life is lost)."""
        return self.q_values(latents).max(-1).values

    @torch.no_grad()
    def act_values(self, frames: Tensor) -> Tensor:
        """uint8 (N, S, H, W) real frame stacks -> Q (N, A) of the online network, as the agent acts on them."""
        return self.q_values(self.encoder(frames))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        lead = latents.shape[: -3]
        out = self.decoder(latents.reshape(-1, *self.latent_shape))
        return out.reshape(*lead, *out.shape[-2:])

    # ---- training -------------------------------------------------------------------------

    def loss(self, batch: TrainBatch, stage: str = "joint") -> dict[str, Tensor]:
        """The joint loss of `B` windows of L >= `config.window` transitions; "total" is minimised.

        Every per-step part is a mean over its steps weighted by unroll_decay^k (k = 0 for the encoded latent, k
        for the k-th unrolled one), so the real latent the agent acts on weighs most. Parts: "consistency" (the
        squared error of each unrolled latent to the target's latent of the real observation, relative to that
        of copying the target's previous latent: 1 = no better than copying), "td" (Huber of Q of
        the action taken to the n-step target, on the encoded and every unrolled latent), "reward", "end",
        "life" (event head on the unrolled latents), "decoder" (pictures, stop-gradient).
        """
        if stage != "joint":
            raise ValueError(f"the value-aware JEPA trains in one stage, 'joint'; got {stage!r}")
        cfg = self.config
        frames = batch.frames  # (B, L+1, S, H, W) uint8
        b, length = batch.actions.shape
        k_steps = min(cfg.unroll, length)
        # the target network reads only the observations some loss needs: o_0..o_K (consistency; o_1 also
        # teaches the decoder) and the bootstrap observation of each start t <= K (t + n_t)
        needed = sorted({*range(k_steps + 1), *(t + min(cfg.return_steps, length - t) for t in range(k_steps + 1)
                                               if t < length)})
        at = {t: i for i, t in enumerate(needed)}
        views = augment(rearrange(frames[:, needed], "b t s h w -> b (t s) h w"), cfg.shift, cfg.intensity)
        views = rearrange(views, "b (t s) h w -> b t s h w", t=len(needed))  # one shift per window
        with torch.no_grad():
            targets = self.target["encoder"](rearrange(views, "b t s h w -> (b t) s h w"))
            projected = self.target["q_hidden"](targets)
            bootstrap = torch.zeros(b, length + 1, device=frames.device)
            bootstrap[:, needed] = self.target["q_out"](projected).max(-1).values.view(b, len(needed))
            done = batch.terminated | batch.life_loss
            td_target = n_step_targets(batch.rewards, done, bootstrap, cfg.discount, cfg.return_steps)
            targets = targets.view(b, len(needed), *self.latent_shape)
        z = self.encoder(views[:, at[0]])  # (B, C, h, w)
        # the consistency loss's own unroll, from the encoded latent with its gradient stopped: it shapes the
        # transition; TD and the event heads shape the encoder (and the transition) through the other unroll
        zc = z.detach()
        q_taken, consistency, event_logits = [], [], []
        for k in range(k_steps + 1):
            if k > 0:
                target, before = targets[:, at[k]].flatten(1), targets[:, at[k - 1]].flatten(1)
                # what copying the last latent costs, floored for windows where nothing moves
                change = (target - before).pow(2).mean().clamp_min(CHANGE_FLOOR)
                consistency.append((zc.flatten(1) - target).pow(2).mean() / change)
                event_logits.append(self.event_head(z))
            if k < length:
                q_taken.append(self.q_values(z).gather(1, batch.actions[:, k : k + 1])[:, 0])
            if k < k_steps:
                z = self.transition(z, batch.actions[:, k])
                zc = self.transition(zc, batch.actions[:, k])
        decay = cfg.unroll_decay ** torch.arange(k_steps + 1, device=frames.device, dtype=torch.float32)
        per_start = F.smooth_l1_loss(torch.stack(q_taken, 1), td_target[:, : len(q_taken)], reduction="none").mean(0)
        td = _weighted(per_start, decay[: len(q_taken)])
        logits = torch.stack(event_logits, 1)  # (B, K, 5)
        reward_class = batch.rewards[:, :k_steps].sign().long() + 1
        reward = _weighted(F.cross_entropy(logits[..., :3].transpose(1, 2), reward_class, reduction="none").mean(0),
                           decay[:k_steps])
        end, life = (_weighted(F.binary_cross_entropy_with_logits(logits[..., i], flag[:, :k_steps].float(),
                                                                  reduction="none").mean(0), decay[:k_steps])
                     for i, flag in ((3, batch.terminated), (4, batch.life_loss)))
        pictures = slice(0, DECODER_SAMPLES)  # pictures only: a few samples teach the decoder as well as all
        decoder = F.mse_loss(self.decoder(targets[pictures, at[1]]), views[pictures, at[1], -1].clamp(0, 1))
        consistency_loss = _weighted(torch.stack(consistency), decay[:k_steps])
        total = (cfg.consistency_weight * consistency_loss + cfg.value_weight * td
                 + cfg.event_weight * (reward + end + life) + decoder)
        return {"total": total, "consistency": consistency_loss, "td": td, "reward": reward, "end": end,
                "life": life, "decoder": decoder}

    @torch.no_grad()
    def collapse(self, frames: Tensor) -> dict[str, Tensor]:
        """How spread the target latents of uint8 (N, S, H, W) observations are: "latent_std" (mean std per
        feature) and "effective_rank" (exp of the entropy of the normalised singular values; 1 = collapsed)."""
        flat = self.target["encoder"](frames).flatten(1)
        spectrum = torch.linalg.svdvals(flat - flat.mean(0))
        p = spectrum / spectrum.sum().clamp_min(1e-12)
        return {"latent_std": flat.std(0).mean(), "effective_rank": torch.exp(-(p * p.clamp_min(1e-12).log()).sum())}

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- decay * target + (1 - decay) * online, for the encoder and the value head."""
        decay = self.config.target_decay
        for name in TARGET_PARTS:
            for target, online in zip(self.target[name].parameters(), getattr(self, name).parameters(), strict=True):
                target.lerp_(online, 1 - decay)

    def parameter_groups(self, stage: str = "joint") -> list[nn.Parameter]:
        """What the joint optimiser trains: every part but the target network."""
        return [p for name, p in self.named_parameters() if not name.startswith("target.")]

