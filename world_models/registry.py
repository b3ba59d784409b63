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
    """A new model of `family` from its config dataclass (or a dict of its fields)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown world-model family {family!r}; known: {', '.join(FAMILIES)}")
    config_cls, model_cls = FAMILIES[family]
    if isinstance(config, dict):  # a checkpoint's saved fields; fields added since take their old meaning
        config = config_cls(**_without_retired(config_cls, {**getattr(config_cls, "absent_in_old_checkpoints", {}),
                                                            **config}))
    return model_cls(config)


def _without_retired(config_cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` without the removed ones its class's `retired` lists (as mbrl.core.config.from_dict drops them).

    Raises:
        ValueError: a removed field holds another value than the one whose behaviour the code kept.
    """
    for name, kept in getattr(config_cls, "retired", {}).items():
        if name in fields and (value := fields.pop(name)) != kept:
            raise ValueError(f"config key '{name}' was removed: the code always behaves as {name}={kept!r} now, and "
                             f"{value!r} needs an older mbrl (git history has it)")
    return fields


def skeleton(family: str, config: Any) -> WorldModel:
    """A model of `family` built on torch's meta device: its parameters and buffers have shapes and no storage
    (nothing is allocated, whatever the config's sizes), so its state dict's names and shapes can be checked
    against a checkpoint before a real model is made."""
    with torch.device("meta"):
        return build(family, config)


def describe(family: str, model: WorldModel) -> dict[str, Any]:
    """What a checkpoint's metadata needs to rebuild `model`: its family and config fields."""
    return {"family": family, "config": dataclasses.asdict(model.config)}
