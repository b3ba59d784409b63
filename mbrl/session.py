"""Opening a run: the one way every command, the two train-agent loops and the benchmarks set one up.

    config       config_for_run: a new run's preset, or an existing run's saved config, with --set and flags;
                 with_num_actions fills in the world models' action count from the game
    device       resolve_device (mbrl.run_config): "auto", "cpu", "cuda:N"
    replay       open_replay (to append to), load_replay (to read), episode_split (training / held-out episodes)
    real play    real_play: the run's real game as a collector into its buffer
    world model  trained_run: the run's world model from its checkpoint, with its buffer and episode split;
                 mpc_for_run: `mbrl plan`'s MPC agent in it; check_world_model_fits: a new one's memory, up front
    seeds        Seeds: every seed a run derives from config.seed, by name, each made by `derive_seed`
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from mbrl.agents.mpc import MPCAgent
from mbrl.agents.sb3_agent import LatentAgent, value_function
from mbrl.agents.value_agent import ValueAgent
from mbrl.collect import Collector
from mbrl.core.checkpoint import Checkpoint
from mbrl.core.errors import UserError
from mbrl.core.memory import check_fits
from mbrl.core.replay import ReplayBuffer, split_episodes
from mbrl.core.run import RunDir
from mbrl.envs.atari import RAM_SIZE, make_env, make_vector_env
from mbrl.envs.registration import load_world_model
from mbrl.run_config import RunConfig, resolve_config, resolve_device
from mbrl.train_world_model import model_config
from mbrl.world_models.base import WorldModel
from mbrl.world_models.registry import FAMILIES, skeleton

__all__ = [
    "Seeds", "TrainedRun", "check_world_model_fits", "config_for_run", "derive_seed", "episode_split",
    "existing_run", "load_replay", "mpc_for_run", "num_actions", "open_replay", "real_play", "resolve_device",
    "trained_run", "with_num_actions",
]


# ---- seeds ------------------------------------------------------------------------------------


def derive_seed(entropy: Sequence[int]) -> int:
    """An int seed from a list of ints (numpy's SeedSequence: different lists give independent seeds)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


@dataclass(frozen=True)
class Seeds:
    """Every seed a run derives from its config.seed, by name.

    A sitting (a new run, a resume, another `mbrl collect`) plays new streams of the replay buffer;
    `stream`, the buffer's stream count when it starts, keeps its games apart from the earlier ones'.
    Runs made so far resume and reproduce only while each name keeps its derivation: a new seed takes
    a new name and a key never used before (5 was the removed stream of a DQN's updates on real transitions).
    The methods that return a list give a generator's entropy (`np.random.default_rng(list)`); the others an int.

    Attributes:
        root: config.seed.
        stream: the first stream the sitting adds.
    """

    root: int
    stream: int = 0

    def env(self) -> int:
        """The real envs' first resets."""
        return derive_seed([self.root, self.stream])

    def random_policy(self) -> list[int]:
        """Random play (the warm-up, `mbrl collect`)."""
        return [self.root, self.stream]

    def explore(self) -> list[int]:
        """The agent's epsilon-random actions while it collects."""
        return [self.root, self.stream, 1]

    def dream(self, iteration: int) -> int:
        """The dream of Dyna iteration `iteration` (0: the one the agent is built on): contexts and imagination."""
        return derive_seed([self.root, iteration, 2])

    def evaluation(self, counter: int) -> int:
        """A train-agent evaluation's games: the Dyna iteration, or the joint loop's real steps."""
        return derive_seed([self.root, counter, 3])

    def plan(self) -> int:
        """The planner of MPC collection (loop.collect_with=mpc)."""
        return derive_seed([self.root, self.stream, 4])

    def refit(self, iteration: int) -> int:
        """The global generators (torch's, numpy's) during the world model's refit in Dyna iteration `iteration`."""
        return derive_seed([self.root, iteration, 6])

    def dream_learning(self, iteration: int) -> int:
        """The global generators and the agent's action space while it learns in the dream of iteration
        `iteration`: its sampled actions, minibatches and exploration."""
        return derive_seed([self.root, iteration, 8])

    def joint_updates(self) -> list[int]:
        """The windows the joint loop's updates sample."""
        return [self.root, 7]


# ---- config -----------------------------------------------------------------------------------


def existing_run(path: Path) -> RunDir:
    """The run at `path`.

    Raises:
        UserError: there is no run there.
    """
    run = RunDir(path)
    run.read_config()
    return run


def config_for_run(run: RunDir, preset: str | None, overrides: list[str], flags: dict[str, Any]) -> RunConfig:
    """An existing run's saved config, or the preset's for a new run, with `--set` overrides and flags applied.

    `flags` maps config keys to command-line values (None: not given).

    Raises:
        UserError: a bad preset, key or value, or an env id other than the one the run was created with.
    """
    overrides = overrides + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if not run.exists():
        return resolve_config(preset, overrides)
    saved = run.read_config()
    config = resolve_config(None, overrides, base=saved)
    saved_id = saved.get("env", {}).get("id")
    if saved_id and config.env.id != saved_id:
        raise UserError(f"run {run.path} was created with env {saved_id}, not {config.env.id}")
    return config


def num_actions(config: RunConfig) -> int:
    """The real game's action count."""
    return int(make_env(config.env).action_space.n)  # type: ignore[attr-defined]


def with_num_actions(config: RunConfig) -> RunConfig:
    """The run config with the world models' num_actions set from the game."""
    actions = num_actions(config)
    return dataclasses.replace(config, world_model=model_config(config.world_model, actions),
                               value_model=model_config(config.value_model, actions))


# ---- replay and real play ---------------------------------------------------------------------


def open_replay(run: RunDir, config: RunConfig) -> ReplayBuffer:
    """The run's replay buffer to append to (created when missing), knowing the game's action count (every row
    appended or stored is checked against it).

    Raises:
        UserError: the stored buffer holds frames of another geometry, play of another game, or corrupted rows.
    """
    size = config.env.frame_size
    return ReplayBuffer.open(run.replay_dir, (size, size), config.env.frame_stack, RAM_SIZE, num_actions(config))


def load_replay(run: RunDir) -> ReplayBuffer:
    """The run's replay buffer, to read.

    Raises:
        UserError: the run has no readable buffer.
    """
    return ReplayBuffer.load(run.replay_dir)


def episode_split(buffer: ReplayBuffer, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) episode ids of the buffer (world_model_training.holdout_every).

    Raises:
        UserError: either side is empty.
    """
    train_ids, held_out = split_episodes(buffer, config.world_model_training.holdout_every)
    if len(train_ids) == 0 or len(held_out) == 0:
        raise UserError(f"{buffer.directory} has too few episodes for a held-out split; collect more first")
    return train_ids, held_out


def real_play(config: RunConfig, buffer: ReplayBuffer, one_shard: bool = False) -> tuple[Collector, Seeds]:
    """The run's real game (config.collect.num_envs envs) as a collector into `buffer`, and the sitting's seeds.

    Args:
        one_shard: step every env in one worker (a policy that keeps each env's history, as MPC does, must
            see all of them at each call); 0 workers (config collect.num_workers=0) stays 0.
    """
    workers = None if config.collect.num_workers < 0 else config.collect.num_workers
    if one_shard and workers != 0:
        workers = 1
    seeds = Seeds(config.seed, buffer.num_streams)  # the streams this sitting adds come after the stored ones
    env = make_vector_env(config.env, config.collect.num_envs, workers)
    return Collector(env, buffer, seed=seeds.env()), seeds


# ---- the world model -------------------------------------------------------------------------


def check_world_model_fits(config: RunConfig) -> None:
    """Refuse, before any work, a world model (of world_model_training.family, from the run config's section of
    its class) whose training would not fit in memory: its tensors are counted on torch's meta device (nothing
    allocated), 4 bytes each, and three more per parameter for its gradient and Adam's two moments.

    Also refuse one that would read frames of another size or stack than the env gives.

    Raises:
        UserError: the estimate exceeds what this process may hold (`mbrl.core.memory.check_fits`), or the
            section's frame_size / frame_stack differ from the env's.
    """
    family = config.world_model_training.family
    section = next(c for c in (config.world_model, config.value_model) if isinstance(c, FAMILIES[family][0]))
    name = "world_model" if section is config.world_model else "value_model"
    for key in ("frame_size", "frame_stack"):
        if getattr(section, key) != getattr(config.env, key):
            raise UserError(f"{name}.{key} {getattr(section, key)} differs from env.{key} {getattr(config.env, key)}: "
                            f"the {family} world model reads the env's observations; set both to the same value")
    model = skeleton(family, section)
    values = sum(t.numel() for t in model.state_dict().values()) + 3 * sum(p.numel() for p in model.parameters())
    check_fits(f"the {family} world model ({sum(p.numel() for p in model.parameters()):,} parameters)", 4 * values)


# ---- the trained world model -----------------------------------------------------------------


class TrainedRun(NamedTuple):
    """A run with its trained world model, replay buffer and episode split."""

    run: RunDir
    config: RunConfig
    device: torch.device
    model: WorldModel
    checkpoint: Checkpoint
    buffer: ReplayBuffer
    train_ids: np.ndarray
    held_out: np.ndarray


def trained_run(path: Path, device: str | None = None) -> TrainedRun:
    """The run at `path` with its world model (on `device`, None: the config's), buffer and episode split.

    Raises:
        UserError: no run, buffer or held-out split there, or a bad device.
        CheckpointError: the world-model checkpoint is missing, corrupted or does not match.
    """
    run = existing_run(path)
    config = config_for_run(run, None, [], {"device": device})
    torch_device = resolve_device(config.device)
    model, checkpoint = load_world_model(run, torch_device)
    buffer = load_replay(run)
    train_ids, held_out = episode_split(buffer, config)
    return TrainedRun(run, config, torch_device, model, checkpoint, buffer, train_ids, held_out)


def mpc_for_run(run: RunDir, config: RunConfig, device: torch.device, seed: int,
                critic_of: LatentAgent | ValueAgent | None = None) -> MPCAgent:
    """`mbrl plan`'s MPC agent: the run's world model and `config.mpc`; given the run's trained agent
    (`mbrl.loop.load_trained_agent`), its world model (the same checkpoint) and its critic as terminal value.

    Raises:
        UserError: `critic_of` is not an SB3 agent (a value-aware model's planner uses its own value).
        CheckpointError: the world-model checkpoint is missing, corrupted or does not match.
    """
    if critic_of is None:
        model = load_world_model(run, device)[0]
        return MPCAgent(model, config.mpc, device, seed=seed, value_fn=model.value if model.has_value else None)
    if not isinstance(critic_of, LatentAgent):
        raise UserError("--value-from-agent needs an SB3 agent; a jepa-value run's planner uses its own value already")
    return MPCAgent(critic_of.world_model, config.mpc, device, seed=seed, value_fn=value_function(critic_of.model))
