"""Frozen dataclass configs: build them from dicts, YAML presets and `key.sub=value` overrides.

This module holds the mechanism only. Each component defines its own frozen dataclass next
to the code it configures (`mbrl.envs.atari.AtariConfig`, `mbrl.core.replay.ReplayConfig`, ...); the
conductor composes them into the run's config. Unknown keys and wrongly typed values are
errors that name the key and list the valid ones.

Ranges. A config class declares the values each numeric field may take in a class attribute
`ranges: ClassVar[dict[str, str]]`, field name -> interval ("[1, 256]", "(0, 1]", "[0, inf)"; a tuple
field's entries each). `from_dict` checks every value it is given against it, so YAML presets, `--set`
and saved configs share one check and its one-line message, `config key 'env.frame_size' expects a
value in [8, 256], got 0`; a class that may import this module also calls `check_ranges(self)` in its
`__post_init__`, so that building it in Python is checked alike (the world models and the planners,
which import nothing of mbrl, declare their ranges and are checked when built from a dict). Upper
bounds are generous, and they are what bounds a run's memory where a field sizes an allocation.
Checks across fields stay in `__post_init__`; their ValueError messages begin with the field's bare
name, and `from_dict` puts the section in front (`world_model.` + `patch 7 does not divide ...`).

Retired keys. A field that is removed goes into its class's `retired: ClassVar[dict[str, Any]]`, name -> the
value whose behaviour the code kept. Saved configs that hold it with that value still load (the key is
dropped); any other value is a one-line error saying the option was removed, so an old run is never run
silently with other settings than it was trained with.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mbrl.core.errors import UserError

T = TypeVar("T")


def check_ranges(config: Any) -> None:
    """Check each field of the dataclass instance `config` against its class's `ranges`.

    Raises:
        ValueError: naming the first field outside its range (as `ClassName.field`), its value and the range.
    """
    for name, interval in getattr(type(config), "ranges", {}).items():
        problem = _out_of_range(getattr(config, name), interval, f"{type(config).__name__}.{name}")
        if problem:
            raise ValueError(problem)


def _out_of_range(value: Any, interval: str, key: str) -> str | None:
    """The one-line complaint about `value` of config key `key` outside `interval` ("[low, high]", either
    end open with a parenthesis, "inf" for no bound), or None when it lies inside (None values and the
    entries of a tuple are checked alike)."""
    if value is None:
        return None
    for item in value if isinstance(value, tuple) else (value,):
        low, high = (float(end) for end in interval[1:-1].split(","))
        above = item > low if interval[0] == "(" else item >= low
        below = item < high if interval[-1] == ")" else item <= high
        if not (above and below):  # also NaN
            return f"config key '{key}' expects a value in {interval}, got {value!r}"
    return None


def _preset_dir() -> Path:
    """Where the presets are: the package data `mbrl.configs` (the repository's configs/ folder when installed
    in editable mode, mbrl/configs in site-packages otherwise), found without importing any code."""
    spec = importlib.util.find_spec("mbrl.configs")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else Path(__file__).resolve().parents[2] / "configs"


PRESET_DIR = _preset_dir()


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build the frozen dataclass `cls` from a nested dict, checking every key and type.

    Args:
        cls: a dataclass type whose fields are scalars, tuples or nested dataclasses.
        data: values to set; missing fields keep their defaults.
        where: dotted prefix of `cls` inside the run config, used in error messages.

    Raises:
        UserError: on an unknown key (listing the valid ones), a value of the wrong type or outside its
            range (the class's `ranges`), or one its `__post_init__` rejects.
    """
    data = _without_retired(cls, dict(data or {}), where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}{unknown[0]}"
        valid = ", ".join(f"{where}{name}" for name in fields)
        raise UserError(f"unknown config key '{key}'; valid keys: {valid}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise UserError(f"config key '{where}{name}' is a section; set its keys as {where}{name}.KEY")
            default = _default(fields[name])  # a section's missing keys keep the field's default, which may differ
            if default is not None:  # from its class's (MPCConfig.search is not PlannerConfig())
                value = {**to_dict(default), **value}
            values[name] = from_dict(kind, value, f"{where}{name}.")  # type: ignore[arg-type]
        else:
            values[name] = _coerce(value, kind, f"{where}{name}")
            interval = getattr(cls, "ranges", {}).get(name)
            problem = _out_of_range(values[name], interval, f"{where}{name}") if interval else None
            if problem:
                raise UserError(problem)
    try:
        return cls(**values)
    except ValueError as exc:  # a component config's own check across fields (its __post_init__)
        raise UserError(f"{where}{exc}") from None


def _without_retired(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` without the keys `cls.retired` lists, each checked to hold the value whose behaviour was kept."""
    for name, kept in getattr(cls, "retired", {}).items():
        if name in data:
            value = data.pop(name)
            if value != kept:
                raise UserError(f"config key '{where}{name}' was removed: the code always behaves as {name}={kept!r} "
                                f"now, and {value!r} needs an older mbrl (git history has it)")
    return data


def _default(field: dataclasses.Field[Any]) -> Any:
    """A field's default value (made by its factory if it has one), or None without one."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists (YAML- and JSON-safe)."""
    out = dataclasses.asdict(config)
    return _lists(out)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with `key.sub=value` overrides applied.

    Values are parsed as YAML scalars (`0.5`, `true`, `[1, 2]`, `breakout`); the
    result still has to pass `from_dict`, which rejects unknown keys and bad types.
    """
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
            node = child
        node[leaf] = value
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a one-line UserError."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def preset_path(name: str) -> Path:
    """Resolve a preset name (`breakout`, from configs/) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
        raise UserError(f"unknown preset '{name}'; available: {', '.join(available) or 'none found'}")
    return path


def dump_yaml(config: Any) -> str:
    """The resolved config as YAML text, keys in field order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`; ints widen to floats, lists to tuples."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError:
                pass
        raise UserError(f"config key '{key}' expects {_name(kind)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' expects a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_coerce(v, item, key) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-8 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"config key '{key}' expects {_name(kind)}, got {value!r}")
    return value


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
