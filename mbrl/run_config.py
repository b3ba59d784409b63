"""The config of a run: the components' own configs, composed.

Each component owns its frozen dataclass next to its code; this conductor module is the
one place that gathers them (mbrl.config, being infrastructure, may not import `envs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envs.atari import AtariConfig
from mbrl.collect import CollectConfig
from mbrl.config import apply_overrides, from_dict, load_yaml, preset_path
from mbrl.replay import ReplayConfig


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is made with; saved resolved as runs/<name>/config.yaml.

    Attributes:
        env: the real game and its preprocessing.
        replay: replay buffer settings.
        collect: real-env collection settings.
        seed: seeds envs, policies and models.
    """

    env: AtariConfig = field(default_factory=AtariConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    seed: int = 0


def resolve_config(preset: str | None, overrides: list[str], base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- `base` (a saved run's config) or the preset file <- `key=value` overrides.

    Raises:
        UserError: unknown preset or key, or a value of the wrong type.
    """
    data = base if base is not None else (load_yaml(preset_path(preset)) if preset else {})
    return from_dict(RunConfig, apply_overrides(data, overrides))

