"""World-model families by name: the config class and the model class of each."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from mbrl.world_models.base import WorldModel
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel
from mbrl.world_models.jepa_value import ValueJEPAConfig, ValueJEPAWorldModel

FAMILIES: dict[str, tuple[type, Callable[[Any], WorldModel]]] = {
    "jepa": (JEPAConfig, JEPAWorldModel),
    "jepa-value": (ValueJEPAConfig, ValueJEPAWorldModel),
}


def build(family: str, config: Any) -> WorldModel:
    """A new model of `family` from its config dataclass (a checkpoint's saved fields become one through
    `mbrl.envs.registration.world_model_spec`, which checks them)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown world-model family {family!r}; known: {', '.join(FAMILIES)}")
    config_cls, model_cls = FAMILIES[family]
    if not isinstance(config, config_cls):
        raise TypeError(f"a {family} world model is built from a {config_cls.__name__}, got {type(config).__name__}")
    return model_cls(config)


def skeleton(family: str, config: Any) -> WorldModel:
    """A model of `family` built on torch's meta device: its parameters and buffers have shapes and no storage
    (nothing is allocated, whatever the config's sizes), so its state dict's names and shapes can be checked
    against a checkpoint before a real model is made."""
    with torch.device("meta"):
        return build(family, config)


def describe(family: str, model: WorldModel) -> dict[str, Any]:
    """What a checkpoint's metadata needs to rebuild `model`: its family and config fields."""
    return {"family": family, "config": dataclasses.asdict(model.config)}
