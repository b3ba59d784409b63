"""`mbrl eval-world-model`: what a trained world model knows, measured on held-out episodes.

- RAM probes: ridge regressions from latents to console RAM bytes (Breakout: paddle x, ball x,
  ball y), fit on encoded observations of training episodes, scored on held-out ones (R^2 and
  the share within 2 units), for encoded real observations and for latents predicted open loop
  1, 5 and 10 steps from a real context under the real actions. A probe with an IN_PLAY rule
  (Breakout's ball) is fit and scored only on observations where its object is on screen.
- Dynamics: L1 and cosine similarity of predicted vs encoded latents at those horizons, and two
  scale-free figures that compare across latent scales and families: R^2 (1 - squared error /
  variance of the encoded latents) and the L1 relative to copying the last real latent forward.
- Reward and life loss: precision, recall and F1 of the heads at those horizons, and calibration: the
  heads' mean predicted |reward| or probability against the actual rate of events (imagination that drifts
  shows as a mean predicted rate that grows with the horizon while the actual rate does not); for a model whose
  `read_events(z, z_next)` reads its heads on given latents, also on real next latents ("real"), which
  separates what the heads can read from what the dynamics predicts.
- Repeated actions: the imagined reward and life losses summed over the longest horizon from the same
  contexts with each action repeated, against what the windows' real transitions had. Imagination that
  pays far more than the data for every action, or much more for one action, is what an agent trained
  in the dream learns to exploit.
- Decoder: PSNR of decoded frames, from encoded and from predicted latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbrl.core.replay import ReplayBuffer
from mbrl.world_models.base import WorldModel, imagine

RAM_PROBES = {"ALE/Breakout-v5": {"paddle_x": 72, "ball_x": 99, "ball_y": 101}}
"""Per game, RAM bytes worth probing for (name -> index)."""
IN_PLAY = {"ALE/Breakout-v5": {"ball_x": (101, 1, 184), "ball_y": (101, 1, 184)}}
"""Per game, probes that count only where a RAM byte lies in [low, high] (name -> (index, low, high)). Breakout's
ball bytes hold stale values while no ball is on screen (ball y 0 before a serve, >= 185 once it passed the
paddle; about 20% of random-policy frames): no picture can tell those values apart, so they would cap R^2 (a
perfect ball locator scores ball_y R^2 0.18 on all frames, 0.999 on frames with the ball in play)."""
MIN_PROBE_ROWS = 16
"""Fewer training observations in play than this: the probe is fit and scored on all observations (and says so)."""


STD_FLOOR = 0.1
"""A probe's feature scale is at least this fraction of the features' mean standard deviation: a feature that
hardly varies over encoded latents is not blown up, so that a small error of an imagined latent in it does not
swing the probe's reading (docs/research/2026-12-07-value-jepa.md, 14)."""


def fit_probe(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge regression on standardised features (scales floored at `STD_FLOOR` of their mean): x (N, F), y (N, O)
    -> (mean, scale, weights (F+1, O))."""
    mean, std = x.mean(0), x.std(0)
    std = std.clamp_min(STD_FLOOR * std.mean()) + 1e-6
    xs = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    eye = torch.eye(xs.shape[1], dtype=x.dtype)
    eye[-1, -1] = 0.0  # no penalty on the bias
    weights = torch.linalg.solve(xs.T @ xs + ridge * len(x) * eye, xs.T @ y)
    return mean, std, weights


def apply_probe(probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    mean, std, weights = probe
    return torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ weights


def probe_scores(pred: torch.Tensor, target: torch.Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """R^2 and share of predictions within 2 units, per output column (NaN for no rows)."""
    if len(target) == 0:
        return {name: {"r2": float("nan"), "within_2": float("nan")} for name in names}
    out = {}
    for i, name in enumerate(names):
        p, t = pred[:, i], target[:, i]
        r2 = 1.0 - float(((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum().clamp_min(1e-9))
        out[name] = {"r2": r2, "within_2": float(((p - t).abs() <= 2).float().mean())}
    return out


def event_scores(score: torch.Tensor, events: np.ndarray) -> dict[str, float]:
    """How a head's event score (a probability or |expected reward|, (N,)) finds the actual events (bool, any shape
    with N entries): precision, recall and F1 at threshold 0.5, the number of positives, calibration (the mean
    score against the actual rate of events), and average precision: the mean, over the events, of the
    precision among the scores ranked at or above theirs (threshold-free: 1 for a perfect ranking, about the
    event rate for a random one; a prior correction leaves it unchanged)."""
    actual = torch.from_numpy(events.reshape(-1))
    predicted = score > 0.5
    tp = float((predicted & actual).sum())
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(actual.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return {"precision": precision, "recall": recall, "f1": f1, "positives": int(actual.sum()),
            "mean_predicted": float(score.mean()), "actual_rate": float(actual.float().mean()),
            "average_precision": average_precision(score, actual)}


def average_precision(score: torch.Tensor, actual: torch.Tensor) -> float:
    """Average precision of scores (N,) for bool events (N,); 0 without events. Tied scores count as ranked
    together (each event's precision counts every score at least as high as its own)."""
    if not bool(actual.any()):
        return 0.0
    order = torch.argsort(score, descending=True, stable=True)
    ranked, hits = score[order], actual[order].double()
    # the last position of each run of tied scores: an event's precision counts everything tied with it
    last = torch.searchsorted(-ranked, -ranked, right=True) - 1
    precision_at = hits.cumsum(0)[last] / (last + 1).double()
    return float((precision_at * hits).sum() / hits.sum())


def psnr(decoded: torch.Tensor, real: torch.Tensor) -> float:
    """Mean PSNR (dB) of frames in [0, 1]: (N, H, W) each."""
    mse = ((decoded - real) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


@torch.no_grad()
def evaluate(
    model: WorldModel, buffer: ReplayBuffer, train_ids: np.ndarray, val_ids: np.ndarray, env_id: str,
    device: torch.device, windows: int = 1024, probe_samples: int = 4096, context: int = 4,
    horizons: tuple[int, ...] = (1, 5, 10), batch: int = 128, seed: int = 0,
) -> dict[str, Any]:
    """All metrics of the module docstring, as a JSON-ready dict."""
    model.eval()
    rng = np.random.default_rng(seed)
    names = list(RAM_PROBES.get(env_id, {}))
    ram_index = list(RAM_PROBES.get(env_id, {}).values())
    max_h = max(horizons)

    def encode(frames: np.ndarray) -> torch.Tensor:  # (B, T, S, H, W) uint8 -> (B, T, F) float64 on CPU
        parts = [model.encode(torch.from_numpy(frames[i : i + batch]).to(device)) for i in range(0, len(frames), batch)]
        return torch.cat(parts).flatten(2).double().cpu()

    # probes fit on single observations of training episodes, one per RAM byte, where its object is in play
    rules = {name: IN_PLAY.get(env_id, {}).get(name) for name in names}
    probe, probe_frames = {}, {}
    if names:
        sample = buffer.sample(probe_samples, 0, rng, episodes=train_ids)
        x = encode(sample.frames)[:, 0]
        y = torch.from_numpy(sample.ram[:, 0, ram_index].astype(np.float64))
        for i, name in enumerate(names):
            rows = in_play(sample.ram[:, 0], rules[name])
            if rows.sum() < MIN_PROBE_ROWS:
                rules[name], rows = None, np.ones(len(rows), dtype=bool)
            probe[name] = fit_probe(x[rows], y[rows, i : i + 1])
            rule = rules[name]
            probe_frames[name] = "all" if rule is None else f"RAM[{rule[0]}] in {rule[1]}..{rule[2]}"

    # held-out windows: a real context of `context` observations, then max_h steps under the real actions
    data = buffer.sample(windows, context - 1 + max_h, rng, episodes=val_ids)
    z_real = encode(data.frames)  # (W, context + max_h, F)
    predicted, rewards, life = [], [], []
    repeated = torch.zeros(model.num_actions, 2, dtype=torch.float64)  # per action: summed reward, life loss
    each = torch.arange(model.num_actions, device=device)
    for i in range(0, windows, batch):
        z = model.encode(torch.from_numpy(data.frames[i : i + batch, :context]).to(device))
        actions = torch.from_numpy(data.actions[i : i + batch]).to(device)
        out = imagine(model, z, actions)
        assert out.latent is not None  # imagine always gives them
        predicted.append(out.latent.cpu())
        rewards.append(out.reward.cpu())
        life.append(out.life_loss.cpu())
        # the same contexts, then each action repeated: one imagination of (actions x windows) rollouts
        b = len(z)
        held = torch.cat([actions[:, : context - 1].repeat(len(each), 1),
                          each.repeat_interleave(b)[:, None].expand(-1, max_h)], dim=1)
        out = imagine(model, z.repeat(len(each), *[1] * (z.dim() - 1)), held)
        sums = torch.stack([out.reward, out.life_loss]).view(2, len(each), -1).sum(-1)  # (2, actions)
        repeated += sums.T.double().cpu()
    z_pred = torch.cat(predicted)  # (W, max_h, *latent_shape)
    reward_pred, life_pred = torch.cat(rewards), torch.cat(life)

    result: dict[str, Any] = {"env": env_id, "windows": windows, "context": context,
                              "held_out_episodes": int(len(val_ids)), "train_episodes": int(len(train_ids))}
    if probe:
        def score(z: torch.Tensor, ram: np.ndarray) -> dict[str, dict[str, float]]:  # z (N, F), ram (N, bytes)
            out = {}
            for i, name in enumerate(names):
                rows = torch.from_numpy(in_play(ram, rules[name]))
                target = torch.from_numpy(ram[:, ram_index[i] : ram_index[i] + 1].astype(np.float64))
                out.update(probe_scores(apply_probe(probe[name], z[rows]), target[rows], [name]))
            return out

        probes = {"encoded": score(z_real.flatten(0, 1), data.ram.reshape(-1, data.ram.shape[-1]))}
        for h in horizons:
            probes[f"h{h}"] = score(z_pred[:, h - 1].flatten(1).double(), data.ram[:, context - 1 + h])
        result.update(probes=probes, probe_frames=probe_frames)

    dynamics: dict[str, Any] = {}
    reward: dict[str, Any] = {}
    life_loss: dict[str, Any] = {}
    decoder: dict[str, float] = {}
    newest = torch.from_numpy(data.frames[:, :, -1]).float() / 255.0  # (W, T, H, W)
    real_latents = z_real.float().view(windows, -1, *model.latent_shape)
    decoder["encoded"] = psnr(_decode(model, real_latents[:, context - 1], device, batch), newest[:, context - 1])
    last_real = z_real[:, context - 1].float()
    for h in horizons:
        at = context - 1 + h
        target = z_real[:, at].float()
        pred = z_pred[:, h - 1].flatten(1).float()
        l1 = float((pred - target).abs().mean())
        dynamics[f"h{h}"] = {"l1": l1, "cosine": float(F.cosine_similarity(pred, target, dim=1).mean()),
                             "r2": 1.0 - float(((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()),
                             "l1_vs_copy": l1 / max(float((last_real - target).abs().mean()), 1e-12)}
        decoder[f"h{h}"] = psnr(_decode(model, z_pred[:, h - 1], device, batch), newest[:, at])
        reward[f"h{h}"] = event_scores(reward_pred[:, h - 1].abs(), data.clipped_rewards[:, at - 1] != 0)
        life_loss[f"h{h}"] = event_scores(life_pred[:, h - 1], data.life_loss[:, at - 1])
    steps = slice(context - 1, context - 1 + max_h)  # the transitions imagined from each window's context
    z_t = real_latents[:, steps].flatten(0, 1)
    z_n = real_latents[:, context : context + max_h].flatten(0, 1)
    read = [model.read_events(z_t[i : i + batch].to(device), z_n[i : i + batch].to(device))
            for i in range(0, len(z_t), batch)]
    heads = [o for o in read if o is not None]
    if len(heads) == len(read):  # heads on real next latents: what they read when dynamics is not in the way
        reward["real"] = event_scores(torch.cat([o[0].cpu() for o in heads]).abs(), data.clipped_rewards[:, steps] != 0)
        life_loss["real"] = event_scores(torch.cat([o[2].cpu() for o in heads]), data.life_loss[:, steps])
    result["repeated_action"] = {  # imagined totals over max_h steps per window; "data": what the windows had
        "steps": max_h,
        "data": {"reward": float(data.clipped_rewards[:, steps].sum(1).mean()),
                 "life_loss": float(data.life_loss[:, steps].sum(1).mean())},
        **{f"action {a}": {"reward": float(repeated[a, 0]) / windows, "life_loss": float(repeated[a, 1]) / windows}
           for a in range(model.num_actions)}}
    result.update(dynamics=dynamics, reward=reward, life_loss=life_loss, decoder_psnr=decoder)
    return result


def in_play(ram: np.ndarray, rule: tuple[int, int, int] | None) -> np.ndarray:
    """bool (N,): which rows of RAM (N, bytes) a probe with this IN_PLAY rule counts (all without one)."""
    if rule is None:
        return np.ones(len(ram), dtype=bool)
    index, low, high = rule
    return (ram[:, index] >= low) & (ram[:, index] <= high)


def _decode(model: WorldModel, latents: torch.Tensor, device: torch.device, batch: int) -> torch.Tensor:
    return torch.cat([model.decode(latents[i : i + batch].to(device)).cpu() for i in range(0, len(latents), batch)])
