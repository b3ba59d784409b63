"""Gymnasium registration of the dream: make/make_vec from a run directory, config pass-through, errors."""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
import yaml

import mbrl.envs.registration
from mbrl.core.checkpoint import CheckpointError
from mbrl.core.errors import UserError
from mbrl.core.run import RunDir
from mbrl.envs import DreamConfig, DreamEnv, DreamVectorEnv
from mbrl.envs.registration import DREAM_ID, dream_config, load_run, make_dream_vector_env
from mbrl.world_models.jepa import JEPAWorldModel
from tests.toys import HOLDOUT_EVERY, TINY, make_run


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny"
    make_run(path)
    return path


def test_make_gives_a_dream_env_with_the_saved_world_model(run_path: Path) -> None:
    assert DREAM_ID in gymnasium.registry and mbrl.envs.DREAM_ID == DREAM_ID
    env = gymnasium.make(DREAM_ID, checkpoint=str(run_path))
    dream = env.unwrapped
    assert isinstance(dream, DreamEnv) and env.spec is not None and env.spec.id == DREAM_ID
    assert env.spec.max_episode_steps is None  # the dream truncates itself at its horizon
    model = dream.vector.world_model
    assert not model.training and dream.vector.config == DreamConfig()
    torch.manual_seed(0)
    saved = JEPAWorldModel(TINY).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])

    obs, info = env.reset(seed=0)
    assert obs.shape == (2, 32) and obs.dtype == np.float32 and obs in env.observation_space
    obs, reward, terminated, truncated, info = env.step(1)
    assert obs.shape == (2, 32) and isinstance(reward, float) and set(info) == {"cont", "life_loss", "expected_reward"}
    env.close()


def test_make_vec_gives_a_batched_dream(run_path: Path) -> None:
    vec = gymnasium.make_vec(DREAM_ID, num_envs=4, vectorization_mode="vector_entry_point", checkpoint=run_path)
    assert isinstance(vec, DreamVectorEnv) and vec.num_envs == 4
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (4, 2, 32)
    obs, reward, terminated, truncated, _ = vec.step(np.array([0, 1, 2, 3]))
    assert obs.shape == (4, 2, 32) and reward.shape == terminated.shape == truncated.shape == (4,)
    # without a vectorization mode, make_vec uses the vector entry point too
    assert isinstance(gymnasium.make_vec(DREAM_ID, num_envs=2, checkpoint=run_path), DreamVectorEnv)


def test_dream_config_fields_pass_through(run_path: Path) -> None:
    # threshold 1.0: the random tiny model never terminates, so only the horizon ends episodes
    env = gymnasium.make(DREAM_ID, checkpoint=run_path, horizon=3, termination_threshold=1.0, seed=5)
    assert env.unwrapped.vector.config == DreamConfig(horizon=3, termination_threshold=1.0)
    env.reset()
    assert [env.step(0)[3] for _ in range(3)] == [False, False, True]

    vec = gymnasium.make_vec(DREAM_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=run_path,
                             observation="pixels", horizon=2, termination_threshold=1.0, render_mode="rgb_array")
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 4, 64, 64) and obs.dtype == np.uint8
    vec.step(np.array([0, 0]))
    np.testing.assert_array_equal(vec.step(np.array([0, 0]))[3], [True, True])
    frames = vec.render()
    assert frames is not None and frames.shape == (2, 64, 64, 3)


def test_contexts_come_only_from_training_episodes(run_path: Path) -> None:
    vec = make_dream_vector_env(16, run_path, seed=0, horizon=1, termination_threshold=1.0)
    buffer = vec.buffer
    ids = buffer.episode_ids()
    held_out = ids[ids % HOLDOUT_EVERY == 0]
    np.testing.assert_array_equal(vec.episodes, ids[ids % HOLDOUT_EVERY != 0])
    buffer.sample(1, vec.context - 1, np.random.default_rng(0), held_out)  # held-out episodes could start contexts

    sampled: list[np.ndarray] = []
    sample_ends = buffer.sample_ends

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        ends = sample_ends(*args, **kwargs)  # type: ignore[arg-type]
        sampled.append(buffer.windows(ends, 0).episodes)
        return ends

    buffer.sample_ends = spy  # type: ignore[method-assign]
    vec.reset()
    for _ in range(5):  # horizon 1: every sub-env restarts every other step
        vec.step(np.zeros(16, np.int64))
    starts = np.concatenate(sampled)
    assert len(starts) >= 16 * 3 and len(np.unique(starts)) > 3
    assert (starts % HOLDOUT_EVERY != 0).all()


def test_missing_run_or_checkpoint_raises_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run at") as missing_run:
        gymnasium.make(DREAM_ID, checkpoint=tmp_path / "nowhere")
    assert "\n" not in str(missing_run.value)

    make_run(tmp_path / "untrained", checkpoint=False)
    expected = tmp_path / "untrained" / "checkpoints" / "world_model.json"
    with pytest.raises(CheckpointError, match="checkpoint not found") as missing_checkpoint:
        gymnasium.make(DREAM_ID, checkpoint=tmp_path / "untrained")
    assert str(expected) in str(missing_checkpoint.value) and "\n" not in str(missing_checkpoint.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        gymnasium.make_vec(DREAM_ID, num_envs=2, checkpoint=tmp_path / "untrained")


def test_unknown_dream_options_are_named(run_path: Path) -> None:
    with pytest.raises(TypeError, match="'horizn'.*horizon, context, observation"):
        gymnasium.make(DREAM_ID, checkpoint=run_path, horizn=3)
    with pytest.raises(TypeError, match="'horizn'"):
        make_dream_vector_env(2, run_path, horizn=3)
    with pytest.raises(ValueError, match="observation"):
        gymnasium.make(DREAM_ID, checkpoint=run_path, observation="rgb")


def test_device_auto_picks_an_available_device(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.zeros(1, device=dream_config(device="auto").device)  # this machine's pick holds tensors
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert dream_config(device="auto").device == expected
    assert dream_config(device="cpu", horizon=4) == DreamConfig(device="cpu", horizon=4)


def test_importing_again_registers_once() -> None:
    spec = gymnasium.spec(DREAM_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is overridden
        importlib.reload(mbrl.envs.registration)
    assert gymnasium.spec(DREAM_ID) is spec


def test_env_made_by_id_is_the_runs_dream(tmp_path: Path) -> None:
    """The run's saved dream section decides the dream made by id; a keyword overrides one field; the env made by
    id and the one built through the Python API from the same run step alike under the same seed and actions."""
    make_run(tmp_path / "run")
    run = RunDir(tmp_path / "run")
    saved = {"horizon": 5, "reward": "expected", "termination": "sample", "termination_threshold": 0.3,
             "terminate_on": "life_loss", "device": "cpu"}
    config = {**run.read_config(), "dream": saved}
    run.config_path.write_text(yaml.safe_dump(config))

    expected = DreamConfig(horizon=5, reward="expected", termination="sample", termination_threshold=0.3,
                           terminate_on="life_loss")
    by_id = gymnasium.make(DREAM_ID, checkpoint=str(run.path), seed=3)
    assert by_id.unwrapped.vector.config == expected
    with gymnasium.make(DREAM_ID, checkpoint=str(run.path), horizon=2) as overridden:
        assert overridden.unwrapped.vector.config == dataclasses.replace(expected, horizon=2)

    model, buffer, episodes = load_run(run.path)
    direct = DreamEnv(model, buffer, expected, seed=3, episodes=episodes)
    actions = np.random.default_rng(0).integers(0, TINY.num_actions, 40)
    for env in (by_id, direct):
        env.reset(seed=11)
    rewards: list[tuple[float, float]] = []
    for action in actions:
        a, b = by_id.step(int(action)), direct.step(int(action))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        rewards.append((a[1], b[1]))
        if a[2] or a[3]:
            for env in (by_id, direct):
                env.reset()
    assert any(r != 0.0 for r, _ in rewards)  # expected rewards: the comparison saw values, not only zeros
    by_id.close()
