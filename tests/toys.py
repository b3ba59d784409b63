"""Toy world models and data shared by the test modules: closed-form models, a tiny JEPA, a small replay buffer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from mbrl.core.checkpoint import save_checkpoint
from mbrl.core.replay import FIRST, TERMINATED, ReplayBuffer
from mbrl.core.run import RunDir
from mbrl.world_models.base import StepOutput, TrainBatch, WorldModel
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel
from tests.replay_data import fill

TINY = JEPAConfig(dim=32, depth=1, heads=2, patch=16, summary_tokens=2, jepa_predictor_depth=1, predictor_dim=32,
                  predictor_depth=2, context=4, decoder_dim=16, rollout_steps=2)
"""A JEPA small enough for unit tests (64 x 64 frames, 4 actions)."""

EPISODES, LENGTH = 4, 12  # the toy buffer: frame value of row `pos` of episode `e` is 40 e + 3 pos


class Walker(WorldModel):
    """A world model known in closed form; the latent is (x, t).

    encode: x = the newest frame's corner pixel, t = 0. step(a): x += a, t += 1; reward 0.75
    for a = 1, -0.25 for a = 2, else 0; game over once t >= end; life lost with probability
    0.6 on a = 2. decode: every pixel (x + 16 t) / 255. `poison` names an output made NaN.
    """

    latent_shape = (2,)
    num_actions = 3
    config = None

    def __init__(self, end: int = 100) -> None:
        super().__init__()
        self.end = end
        self.poison: str | None = None
        self.observed: list[tuple[Tensor, Tensor]] = []  # arguments of every observe call

    def encode(self, frames: Tensor) -> Tensor:
        x = frames[:, :, -1, 0, 0].float()
        return torch.stack([x, torch.zeros_like(x)], dim=-1)

    def observe(self, latents: Tensor, actions: Tensor) -> dict[str, Tensor]:
        self.observed.append((latents.clone(), actions.clone()))
        return {"z": latents[:, -1]}

    def step(self, state: dict[str, Tensor], action: Tensor, latent: bool = True) -> StepOutput:
        z = state["z"] + torch.stack([action.float(), torch.ones(len(action), device=action.device)], dim=-1)
        reward = torch.where(action == 1, 0.75, torch.where(action == 2, -0.25, 0.0))
        outputs = {"latent": z, "reward": reward, "cont": (z[:, 1] < self.end).float(),
                   "life_loss": (action == 2).float() * 0.6}
        if self.poison is not None:
            outputs[self.poison] = outputs[self.poison] * torch.nan
        return StepOutput({"z": z}, **outputs)

    def decode(self, latents: Tensor) -> Tensor:
        value = ((latents[..., 0] + 16 * latents[..., 1]) / 255).clamp(0, 1)
        return value[..., None, None].expand(*value.shape, 64, 64)

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError


def make_buffer(random_frames: bool = False) -> ReplayBuffer:
    """EPISODES episodes of LENGTH rows; the action into row `pos` is pos % 3."""
    buffer = ReplayBuffer((64, 64), 4, ram_size=128)
    stream = buffer.new_streams(1)
    rng = np.random.default_rng(0)
    for e in range(EPISODES):
        for pos in range(LENGTH):
            frame = np.full((1, 64, 64), 40 * e + 3 * pos, np.uint8)
            if random_frames:
                frame = rng.integers(0, 256, (1, 64, 64), dtype=np.uint8)
            flags = FIRST if pos == 0 else TERMINATED if pos == LENGTH - 1 else 0
            buffer.append(stream, frame, np.array([pos % 3]), np.array([0.0]), np.array([flags], np.uint8))
    return buffer


def start_values(context: int = 4) -> set[float]:
    """The x of every observation that can end a start context."""
    return {40.0 * e + 3 * pos for e in range(EPISODES) for pos in range(context - 1, LENGTH)}


def tiny_jepa() -> JEPAWorldModel:
    """A freshly initialised TINY JEPA (torch seed 0), in eval mode."""
    torch.manual_seed(0)
    return JEPAWorldModel(TINY).eval()


HOLDOUT_EVERY = 3  # make_run's runs hold out every third episode


def make_run(path: Path, checkpoint: bool = True) -> JEPAWorldModel:
    """A run directory with a (64, 64) x4 replay buffer of random episodes, a config and (optionally) a TINY
    JEPA checkpoint (torch seed 0), as `mbrl train-world-model` saves it."""
    run = RunDir(path)
    run.create(yaml.safe_dump({"seed": 0, "world_model_training": {"holdout_every": HOLDOUT_EVERY}}))
    with ReplayBuffer.open(run.replay_dir, (64, 64), 4, ram_size=8) as buffer:
        fill(buffer, num_streams=4, vector_steps=80, seed=0)
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY)
    if checkpoint:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        metadata = {"family": "jepa", "config": dataclasses.asdict(TINY)}
        save_checkpoint(run.checkpoint_dir, "world_model", tensors, metadata, step=0)
    return model
