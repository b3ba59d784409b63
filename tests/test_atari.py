"""Real Atari envs: preprocessing, info, options, vectorisation, and collection into the buffer."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing

from mbrl.collect import Collector, RandomPolicy
from mbrl.core.errors import UserError
from mbrl.core.replay import FIRST, ReplayBuffer
from mbrl.envs.atari import INFO_KEYS, RAM_SIZE, AtariConfig, AtariFrames, make_env, make_vector_env

pytestmark = pytest.mark.slow  # needs ALE


def test_observations_and_info() -> None:
    env = make_env(AtariConfig())
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 64, 64) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert (obs[:3] == 0).all() and obs[3].any(), "zeros before the first frame, like ale_py.AtariVectorEnv"
    assert info["ram"].shape == (RAM_SIZE,) and info["ram"].dtype == np.uint8
    assert info["lives"] == 5 and info["life_loss"] is False
    frame = info["episode_frame_number"]
    nxt, _, _, _, info = env.step(2)
    np.testing.assert_array_equal(nxt[:3], obs[1:])
    assert info["episode_frame_number"] - frame == 4, "v5 made with frameskip=1 + our skip of 4, not 16"
    assert set(INFO_KEYS) <= set(info)


def test_frames_equal_gymnasium_atari_preprocessing() -> None:
    gym.register_envs(__import__("ale_py"))
    ref = AtariPreprocessing(gym.make("ALE/Breakout-v5", frameskip=1), noop_max=30, frame_skip=4, screen_size=64)
    ours = AtariFrames(gym.make("ALE/Breakout-v5", frameskip=1, obs_type="ram"), frame_skip=4, size=64, noop_max=30)
    a, _ = ref.reset(seed=11)
    b, _ = ours.reset(seed=11)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(150):
        action = int(rng.integers(0, 4))
        a, ra, ta, _, _ = ref.step(action)
        b, rb, tb, _, _ = ours.step(action)
        assert (ra, ta) == (rb, tb)
        if ta:
            break
        np.testing.assert_array_equal(a, b)


def test_fire_on_reset_and_noops() -> None:
    fire = make_env(AtariConfig(noop_max=0))
    _, info = fire.reset(seed=0)
    assert info["episode_frame_number"] == 4, "one FIRE step of 4 frames"
    plain = make_env(AtariConfig(noop_max=0, fire_reset=False))
    _, info = plain.reset(seed=0)
    assert info["episode_frame_number"] == 0
    noops = make_env(AtariConfig(noop_max=30, fire_reset=False))
    starts = {noops.reset(seed=s)[1]["episode_frame_number"] for s in range(6)}
    assert len(starts) > 1 and all(1 <= s <= 30 for s in starts)


def test_life_loss_episodic_life_and_reward_clipping() -> None:
    env = make_env(AtariConfig(episodic_life=True, clip_rewards=True))
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        _, reward, terminated, truncated, info = env.step(int(rng.integers(0, 4)))
        assert reward == np.sign(info["raw_reward"])
        if info["life_loss"]:
            break
    assert info["life_loss"] and terminated and info["lives"] == 4
    _, info = env.reset()
    assert info["lives"] == 4, "episodic life continues the same game"


def test_pong_works_too() -> None:
    env = make_env(AtariConfig(id="ALE/Pong-v5"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 64, 64)
    assert env.action_space.n == 6
    env.step(0)


@pytest.mark.parametrize("env_id, message", [("NotAnEnv-v0", "unknown env id"), ("CartPole-v1", "not an Atari")])
def test_bad_env_ids(env_id: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make_env(AtariConfig(id=env_id))


SHORT = AtariConfig(max_episode_frames=240)  # truncates after about 60 steps: many autoresets


def test_sharded_vector_env_matches_in_process_and_autoresets() -> None:
    runs = []
    for workers in (0, 2):
        env = make_vector_env(SHORT, num_envs=3, num_workers=workers)
        obs, _ = env.reset(seed=4)
        rng = np.random.default_rng(0)
        steps = [(obs,)]
        for _ in range(130):
            steps.append(env.step(rng.integers(0, 4, 3)))
        env.close()
        runs.append(steps)
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            if isinstance(x, dict):
                for key in INFO_KEYS:
                    np.testing.assert_array_equal(x[key], y[key])
            else:
                np.testing.assert_array_equal(x, y)
    ended = 0
    for before, after in zip(runs[0][1:], runs[0][2:]):
        done = before[2] | before[3]
        ended += done.sum()
        assert (after[0][done][:, :3] == 0).all(), "the step after an end is a reset observation"
        assert (after[1][done] == 0).all() and not after[2][done].any()
    assert ended >= 3


def collect(directory, workers: int, steps: int = 400) -> tuple[list[np.ndarray], object, ReplayBuffer]:
    env = make_vector_env(SHORT, num_envs=4, num_workers=workers)
    buffer = ReplayBuffer.open(directory, (64, 64), 4, RAM_SIZE)
    seen = []
    random = RandomPolicy(env.single_action_space, seed=0)

    def policy(obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        seen.append(obs.copy())
        return random(obs)

    collector = Collector(env, buffer, seed=0)
    stats = collector.run(steps, policy, flush_every=7, progress=False)
    collector.close()
    buffer.close()
    return seen, stats, ReplayBuffer.load(directory)


@pytest.mark.parametrize("workers", [0, 2])
def test_collected_stacks_rebuild_exactly_what_the_policy_saw(tmp_path, workers: int) -> None:
    seen, stats, loaded = collect(tmp_path, workers)
    assert 400 <= stats.steps < 404 and len(stats.episode_returns) >= 4
    assert loaded.num_steps == stats.steps and loaded.num_episodes == len(stats.episode_returns)
    seen = np.concatenate(seen)  # rows are stored in the order the policy saw them (shard by shard)
    rebuilt = loaded.windows(np.arange(len(seen)), 0).frames[:, 0]
    np.testing.assert_array_equal(rebuilt, seen)


def test_the_policy_is_told_where_episodes_start(tmp_path) -> None:
    env = make_vector_env(SHORT, num_envs=2, num_workers=0)
    buffer = ReplayBuffer.open(tmp_path, (64, 64), 4, RAM_SIZE)
    random = RandomPolicy(env.single_action_space, seed=0)
    starts: list[np.ndarray] = []

    def policy(obs: np.ndarray, start: np.ndarray) -> np.ndarray:
        starts.append(start.copy())
        return random(obs)

    collector = Collector(env, buffer, seed=0)
    collector.run(150, policy, progress=False)
    collector.run(50, policy, progress=False)  # a second run goes on where the first stopped
    collector.close()
    loaded = ReplayBuffer.load(tmp_path)
    flags = loaded._rows["flags"][: len(loaded)].reshape(-1, 2)  # one row per env and vector step
    assert len(starts) == len(flags) - 1  # the policy never sees the last observation
    assert ((flags[1:-1] & FIRST) > 0).sum() >= 2  # episodes restarted in between
    np.testing.assert_array_equal(np.stack(starts), (flags[:-1] & FIRST) > 0)


def test_collection_is_deterministic_under_a_seed(tmp_path) -> None:
    collect(tmp_path / "a", workers=2)
    collect(tmp_path / "b", workers=2)
    a, b = ((tmp_path / name / "rows.bin").read_bytes() for name in "ab")
    assert len(a) > 0 and a == b


def test_shard_by_shard_stepping_equals_lockstep() -> None:
    results = []
    for shard_wise in (False, True):
        env = make_vector_env(SHORT, num_envs=4, num_workers=2)
        env.reset(seed=3)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(80):
            actions = rng.integers(0, 4, 4)
            if shard_wise:
                for shard, (lo, hi) in enumerate(env.shards):
                    env.send(shard, actions[lo:hi])
                parts = [env.recv(shard) for shard in range(len(env.shards))]
                out.append(np.concatenate([p[0] for p in parts]))
            else:
                out.append(env.step(actions)[0])
        env.close()
        results.append(np.stack(out))
    np.testing.assert_array_equal(*results)
