"""`mbrl eval-world-model`: what a trained world model knows, measured on held-out episodes.

- RAM probes: ridge regressions from latents to console RAM bytes (Breakout: paddle x, ball x,
  ball y), fit on encoded observations of training episodes, scored on held-out ones (R^2 and
  the share within 2 units), for encoded real observations and for latents predicted open loop
  1, 5 and 10 steps from a real context under the real actions.
- Dynamics: L1 and cosine similarity of predicted vs encoded latents at those horizons.
- Reward and life loss: precision, recall and F1 of the heads at horizons 1 and 5.
- Decoder: PSNR of decoded frames, from encoded and from predicted latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mbrl.replay import ReplayBuffer
from world_models.base import WorldModel, imagine

RAM_PROBES = {"ALE/Breakout-v5": {"paddle_x": 72, "ball_x": 99, "ball_y": 101}}
"""Per game, RAM bytes worth probing for (name -> index)."""


def fit_probe(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge regression on standardised features: x (N, F), y (N, O) -> (mean, std, weights (F+1, O))."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    eye = torch.eye(xs.shape[1], dtype=x.dtype)
    eye[-1, -1] = 0.0  # no penalty on the bias
    weights = torch.linalg.solve(xs.T @ xs + ridge * len(x) * eye, xs.T @ y)
    return mean, std, weights


def apply_probe(probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    mean, std, weights = probe
    return torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ weights


def probe_scores(pred: torch.Tensor, target: torch.Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """R^2 and share of predictions within 2 units, per output column."""
    out = {}
    for i, name in enumerate(names):
        p, t = pred[:, i], target[:, i]
        r2 = 1.0 - float(((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum().clamp_min(1e-9))
        out[name] = {"r2": r2, "within_2": float(((p - t).abs() <= 2).float().mean())}
    return out


def detection_scores(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """Precision, recall, F1 of boolean predictions, and how many actual positives there were."""
    tp = float((predicted & actual).sum())
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(actual.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return {"precision": precision, "recall": recall, "f1": f1, "positives": int(actual.sum())}


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

    # probes fit on single observations of training episodes
    probe = None
    if names:
        sample = buffer.sample(probe_samples, 0, rng, episodes=train_ids)
        x = encode(sample.frames)[:, 0]
        y = torch.from_numpy(sample.ram[:, 0, ram_index].astype(np.float64))
        probe = fit_probe(x, y)

    # held-out windows: a real context of `context` observations, then max_h steps under the real actions
    data = buffer.sample(windows, context - 1 + max_h, rng, episodes=val_ids)
    z_real = encode(data.frames)  # (W, context + max_h, F)
    predicted, rewards, life = [], [], []
    for i in range(0, windows, batch):
        z = model.encode(torch.from_numpy(data.frames[i : i + batch, :context]).to(device))
        out = imagine(model, z, torch.from_numpy(data.actions[i : i + batch]).to(device))
        predicted.append(out.latent.cpu())
        rewards.append(out.reward.cpu())
        life.append(out.life_loss.cpu())
    z_pred = torch.cat(predicted)  # (W, max_h, *latent_shape)
    reward_pred, life_pred = torch.cat(rewards), torch.cat(life)

    result: dict[str, Any] = {"env": env_id, "windows": windows, "context": context,
                              "held_out_episodes": int(len(val_ids)), "train_episodes": int(len(train_ids))}
    if probe is not None:
        ram = torch.from_numpy(data.ram[..., ram_index].astype(np.float64))  # (W, context + max_h, O)
        probes = {"encoded": probe_scores(apply_probe(probe, z_real.flatten(0, 1)), ram.flatten(0, 1), names)}
        for h in horizons:
            at = context - 1 + h
            probes[f"h{h}"] = probe_scores(apply_probe(probe, z_pred[:, h - 1].flatten(1).double()), ram[:, at], names)
        result["probes"] = probes

    dynamics, reward, life_loss, decoder = {}, {}, {}, {}
    newest = torch.from_numpy(data.frames[:, :, -1]).float() / 255.0  # (W, T, H, W)
    real_latents = z_real.float().view(windows, -1, *model.latent_shape)
    decoder["encoded"] = psnr(_decode(model, real_latents[:, context - 1], device, batch), newest[:, context - 1])
    for h in horizons:
        at = context - 1 + h
        target = z_real[:, at].float()
        pred = z_pred[:, h - 1].flatten(1).float()
        dynamics[f"h{h}"] = {"l1": float((pred - target).abs().mean()),
                             "cosine": float(F.cosine_similarity(pred, target, dim=1).mean())}
        decoder[f"h{h}"] = psnr(_decode(model, z_pred[:, h - 1], device, batch), newest[:, at])
        if h <= 5:
            actual = torch.from_numpy(data.clipped_rewards[:, at - 1] != 0)
            reward[f"h{h}"] = detection_scores(reward_pred[:, h - 1].abs() > 0.5, actual)
            actual = torch.from_numpy(data.life_loss[:, at - 1])
            life_loss[f"h{h}"] = detection_scores(life_pred[:, h - 1] > 0.5, actual)
    result.update(dynamics=dynamics, reward=reward, life_loss=life_loss, decoder_psnr=decoder)
    return result


def _decode(model: WorldModel, latents: torch.Tensor, device: torch.device, batch: int) -> torch.Tensor:
    return torch.cat([model.decode(latents[i : i + batch].to(device)).cpu() for i in range(0, len(latents), batch)])
