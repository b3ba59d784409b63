"""Tests for mbrl.core.config (dicts, YAML presets, overrides) and mbrl.run_config.resolve_config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from mbrl.agents.mpc import MPCConfig
from mbrl.collect import CollectConfig
from mbrl.core.config import PRESET_DIR, apply_overrides, dump_yaml, from_dict, load_yaml, preset_path, to_dict
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayConfig
from mbrl.envs.atari import AtariConfig
from mbrl.run_config import RunConfig, resolve_config


def _user_error(func, *args, **kwargs) -> str:
    """Call `func`, expect a UserError with a non-empty one-line message, return the message."""
    with pytest.raises(UserError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert message
    assert "\n" not in message, f"message is not a single line: {message!r}"
    return message


def _from_overrides(overrides: list[str]) -> RunConfig:
    return from_dict(RunConfig, apply_overrides({}, overrides))


# --------------------------------------------------------------------------- from_dict / defaults


def test_from_empty_dict_gives_defaults() -> None:
    assert from_dict(RunConfig, {}) == RunConfig()
    assert from_dict(RunConfig, None) == RunConfig()
    default = RunConfig()
    assert default.env == AtariConfig()
    assert default.replay == ReplayConfig()
    assert default.collect == CollectConfig()
    assert default.seed == 0


def test_partial_section_keeps_other_defaults() -> None:
    cfg = from_dict(RunConfig, {"env": {"frame_size": 84}})
    assert cfg.env.frame_size == 84
    assert cfg.env.id == AtariConfig().id
    assert cfg.env.frame_stack == AtariConfig().frame_stack
    assert cfg.collect == CollectConfig()
    assert cfg != RunConfig()


def test_from_dict_does_not_mutate_input() -> None:
    data = {"env": {"frame_size": 84}, "seed": 3}
    from_dict(RunConfig, data)
    assert data == {"env": {"frame_size": 84}, "seed": 3}


def test_overrides_land_nested_with_right_types() -> None:
    cfg = _from_overrides(["env.sticky_action_prob=0.0", "collect.num_envs=4", "seed=7"])
    assert cfg.env.sticky_action_prob == 0.0
    assert type(cfg.env.sticky_action_prob) is float
    assert cfg.collect.num_envs == 4
    assert type(cfg.collect.num_envs) is int
    assert cfg.seed == 7
    assert type(cfg.seed) is int
    # untouched fields keep defaults
    assert cfg.collect.num_workers == CollectConfig().num_workers
    assert cfg.env.frame_size == AtariConfig().frame_size


def test_exponent_without_a_dot_is_a_float() -> None:
    assert resolve_config("jepa-value-smoke", ["joint.adam_eps=1e-8"]).joint.adam_eps == 1e-8  # YAML: a string
    with pytest.raises(UserError, match="config key 'joint.adam_eps' expects float, got 'tiny'"):
        resolve_config("jepa-value-smoke", ["joint.adam_eps=tiny"])


def test_int_for_float_field_widens_to_float() -> None:
    cfg = _from_overrides(["env.sticky_action_prob=1"])
    assert cfg.env.sticky_action_prob == 1.0
    assert type(cfg.env.sticky_action_prob) is float
    cfg = from_dict(RunConfig, {"env": {"sticky_action_prob": 0}})
    assert type(cfg.env.sticky_action_prob) is float


@pytest.mark.parametrize("raw, expected", [("true", True), ("false", False), ("True", True), ("false ", False)])
def test_set_style_bool_values_parse_to_bool(raw: str, expected: bool) -> None:
    cfg = _from_overrides([f"env.episodic_life={raw}", f"env.fire_reset={raw}"])
    assert cfg.env.episodic_life is expected
    assert cfg.env.fire_reset is expected


def test_string_values_and_values_containing_equals() -> None:
    cfg = _from_overrides(["env.id=ALE/Pong-v5"])
    assert cfg.env.id == "ALE/Pong-v5"
    # only the first '=' separates key and value
    assert apply_overrides({}, ["env.id=a=b"]) == {"env": {"id": "a=b"}}


def test_later_override_wins() -> None:
    assert _from_overrides(["seed=1", "seed=2"]).seed == 2


def test_apply_overrides_returns_copy() -> None:
    data = {"env": {"frame_size": 64}, "seed": 0}
    out = apply_overrides(data, ["env.frame_size=84", "collect.num_envs=2"])
    assert out == {"env": {"frame_size": 84}, "seed": 0, "collect": {"num_envs": 2}}
    assert data == {"env": {"frame_size": 64}, "seed": 0}


def test_apply_overrides_parses_yaml_scalars() -> None:
    out = apply_overrides({}, ["a=0.5", "b=3", "c=true", "d=[1, 2]", "e=breakout", "f=", "g=null"])
    assert out == {"a": 0.5, "b": 3, "c": True, "d": [1, 2], "e": "breakout", "f": "", "g": None}
    assert type(out["b"]) is int and type(out["a"]) is float


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_is_named_and_valid_keys_listed() -> None:
    message = _user_error(_from_overrides, ["nope=1"])
    assert "'nope'" in message
    for key in ("env", "replay", "collect", "seed"):
        assert key in message


def test_unknown_nested_key_is_named_with_dotted_path() -> None:
    message = _user_error(_from_overrides, ["env.nope=1"])
    assert "'env.nope'" in message
    assert "env.frame_size" in message
    assert "env.sticky_action_prob" in message
    assert "collect.num_envs" not in message  # only the section's own keys are listed


def test_unknown_key_in_other_section() -> None:
    message = _user_error(from_dict, RunConfig, {"collect": {"num_env": 2}})
    assert "'collect.num_env'" in message
    assert "collect.num_envs" in message
    assert "collect.num_workers" in message


def test_unknown_key_in_dataclass_without_prefix() -> None:
    message = _user_error(from_dict, CollectConfig, {"bogus": 1})
    assert "'bogus'" in message
    assert "num_envs" in message


@dataclasses.dataclass(frozen=True)
class _Retiring:
    kept: int = 1
    retired: ClassVar[dict[str, Any]] = {"old_switch": True}


def test_a_retired_key_loads_at_the_value_kept_and_is_an_error_at_any_other() -> None:
    assert from_dict(_Retiring, {"old_switch": True, "kept": 3}) == _Retiring(kept=3)  # dropped: what the code does
    message = _user_error(from_dict, _Retiring, {"old_switch": False}, "section.")
    assert message.startswith("config key 'section.old_switch' was removed")
    assert "old_switch=True" in message and "False needs an older mbrl" in message
    assert "retired" not in to_dict(_Retiring())  # never written out again


# --------------------------------------------------------------------------- wrong types


def test_string_for_int_field_is_rejected_naming_key() -> None:
    message = _user_error(_from_overrides, ["collect.num_envs=abc"])
    assert "'collect.num_envs'" in message
    assert "int" in message
    assert "abc" in message


@pytest.mark.parametrize("override", ["seed=true", "collect.num_envs=false", "env.frame_size=True"])
def test_bool_for_int_field_is_rejected(override: str) -> None:
    key = override.split("=")[0]
    message = _user_error(_from_overrides, [override])
    assert f"'{key}'" in message


def test_bool_for_int_field_is_rejected_from_dict() -> None:
    _user_error(from_dict, RunConfig, {"seed": True})


@pytest.mark.parametrize(
    "override",
    ["seed=1.5", "env.fire_reset=1", "env.sticky_action_prob=true", "env.sticky_action_prob=abc", "env.id=5",
     "seed=[1, 2]", "seed=null"],
)
def test_other_wrong_types_are_rejected(override: str) -> None:
    key = override.split("=")[0]
    assert f"'{key}'" in _user_error(_from_overrides, [override])


def test_section_set_to_scalar_is_rejected() -> None:
    message = _user_error(_from_overrides, ["env=3"])
    assert "'env'" in message
    assert "section" in message


def test_subkey_of_scalar_is_rejected() -> None:
    # with a base dict holding seed as a scalar, 'seed.x' cannot descend into it
    message = _user_error(apply_overrides, {"seed": 0}, ["seed.x=1"])
    assert "seed" in message
    # without a base, the scalar field receives a dict and from_dict rejects it
    assert "'seed'" in _user_error(_from_overrides, ["seed.x=1"])


@pytest.mark.parametrize("bad", ["seed", "env.frame_size", "=3", ""])
def test_malformed_override_is_rejected(bad: str) -> None:
    message = _user_error(apply_overrides, {}, [bad])
    assert "key.sub=value" in message


# --------------------------------------------------------------------------- frozen, to_dict, dump_yaml


def test_configs_are_frozen() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.env.frame_size = 84  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.collect.num_envs = 1  # type: ignore[misc]
    assert cfg.seed == 0 and cfg.env.frame_size == 64 and cfg.collect.num_envs == 8


def test_configs_are_hashable_and_compare_by_value() -> None:
    a = _from_overrides(["seed=3"])
    b = _from_overrides(["seed=3"])
    assert a == b and hash(a) == hash(b)
    assert a != RunConfig()


def test_to_dict_is_plain_nested_dicts() -> None:
    cfg = _from_overrides(["seed=5", "env.frame_size=84"])
    data = to_dict(cfg)
    assert data["seed"] == 5
    assert data["env"]["frame_size"] == 84
    assert list(data) == [f.name for f in dataclasses.fields(RunConfig)] and "world_model" in data
    assert type(data["env"]) is dict
    assert set(data["env"]) == {f.name for f in dataclasses.fields(AtariConfig)}


def test_dump_yaml_round_trip() -> None:
    cfg = _from_overrides(
        ["env.id=ALE/Pong-v5", "env.sticky_action_prob=0.0", "env.episodic_life=true", "collect.num_envs=3",
         "replay.flush_every=7", "seed=11"]
    )
    text = dump_yaml(cfg)
    loaded = yaml.safe_load(text)
    assert from_dict(RunConfig, loaded) == cfg
    assert loaded == to_dict(cfg)
    assert from_dict(RunConfig, yaml.safe_load(dump_yaml(RunConfig()))) == RunConfig()


def test_dump_yaml_keeps_field_order() -> None:
    loaded = yaml.safe_load(dump_yaml(RunConfig()))
    assert list(loaded) == [f.name for f in dataclasses.fields(RunConfig)]
    assert list(loaded["env"]) == [f.name for f in dataclasses.fields(AtariConfig)]


# --------------------------------------------------------------------------- presets and resolve_config


def test_breakout_preset_writes_out_the_defaults() -> None:
    path = preset_path("breakout")
    assert path == PRESET_DIR / "breakout.yaml"
    assert path.is_file()
    assert resolve_config("breakout", []) == RunConfig()
    # every field is written out in the preset file
    data = load_yaml(path)
    assert data == to_dict(RunConfig())


def test_smoke_preset() -> None:
    cfg = resolve_config("smoke", [])
    assert cfg.collect.num_envs == 2
    assert cfg.collect.num_workers == 0
    assert cfg.replay.flush_every == 20
    assert cfg.env.id == "ALE/Breakout-v5"


def test_pong_preset_and_overrides_on_top_of_preset() -> None:
    assert resolve_config("pong", []).env.id == "ALE/Pong-v5"
    cfg = resolve_config("smoke", ["collect.num_envs=5", "env.frame_size=84"])
    assert cfg.collect.num_envs == 5
    assert cfg.collect.num_workers == 0  # from the preset
    assert cfg.env.frame_size == 84


def test_a_saved_loop_section_without_real_updates_loads_and_one_with_them_is_refused() -> None:
    """Runs saved before the DQN's updates on real transitions were removed write `loop.real_updates`: at 0.0 (the
    dream-only loop, what the code still does) they load as they were made; any other value is a one-line error."""
    saved = to_dict(RunConfig())
    saved["loop"]["real_updates"] = 0.0
    assert resolve_config(None, [], base=saved) == RunConfig()
    message = _user_error(resolve_config, None, ["loop.real_updates=1.0"], base=saved)
    assert message.startswith("config key 'loop.real_updates' was removed")
    assert "real_updates=0.0" in message and "1.0 needs an older mbrl" in message


def test_no_preset_gives_defaults_plus_overrides() -> None:
    assert resolve_config(None, []) == RunConfig()
    assert resolve_config(None, ["seed=9"]) == dataclasses.replace(RunConfig(), seed=9)


def test_unknown_preset_lists_available() -> None:
    message = _user_error(resolve_config, "no_such_preset", [])
    assert "no_such_preset" in message
    assert "breakout" in message
    assert "smoke" in message
    assert "pong" in message


def test_overrides_unknown_key_through_resolve_config() -> None:
    message = _user_error(resolve_config, "smoke", ["env.nope=1"])
    assert "'env.nope'" in message and "env.frame_size" in message


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_path_preset(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mine{suffix}"
    path.write_text("env:\n  id: ALE/Pong-v5\n  frame_size: 84\ncollect:\n  num_envs: 3\nseed: 5\n")
    assert preset_path(str(path)) == path
    cfg = resolve_config(str(path), ["seed=6"])
    assert cfg.env.id == "ALE/Pong-v5"
    assert cfg.env.frame_size == 84
    assert cfg.collect.num_envs == 3
    assert cfg.seed == 6
    assert cfg.replay == ReplayConfig()


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_yaml(path) == {}
    assert resolve_config(str(path), []) == RunConfig()


def test_yaml_file_with_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("env:\n  frame_sise: 84\n")
    message = _user_error(resolve_config, str(path), [])
    assert "'env.frame_sise'" in message and "env.frame_size" in message


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"], ids=["list", "string", "int"])
def test_yaml_file_that_is_not_a_mapping_is_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = _user_error(resolve_config, str(path), [])
    assert "mapping" in message
    assert str(path) in message


@pytest.mark.parametrize(
    "text",
    ["env: [1, 2\n", "env:\n  id: a\n   frame_size: 3\n", "a: b: c\n", "key: 'unterminated\n", "\tenv: 1\n"],
    ids=["unclosed-list", "bad-indent", "nested-colon", "unterminated-quote", "tab"],
)
def test_malformed_yaml_is_rejected_on_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    message = _user_error(resolve_config, str(path), [])
    assert str(path) in message
    assert "cannot read config file" in message


def test_missing_yaml_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    message = _user_error(resolve_config, str(path), [])
    assert "not found" in message
    assert str(path) in message


def test_yaml_path_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert str(directory) in _user_error(load_yaml, directory)


def test_non_utf8_yaml_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"env:\n  id: caf\xe9\n")
    message = _user_error(load_yaml, path)
    assert str(path) in message


def test_resolve_config_with_base_applies_overrides_on_top() -> None:
    saved_cfg = _from_overrides(["env.id=ALE/Pong-v5", "collect.num_envs=3", "seed=4"])
    saved = yaml.safe_load(dump_yaml(saved_cfg))
    snapshot = yaml.safe_load(dump_yaml(saved_cfg))

    cfg = resolve_config(None, ["seed=8", "env.frame_size=84"], base=saved)
    assert cfg.seed == 8
    assert cfg.env.frame_size == 84
    assert cfg.env.id == "ALE/Pong-v5"  # from the base, not the defaults
    assert cfg.collect.num_envs == 3
    assert saved == snapshot, "resolve_config must not mutate the base dict"

    assert resolve_config(None, [], base=saved) == saved_cfg


def test_resolve_config_base_takes_precedence_over_preset() -> None:
    saved = to_dict(_from_overrides(["collect.num_envs=3"]))
    # the preset is ignored when a base (a saved run's config) is given, even an unknown one
    cfg = resolve_config("no_such_preset", [], base=saved)
    assert cfg.collect.num_envs == 3
    assert resolve_config("smoke", [], base=saved).collect.num_workers == CollectConfig().num_workers


def test_resolve_config_with_empty_base_gives_defaults() -> None:
    # an empty base is a base: defaults, not the preset
    assert resolve_config("smoke", [], base={}) == RunConfig()


def test_resolve_config_base_is_validated() -> None:
    message = _user_error(resolve_config, None, [], base={"env": {"bogus": 1}})
    assert "'env.bogus'" in message


def test_a_partial_section_keeps_the_field_default_not_its_class_default() -> None:
    config = from_dict(RunConfig, {"mpc": {"search": {"horizon": 16}}})
    assert config.mpc.search == dataclasses.replace(MPCConfig().search, horizon=16)
    assert (config.mpc.search.candidates, config.mpc.search.iterations) == (64, 2), "not PlannerConfig's 512 and 4"
    assert from_dict(RunConfig, {"mpc": {"discount": 0.9}}).mpc.search == MPCConfig().search
