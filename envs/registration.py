"""Gymnasium ids for the dream: `gymnasium.make("mbrl/Dream-v0", checkpoint="runs/NAME")`.

Importing `envs` registers the ids. The dream made from a run directory imagines with the
run's world model (checkpoint "world_model") and starts its episodes from real contexts of
the run's replay buffer, taken from the training episodes only (the held-out ones stay unseen):

    import mbrl.envs, gymnasium
    env = gymnasium.make("mbrl/Dream-v0", checkpoint="runs/NAME", horizon=20)
    vec = gymnasium.make_vec("mbrl/Dream-v0", num_envs=64, vectorization_mode="vector_entry_point",
                             checkpoint="runs/NAME")

The dream is the run's: it starts from the `dream` section the run saved in its config.yaml (horizon, reward,
termination, observation, value bootstrap), so an env made by id imagines as the run's agent did. Keyword
arguments other than `checkpoint`, `seed`, `render_mode` (and `num_envs`) override single `DreamConfig`
fields; `device` is cpu unless given (`device="auto"` picks cuda when available).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from mbrl.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointHeader,
    check_tensors,
    load_state_dict,
    open_checkpoint,
)
from mbrl.core.config import from_dict
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayBuffer, split_episodes
from mbrl.core.run import RunDir
from mbrl.envs.dream import DreamConfig, DreamEnv, DreamVectorEnv
from mbrl.world_models.base import WorldModel
from mbrl.world_models.registry import FAMILIES, build, skeleton

DREAM_ID = "mbrl/Dream-v0"
WORLD_MODEL_CHECKPOINT = "world_model"  # the name mbrl train-world-model saves under
DEFAULT_HOLDOUT_EVERY = 10  # WorldModelTrainConfig.holdout_every's default


def make_dream_env(checkpoint: str | Path, render_mode: str | None = None, seed: int | None = None,
                   **dream_config_fields: Any) -> DreamEnv:
    """A single dream env imagining with the world model of the run directory `checkpoint`.

    Args:
        checkpoint: a run directory (runs/NAME) holding a world-model checkpoint and a replay buffer.
        render_mode: None or "rgb_array".
        seed: seeds context sampling and imagination (also `reset(seed=...)`).
        **dream_config_fields: `DreamConfig` fields overriding the run's saved ones, e.g. horizon=20.

    Raises:
        TypeError: an unknown `DreamConfig` field (the message lists the valid ones).
        UserError: no run at `checkpoint`, no replay buffer in it, or no training episode to start from.
        CheckpointError: the world-model checkpoint is missing, corrupted or does not match its model.
    """
    config = dream_config(_saved_dream(checkpoint), **dream_config_fields)
    model, buffer, episodes = load_run(checkpoint, config.device)
    return DreamEnv(model, buffer, config, seed=seed, episodes=episodes, render_mode=render_mode)


def make_dream_vector_env(num_envs: int, checkpoint: str | Path, seed: int | None = None,
                          render_mode: str | None = None, **dream_config_fields: Any) -> DreamVectorEnv:
    """`num_envs` batched dream envs (next-step autoreset); the arguments are `make_dream_env`'s."""
    config = dream_config(_saved_dream(checkpoint), **dream_config_fields)
    model, buffer, episodes = load_run(checkpoint, config.device)
    return DreamVectorEnv(model, buffer, num_envs, config, seed=seed, episodes=episodes, render_mode=render_mode)


def dream_config(saved: dict[str, Any] | None = None, **fields: Any) -> DreamConfig:
    """A `DreamConfig`: a run's saved `dream` section (its device aside) with keyword fields overriding it;
    `device="auto"` becomes "cuda" if available, else "cpu".

    Raises:
        TypeError: a field `DreamConfig` does not have (the message lists the valid ones).
        ValueError: a field value `DreamConfig` rejects.
        UserError: the saved section is not a valid `dream` config.
    """
    valid = [f.name for f in dataclasses.fields(DreamConfig)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise TypeError(f"unknown dream option {unknown[0]!r}; valid DreamConfig fields: {', '.join(valid)}")
    if fields.get("device") == "auto":
        fields["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    base = from_dict(DreamConfig, {k: v for k, v in (saved or {}).items() if k != "device"}, "dream.")
    return dataclasses.replace(base, **fields)


def _saved_dream(checkpoint: str | Path) -> dict[str, Any] | None:
    """The `dream` section of the config a run saved (None when it saved none)."""
    section = RunDir(Path(checkpoint)).read_config().get("dream")
    if section is not None and not isinstance(section, dict):
        raise UserError(f"the dream section of {checkpoint}/config.yaml is not a mapping: {section!r}")
    return section


def load_run(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[WorldModel, ReplayBuffer, np.ndarray]:
    """A run's world model (on `device`, in eval mode), its replay buffer (read-only) and its training episode ids.

    Raises:
        UserError: no run at `checkpoint`, no replay buffer in it, or no training episode in the buffer.
        CheckpointError: the world-model checkpoint is missing, corrupted or does not match its model.
    """
    run = RunDir(Path(checkpoint))
    holdout_every = _holdout_every(run.read_config())
    model, _ = load_world_model(run, torch.device(device))
    buffer = ReplayBuffer.load(run.replay_dir)
    episodes, _ = split_episodes(buffer, holdout_every)
    if len(episodes) == 0:
        raise UserError(f"replay buffer {run.replay_dir} has no training episode to start a dream from "
                        f"({len(buffer.episode_ids())} episodes, every {holdout_every}th held out)")
    return model, buffer, episodes


def load_world_model(run: RunDir, device: torch.device) -> tuple[WorldModel, Checkpoint]:
    """The world model a run saved (`mbrl train-world-model`), on `device`, in eval mode, and its checkpoint.

    Raises:
        CheckpointError: the checkpoint is missing, corrupted or does not match its model.
    """
    header = open_checkpoint(run.checkpoint_dir, WORLD_MODEL_CHECKPOINT)
    family, config = world_model_spec(header)
    check_tensors(header, skeleton(family, config), prefix="model.")  # before any real model is allocated
    ckpt = header.load()
    model = build(family, config)
    load_state_dict(model, ckpt, prefix="model.")
    return model.to(device).eval(), ckpt


def world_model_spec(header: CheckpointHeader) -> tuple[str, Any]:
    """The family and config a world-model checkpoint's metadata describes, checked as untrusted input: the
    family must be in the registry and the config must pass its class's `from_dict` (known keys, types,
    ranges); fields added since the checkpoint was saved take their old meaning (`absent_in_old_checkpoints`).

    Raises:
        CheckpointError: naming the checkpoint and what is wrong.
    """
    family, fields = header.metadata.get("family"), header.metadata.get("config")
    if not isinstance(family, str) or family not in FAMILIES:
        raise CheckpointError(f"checkpoint {header.path} names world-model family {family!r}; "
                              f"known: {', '.join(FAMILIES)}")
    if not isinstance(fields, dict):
        raise CheckpointError(f"checkpoint {header.path} has no world-model config")
    config_cls = FAMILIES[family][0]
    try:
        config: Any = from_dict(config_cls, {**getattr(config_cls, "absent_in_old_checkpoints", {}), **fields})
    except UserError as exc:
        raise CheckpointError(f"checkpoint {header.path} is corrupted: {exc}") from None
    return family, config


def _holdout_every(run_config: dict[str, Any]) -> int:
    """world_model_training.holdout_every of a run's config (the training default when absent)."""
    training = run_config.get("world_model_training") or {}
    value = training.get("holdout_every", DEFAULT_HOLDOUT_EVERY) if isinstance(training, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"world_model_training.holdout_every must be a positive integer, got {value!r}")
    return value


if DREAM_ID not in gymnasium.registry:  # importing this module again (e.g. a reload) keeps the one registration
    gymnasium.register(
        DREAM_ID,
        entry_point="mbrl.envs.registration:make_dream_env",
        vector_entry_point="mbrl.envs.registration:make_dream_vector_env",
    )
