"""The config of a run: the components' own configs, composed.

Each component owns its frozen dataclass next to its code; this conductor module is the
one place that gathers them (mbrl.core.config, being infrastructure, may not import `envs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mbrl.agents.mpc import MPCConfig
from mbrl.agents.sb3_agent import AgentConfig
from mbrl.collect import CollectConfig
from mbrl.core.config import apply_overrides, from_dict, load_yaml, preset_path
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayConfig
from mbrl.envs.atari import AtariConfig
from mbrl.envs.dream import DreamConfig
from mbrl.evaluate import EvalConfig
from mbrl.joint import JointConfig
from mbrl.loop import LoopConfig
from mbrl.train_world_model import WorldModelTrainConfig
from mbrl.world_models.jepa import JEPAConfig
from mbrl.world_models.jepa_value import ValueJEPAConfig


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
        seed: seeds envs, policies and models.
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
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

    def __post_init__(self) -> None:
        if self.loop.real_updates > 0 and self.agent.algo != "dqn":
            raise ValueError(f"loop.real_updates needs an off-policy agent (agent.algo=dqn), got {self.agent.algo!r}; "
                             "set loop.real_updates=0 for it to learn in the dream only")


def resolve_config(preset: str | None, overrides: list[str], base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- `base` (a saved run's config) or the preset file <- `key=value` overrides.

    Raises:
        UserError: unknown preset or key, or a value of the wrong type.
    """
    data = base if base is not None else (load_yaml(preset_path(preset)) if preset else {})
    return from_dict(RunConfig, apply_overrides(data, overrides))



def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch names it.

    Raises:
        UserError: an unknown device, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here")
    return device
