"""The SB3 adapter: same-step autoreset over a next-step vector dream, infos, seeding, and SB3 training on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from mbrl.agents.sb3 import DreamVecEnv, LatentVecEnv
from mbrl.envs.dream import DreamConfig, DreamEnv, DreamVectorEnv, latent_space
from mbrl.world_models.base import WorldModel
from tests.toys import Walker, make_buffer, start_values, tiny_jepa

# Walker in life_loss mode: action 2 terminates (life lost with probability 0.6), 3 steps truncate
CONFIG = DreamConfig(horizon=3, terminate_on="life_loss")


class CountingDream(DreamVectorEnv):
    """`DreamVectorEnv` that counts its reset calls, full or partial."""

    resets = 0

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.resets += 1
        return super().reset(seed=seed, options=options)


def dream(model: WorldModel, num_envs: int = 4, config: DreamConfig = CONFIG, seed: int = 0,
          random_frames: bool = False) -> CountingDream:
    return CountingDream(model, make_buffer(random_frames), num_envs, config, seed=seed)


def sync(model: WorldModel, num_envs: int = 4, config: DreamConfig = CONFIG, seed: int = 0) -> gym.vector.VectorEnv:
    """The same dream as one gymnasium SyncVectorEnv of single DreamEnvs (Monitor-wrapped)."""
    def make(i: int) -> Callable[[], gym.Env]:
        return lambda: Monitor(DreamEnv(model, make_buffer(), config, seed=seed + i))
    return gym.vector.SyncVectorEnv([make(i) for i in range(num_envs)])


BACKENDS = {"batched": dream, "sync": sync}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_episodes_restart_on_the_step_they_end(backend: str) -> None:
    model = Walker()
    venv = DreamVecEnv(BACKENDS[backend](model))
    assert venv.num_envs == 4 and venv.observation_space.shape == (2,) and venv.action_space == gym.spaces.Discrete(3)
    obs = venv.reset()
    assert obs.shape == (4, 2) and set(obs[:, 0].tolist()) <= start_values() and (obs[:, 1] == 0).all()

    script = [  # actions, then which sub-envs end: terminated (action 2) or truncated (3rd step of an episode)
        ([2, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]),
        ([0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]),
        ([0, 2, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]),  # env 1 terminates on its last step: not a time limit
        ([1, 1, 2, 1], [0, 0, 1, 0], [1, 0, 0, 0]),
        ([0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]),
        ([1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]),
    ]
    for actions, terminated, truncated in script:
        a = np.array(actions)
        expected = obs + np.stack([a, np.ones(4)], axis=1)  # Walker: x += a, t += 1
        obs, rewards, dones, infos = venv.step(a)
        ended = np.array(terminated, bool) | np.array(truncated, bool)
        np.testing.assert_array_equal(dones, ended)
        np.testing.assert_array_equal(rewards, (a == 1).astype(np.float32))  # no step is lost to a restart
        assert rewards.dtype == np.float32 and dones.dtype == bool and len(infos) == 4
        for i, info in enumerate(infos):
            assert info["TimeLimit.truncated"] == bool(truncated[i] and not terminated[i])
            if ended[i]:
                np.testing.assert_array_equal(info["terminal_observation"], expected[i])
                assert obs[i, 0] in start_values() and obs[i, 1] == 0  # already the next episode's first obs
            else:
                assert "terminal_observation" not in info
                np.testing.assert_array_equal(obs[i], expected[i])
            assert info["life_loss"] == pytest.approx(0.6 if actions[i] == 2 else 0.0)
    venv.close()


def test_one_batched_step_and_at_most_one_batched_restart_per_step() -> None:
    model = Walker()
    vector = dream(model)
    venv = DreamVecEnv(vector)
    venv.reset()
    assert vector.resets == 1 and model.observed[-1][0].shape[0] == 4
    venv.step(np.array([0, 0, 0, 0]))
    assert vector.resets == 1  # nothing ended: no restart
    prefills = len(model.observed)
    venv.step(np.array([2, 0, 2, 0]))
    assert vector.resets == 2 and len(model.observed) == prefills + 1  # one start (a pool of 4) for both
    venv.step(np.array([1, 1, 1, 1]))  # envs 1 and 3 reach the horizon
    assert vector.resets == 3 and len(model.observed) == prefills + 1  # the pool's other two


def test_seeding_replays_the_dream() -> None:
    def run(venv: DreamVecEnv, seed: int) -> list[np.ndarray]:
        venv.seed(seed)
        out = [venv.reset()]
        for a in np.random.default_rng(0).integers(0, 3, (12, 4)):
            obs, rewards, dones, infos = venv.step(a)
            out += [obs, rewards, dones]
            out += [info["terminal_observation"] for info in infos if "terminal_observation" in info]
        return out

    venv = DreamVecEnv(dream(Walker()))
    first = run(venv, 7)
    for a, b in zip(first, run(DreamVecEnv(dream(Walker(), seed=123)), 7), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, run(venv, 7), strict=True):  # a used adapter reseeds too
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, run(venv, 8)))


def test_attributes_methods_wrappers_and_images() -> None:
    model = Walker()
    venv = DreamVecEnv(CountingDream(model, make_buffer(), 3, CONFIG, seed=0, render_mode="rgb_array"))
    assert venv.render_mode == "rgb_array" and venv.get_attr("config") == [CONFIG] * 3
    assert venv.get_attr("num_envs", indices=[0, 2]) == [3, 3] and venv.has_attr("world_model")
    assert not venv.has_attr("no_such_attribute")
    venv.set_attr("marker", 5)
    assert venv.venv.marker == 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="indices"):
        venv.set_attr("marker", 6, indices=[1])
    obs = venv.reset()
    frames = venv.env_method("render")
    assert len(frames) == 3 and frames[0].shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="indices"):
        venv.env_method("render", indices=0)
    assert venv.env_is_wrapped(Monitor) == [False] * 3
    images = venv.get_images()
    assert len(images) == 3 and images[1] is not None and images[1].shape == (64, 64, 3)
    tiled = venv.render()
    assert tiled is not None and tiled.shape == (128, 128, 3)
    assert obs.shape == (3, 2)

    wrapped = DreamVecEnv(sync(model, 2))
    assert wrapped.env_is_wrapped(Monitor) == [True, True] and wrapped.env_is_wrapped(gym.Wrapper, 1) == [True]


def test_bad_vector_envs_are_refused() -> None:
    same_step = gym.vector.SyncVectorEnv([lambda: DreamEnv(Walker(), make_buffer(), CONFIG)],
                                         autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="autoreset"):
        DreamVecEnv(same_step)
    with pytest.raises(ValueError, match="one options dict"):
        venv = DreamVecEnv(dream(Walker()))
        venv.set_options([{"a": 1}, {}, {}, {}])
        venv.reset()
    with pytest.raises(RuntimeError, match="step_async"):
        DreamVecEnv(dream(Walker())).step_wait()


def test_the_adapter_runs_on_dream_vector_env_itself() -> None:
    venv = DreamVecEnv(DreamVectorEnv(Walker(), make_buffer(), 2, CONFIG, seed=0))
    venv.reset()
    _, _, dones, infos = venv.step(np.array([2, 0]))
    assert dones.tolist() == [True, False] and "terminal_observation" in infos[0]


@pytest.mark.parametrize("algorithm", ["PPO", "A2C", "DQN"])
def test_sb3_trains_on_the_adapter(algorithm: str) -> None:
    """JEPA latents are (2, 32): SB3's MlpPolicy flattens them (FlattenExtractor)."""
    venv = VecMonitor(DreamVecEnv(dream(tiny_jepa(), config=DreamConfig(horizon=5), random_frames=True)))
    assert venv.observation_space.shape == (2, 32)
    kwargs: dict[str, Any] = {"PPO": {"n_steps": 16, "batch_size": 32, "n_epochs": 1}, "A2C": {"n_steps": 4},
                              "DQN": {"learning_starts": 16, "buffer_size": 200, "batch_size": 8, "train_freq": 4}}
    agent = getattr(sb3, algorithm)("MlpPolicy", venv, seed=0, device="cpu", **kwargs[algorithm])
    extractor = agent.q_net.features_extractor if algorithm == "DQN" else agent.policy.features_extractor
    assert isinstance(extractor, FlattenExtractor) and extractor.features_dim == 64
    agent.learn(total_timesteps=64)
    assert agent.num_timesteps >= 64
    assert len(agent.ep_info_buffer) > 0  # horizon 5: episodes ended and VecMonitor saw them
    actions, _ = agent.predict(venv.reset(), deterministic=True)
    assert actions.shape == (4,)


class CornerCounter(gym.Env):
    """A real game stand-in: uint8 (2, 4, 4) frame stacks whose newest frame's corner pixel counts the steps of
    the episode, which ends after `length` steps."""

    observation_space = gym.spaces.Box(0, 255, (2, 4, 4), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, length: int) -> None:
        self.length, self.t = length, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros((2, 4, 4), np.uint8)
        obs[-1, 0, 0] = self.t
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), 1.0, self.t >= self.length, False, {}


def test_latent_vec_env_shows_an_agent_the_real_game_as_encoded_latents() -> None:
    """Observations and each ended episode's terminal observation are the world model's encodings (Walker:
    x = the newest frame's corner pixel), in the latent space; rewards and dones pass through."""
    model = Walker()
    venv = LatentVecEnv(DummyVecEnv([lambda: CornerCounter(3), lambda: CornerCounter(2)]), model)
    assert venv.observation_space == latent_space(model)
    np.testing.assert_array_equal(venv.reset(), [[0, 0], [0, 0]])
    venv.step_async(np.zeros(2, dtype=np.int64))
    obs, rewards, dones, infos = venv.step_wait()
    np.testing.assert_array_equal(obs, [[1, 0], [1, 0]])
    venv.step_async(np.zeros(2, dtype=np.int64))
    obs, rewards, dones, infos = venv.step_wait()  # the second game ends and restarts
    np.testing.assert_array_equal(obs, [[2, 0], [0, 0]])
    assert dones.tolist() == [False, True] and rewards.tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(infos[1]["terminal_observation"], [2, 0])
    assert "terminal_observation" not in infos[0]
