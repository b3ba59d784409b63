"""The config of a run: the components' own configs, composed, and the schedules of the two train-agent loops.

Each component owns its frozen dataclass next to its code; this conductor module is the
one place that gathers them (mbrl.core.config, being infrastructure, may not import `envs`).
The schedules of `mbrl train-agent` (`LoopConfig` for mbrl/loop.py, `JointConfig` for mbrl/joint.py)
are the conductor's own and live here, so the loops import the run config they read and no module
imports one that imports it back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mbrl.agents.mpc import MPCConfig
from mbrl.agents.sb3_agent import AgentConfig
from mbrl.collect import CollectConfig
from mbrl.core.config import apply_overrides, check_ranges, from_dict, load_yaml, preset_path
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayConfig
from mbrl.envs.atari import AtariConfig
from mbrl.envs.dream import DreamConfig
from mbrl.evaluate import EvalConfig
from mbrl.train_world_model import WorldModelTrainConfig
from mbrl.world_models.jepa import JEPAConfig
from mbrl.world_models.jepa_value import ValueJEPAConfig

COLLECTORS = ("agent", "mpc")  # who may play the real game in the Dyna iterations
DEVICE_NAMES = r"auto|cpu|mps|cuda(:\d+)?"
"""The devices a run may name (torch knows more, e.g. "meta", which holds shapes and cannot compute)."""


@dataclass(frozen=True)
class LoopConfig:
    """The Dyna schedule: how real play, world-model fitting and dream training alternate.

    Attributes:
        real_steps: the budget of real agent steps (each is `env.frame_skip` frames), warm-up included; the replay
            buffer keeps every one in memory (a row of about env.frame_size^2 + 160 bytes), which bounds it too
            (`mbrl train-agent` refuses a budget whose buffer would not fit).
        warmup_steps: random-policy real steps before the world model is first fitted.
        collect_steps: real steps the agent plays per iteration.
        collect_epsilon: probability of a uniformly random action while the agent collects.
        collect_with: who plays the real game in the iterations: "agent" (the dream-trained agent,
            epsilon-random) or "mpc" (MPC on the current world model with the config's `mpc` settings, each
            first action drawn from its plan's distribution; the env then runs as one shard, since
            the planner keeps every env's history).
        world_model_updates: stage-2 world-model updates per iteration.
        dream_steps: agent steps in the dream per iteration (all dream envs together).
        dream_envs: imagined episodes run in parallel (one batched world-model step for all; at most 4096, as
            the imagination state of each is held at once).
        eval_every: iterations between real evaluations (the last iteration is always evaluated).
    """

    real_steps: int = 100_000
    warmup_steps: int = 5_000
    collect_steps: int = 5_000
    collect_epsilon: float = 0.05
    collect_with: str = "agent"
    world_model_updates: int = 200
    dream_steps: int = 50_000
    dream_envs: int = 64
    eval_every: int = 4

    ranges: ClassVar[dict[str, str]] = {
        "real_steps": "[1, 100_000_000]", "warmup_steps": "[1, 100_000_000]", "collect_steps": "[1, 100_000_000]",
        "collect_epsilon": "[0, 1]", "world_model_updates": "[0, 100_000_000]", "dream_steps": "[0, 1_000_000_000]",
        "dream_envs": "[1, 4096]", "eval_every": "[1, 1_000_000]"}
    retired: ClassVar[dict[str, Any]] = {"real_updates": 0.0}
    """real_updates: a DQN agent's gradient steps on the buffer's real transitions per real step (removed with
    the atari100k preset; the joint loop, mbrl/joint.py, learns from real transitions instead)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.warmup_steps > self.real_steps:
            raise ValueError(f"warmup_steps must be in (0, real_steps = {self.real_steps}], got {self.warmup_steps}")
        if self.collect_with not in COLLECTORS:
            raise ValueError(f"collect_with must be one of {', '.join(COLLECTORS)}, got {self.collect_with!r}")

    @property
    def iterations(self) -> int:
        return math.ceil((self.real_steps - self.warmup_steps) / self.collect_steps)


@dataclass(frozen=True)
class JointConfig:
    """How the value-aware JEPA and its agent learn together (the real-step budget is loop.real_steps).

    Attributes:
        warmup_steps: random-policy real steps before the first update.
        replay_ratio: joint updates per real step after the warm-up.
        batch_size: windows of value_model.window transitions per update (at most 4096: a batch's frames are
            held at once).
        learning_rate: Adam learning rate.
        adam_eps: Adam epsilon. DrQ's 1.5e-4 is larger than most of this model's gradients (its latents vary by
            ~0.005 across states), which turns Adam into a slow SGD: the value head stayed the same in every
            state (docs/research/2026-12-07-value-jepa.md).
        grad_clip: gradient norm clip of the whole model.
        epsilon_final: the collection epsilon reached at `epsilon_decay_steps` real steps (1 before the warm-up
            ends, linear in between).
        epsilon_decay_steps: real steps at which collection reaches `epsilon_final`.
        eval_epsilon: random-action probability when scored on the real game.
        chunk: real steps collected between rounds of updates.
        checkpoint_every: real steps between checkpoints of the model, optimiser and counters (updates between
            them in `mbrl train-world-model`, which trains on a stored buffer without acting).
        eval_every: real steps between evaluations on the real game (0: only at the end).
        log_every: updates between tensorboard loss points (progress lines in a log come every 30 s, mbrl.progress).
    """

    warmup_steps: int = 1_600
    replay_ratio: float = 1.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    adam_eps: float = 1e-8
    grad_clip: float = 10.0
    epsilon_final: float = 0.01
    epsilon_decay_steps: int = 5_000
    eval_epsilon: float = 0.001
    chunk: int = 100
    checkpoint_every: int = 2_000
    eval_every: int = 0
    log_every: int = 500

    ranges: ClassVar[dict[str, str]] = {
        "warmup_steps": "[1, 100_000_000]", "replay_ratio": "(0, 1000]", "batch_size": "[1, 4096]",
        "learning_rate": "(0, 1]", "adam_eps": "(0, 1]", "grad_clip": "(0, inf)", "epsilon_final": "[0, 1]",
        "epsilon_decay_steps": "[0, 1_000_000_000]", "eval_epsilon": "[0, 1]", "chunk": "[1, 100_000_000]",
        "checkpoint_every": "[1, 1_000_000_000]", "eval_every": "[0, 1_000_000_000]", "log_every": "[1, 1_000_000_000]"}

    def __post_init__(self) -> None:
        check_ranges(self)

    def epsilon(self, real_steps: int) -> float:
        """Collection epsilon after `real_steps` real steps."""
        if real_steps <= self.warmup_steps:
            return 1.0
        span = max(self.epsilon_decay_steps - self.warmup_steps, 1)
        done = min((real_steps - self.warmup_steps) / span, 1.0)
        return 1.0 + done * (self.epsilon_final - 1.0)

    def updates_due(self, real_steps: int) -> int:
        """Joint updates a run should have had after `real_steps` real steps."""
        return round(self.replay_ratio * max(real_steps - self.warmup_steps, 0))


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is made with; saved resolved as runs/<name>/config.yaml.

    Attributes:
        env: the real game and its preprocessing.
        replay: replay buffer settings.
        collect: real-env collection settings.
        world_model: the JEPA world model of world_model_training.family jepa (num_actions is set from the env).
        value_model: the value-aware JEPA of world_model_training.family jepa-value (num_actions likewise).
        world_model_training: how the world model is trained.
        dream: the imagined episodes the agent learns in (its device is the run's).
        agent: the SB3 learner.
        loop: the Dyna schedule of `mbrl train-agent` (family jepa; its real_steps is every family's budget).
        joint: how the value-aware JEPA and its agent learn together (family jepa-value).
        eval: how agents are scored on the real game.
        mpc: the model-predictive-control agent of `mbrl plan`.
        seed: seeds envs, policies and models (numpy's legacy seeding, which SB3 uses, takes [0, 2^32)).
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N" or "mps".
    """

    env: AtariConfig = field(default_factory=AtariConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    world_model: JEPAConfig = field(default_factory=JEPAConfig)
    value_model: ValueJEPAConfig = field(default_factory=ValueJEPAConfig)
    world_model_training: WorldModelTrainConfig = field(default_factory=WorldModelTrainConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mpc: MPCConfig = field(default_factory=MPCConfig)
    seed: int = 0
    device: str = "auto"

    ranges: ClassVar[dict[str, str]] = {"seed": "[0, 4_294_967_295]"}

    def __post_init__(self) -> None:
        check_ranges(self)
        if not re.fullmatch(DEVICE_NAMES, self.device):
            raise ValueError(f"config key 'device' expects auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


def resolve_config(preset: str | None, overrides: list[str], base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- `base` (a saved run's config) or the preset file <- `key=value` overrides.

    Raises:
        UserError: unknown preset or key, or a value of the wrong type.
    """
    data = base if base is not None else (load_yaml(preset_path(preset)) if preset else {})
    return from_dict(RunConfig, apply_overrides(data, overrides))


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch names it, if it can run a model here.

    Raises:
        UserError: an unknown device, one that cannot compute (e.g. "meta"), or CUDA (a CUDA index, MPS) asked
            for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device '{name}' cannot run a model; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device '{name}' asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' asked for, but MPS is not available here")
    return device
