"""Dream env: closed-form imagination on a toy world model, autoreset, seeding, bad input, checkers, SB3."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import Tensor

from mbrl.agents.sb3_agent import ALGOS
from mbrl.envs.dream import DreamConfig, DreamEnv, DreamVectorEnv, _check_finite, latent_space
from mbrl.envs.registration import DREAM_ID
from mbrl.envs.wrappers import LatentObservation, LatentObservationVector
from mbrl.world_models.base import StepOutput, map_state
from mbrl.world_models.jepa import JEPAWorldModel
from mbrl.world_models.latent_cache import LatentCache
from tests.toys import TINY, Walker, make_buffer, make_run, start_values, tiny_jepa

# ---- closed form -----------------------------------------------------------------------------


def test_dream_follows_the_closed_form() -> None:
    model = Walker()
    env = DreamVectorEnv(model, make_buffer(), 3, DreamConfig(horizon=4), seed=0)
    assert env.single_observation_space == latent_space(model) and env.single_action_space == gym.spaces.Discrete(3)
    obs, info = env.reset()
    assert obs.shape == (3, 2) and obs.dtype == np.float32 and info == {}
    assert set(obs[:, 0].tolist()) <= start_values() and (obs[:, 1] == 0).all()

    # the start context: 4 consecutive observations of one episode and the 3 actions between them
    latents, actions = model.observed[-1]
    assert latents.shape == (3, 4, 2) and actions.shape == (3, 3)
    x = latents[..., 0].numpy()
    assert (np.diff(x, axis=1) == 3).all() and (x[:, -1] == obs[:, 0]).all()
    np.testing.assert_array_equal(actions.numpy(), (x[:, 1:] % 40 // 3) % 3)

    position = obs[:, 0].copy()
    for t, step_actions in enumerate([[0, 1, 2], [1, 1, 0], [2, 0, 1], [1, 2, 0]], start=1):
        a = np.array(step_actions)
        obs, reward, terminated, truncated, info = env.step(a)
        position += a
        np.testing.assert_array_equal(obs, np.stack([position, np.full(3, t)], axis=1))
        np.testing.assert_array_equal(reward, (a == 1).astype(float))  # round(0.75) = 1, round(-0.25) = 0
        np.testing.assert_array_equal(info["expected_reward"], np.choose(a, [0.0, 0.75, -0.25]).astype(np.float32))
        np.testing.assert_array_equal(info["life_loss"], np.where(a == 2, 0.6, 0.0).astype(np.float32))
        np.testing.assert_array_equal(info["cont"], np.ones(3, np.float32))
        assert not terminated.any()  # a life loss does not end a game_over episode
        np.testing.assert_array_equal(truncated, np.full(3, t == 4))


def test_termination_and_reward_modes() -> None:
    game_over = DreamVectorEnv(Walker(end=3), make_buffer(), 2, DreamConfig(reward="expected"), seed=0)
    game_over.reset()
    for t in (1, 2, 3):
        _, reward, terminated, truncated, _ = game_over.step(np.array([1, 2]))
        np.testing.assert_array_equal(reward, [0.75, -0.25])
        np.testing.assert_array_equal(terminated, np.full(2, t == 3))
        assert not truncated.any()

    life_loss = DreamVectorEnv(Walker(), make_buffer(), 3, DreamConfig(terminate_on="life_loss"), seed=0)
    life_loss.reset()
    np.testing.assert_array_equal(life_loss.step(np.array([0, 1, 2]))[2], [False, False, True])
    strict = DreamVectorEnv(Walker(), make_buffer(), 1, DreamConfig(terminate_on="life_loss",
                                                                     termination_threshold=0.7), seed=0)
    strict.reset()
    assert not strict.step(np.array([2]))[2].any()  # probability 0.6 does not exceed 0.7
    sampled = DreamVectorEnv(Walker(), make_buffer(), 4000, DreamConfig(terminate_on="life_loss",
                                                                        termination="sample"), seed=0)
    sampled.reset()
    ended = sampled.step(np.repeat([0, 2], 2000))[2]
    assert not ended[:2000].any() and abs(ended[2000:].mean() - 0.6) < 0.04  # Bernoulli(0.6): 4 sigma is 0.044


def test_vector_env_autoresets_on_the_next_step() -> None:
    model = Walker()
    env = DreamVectorEnv(model, make_buffer(), 2, DreamConfig(horizon=3, terminate_on="life_loss"), seed=1)
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    env.reset()
    _, _, terminated, _, _ = env.step(np.array([2, 0]))
    np.testing.assert_array_equal(terminated, [True, False])

    obs, reward, terminated, truncated, info = env.step(np.array([1, 1]))  # env 0 restarts, ignoring its action
    assert obs[0, 0] in start_values() and obs[0, 1] == 0 and obs[1, 1] == 2
    np.testing.assert_array_equal(reward, [0.0, 1.0])
    assert not terminated.any() and not truncated.any()
    np.testing.assert_array_equal(info["_cont"], [False, True])
    assert model.observed[-1][0].shape == (2, 4, 2)  # restarts draw on a pool prefilled num_envs at a time
    prefills = len(model.observed)

    _, _, _, truncated, _ = env.step(np.array([0, 0]))
    np.testing.assert_array_equal(truncated, [False, True])
    obs, reward, _, truncated, _ = env.step(np.array([0, 1]))
    np.testing.assert_array_equal(obs[:, 1], [2, 0])
    np.testing.assert_array_equal(reward, [0.0, 0.0])
    assert not truncated.any()
    assert len(model.observed) == prefills  # env 1 restarted from the pool's second start


def test_prefilled_starts_are_dropped_when_the_weights_change() -> None:
    model = Walker()
    model.register_parameter("weight", torch.nn.Parameter(torch.zeros(1)))
    env = DreamVectorEnv(model, make_buffer(), 4, DreamConfig(), seed=0)
    env.reset()
    env.reset(options={"reset_mask": np.array([True, False, False, False])})
    prefills = len(model.observed)
    env.reset(options={"reset_mask": np.array([False, True, False, False])})
    assert len(model.observed) == prefills  # from the pool
    with torch.no_grad():
        model.weight.add_(1.0)  # e.g. an optimiser step
    env.reset(options={"reset_mask": np.array([False, False, True, False])})
    assert len(model.observed) == prefills + 1
    env.reset(options={"reset_mask": np.array([True, True, True, True])})  # more than the pool holds: a new one
    assert len(model.observed) == prefills + 2 and model.observed[-1][0].shape[0] == 4


def test_pixel_observations_are_stacks_of_decoded_frames() -> None:
    model = Walker()
    config = DreamConfig(horizon=2, observation="pixels")
    env = DreamVectorEnv(model, make_buffer(), 2, config, seed=0, render_mode="rgb_array")
    assert env.single_observation_space == gym.spaces.Box(0, 255, (4, 64, 64), np.uint8)
    obs, _ = env.reset()
    context_x = model.observed[-1][0][..., 0].numpy()  # (2, 4): the stack decodes the context's latents
    np.testing.assert_array_equal(obs[:, :, 0, 0], context_x)
    assert obs.dtype == np.uint8 and (obs == obs[:, :, :1, :1]).all()

    obs, *_ = env.step(np.array([1, 2]))
    np.testing.assert_array_equal(obs[:, :3, 0, 0], context_x[:, 1:])
    np.testing.assert_array_equal(obs[:, 3, 0, 0], context_x[:, -1] + [1 + 16, 2 + 16])
    frames = env.render()
    assert frames is not None and frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[:, 0, 0], np.repeat(obs[:, 3, 0, 0, None], 3, axis=1))

    short = DreamVectorEnv(model, make_buffer(), 1, DreamConfig(context=2, observation="pixels"), seed=0)
    obs, _ = short.reset()
    x = model.observed[-1][0][0, :, 0].numpy()  # 2 context observations: the oldest fills the stack
    np.testing.assert_array_equal(obs[0, :, 0, 0], [x[0], x[0], x[0], x[1]])


class EndOnThree(JEPAWorldModel):
    """A tiny JEPA that keeps 8 latents of history, never ends the game, and loses a life exactly on action 3."""

    def step(self, state: dict[str, Tensor], action: Tensor, latent: bool = True) -> StepOutput:
        out = super().step(state, action)
        return out._replace(cont=torch.ones_like(out.cont), life_loss=(action == 3).float())


def test_a_restart_leaves_the_other_sub_envs_untouched() -> None:
    """The JEPA state has one shape for every context length, so restarts use the configured context."""
    torch.manual_seed(0)
    model = EndOnThree(dataclasses.replace(TINY, context=8)).eval()
    config = DreamConfig(terminate_on="life_loss", context=3)
    restarting = DreamVectorEnv(model, make_buffer(random_frames=True), 2, config, seed=0)
    steady = DreamVectorEnv(model, make_buffer(random_frames=True), 2, config, seed=0)
    assert restarting.context == 3
    restarting.reset()
    steady.reset()
    for first_actions in ([3, 1], [0, 2], [1, 0], [3, 1], [2, 2]):  # env 0 restarts after every 3
        a, b = restarting.step(np.array(first_actions)), steady.step(np.array([0, first_actions[1]]))
        torch.testing.assert_close(a[0][1], b[0][1])  # env 1 imagines the same either way
        assert a[2][0] == (first_actions[0] == 3)


# ---- seeding and bad input -------------------------------------------------------------------


def rollout(env: DreamVectorEnv, seed: int | None, steps: int = 20, render: bool = False) -> list[np.ndarray]:
    actions = np.random.default_rng(123).integers(0, 3, (steps, env.num_envs))
    out = [env.reset(seed=seed)[0]]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out += [obs, reward, terminated, truncated]
        if render:
            env.render()
    return out


def test_same_seed_and_actions_give_the_same_dream() -> None:
    config = DreamConfig(horizon=5, terminate_on="life_loss")
    env = DreamVectorEnv(Walker(end=4), make_buffer(), 4, config)
    first = rollout(env, seed=7)
    again = rollout(DreamVectorEnv(Walker(end=4), make_buffer(), 4, config), seed=7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, rollout(env, seed=7)):  # reseeding a used env replays it
        np.testing.assert_array_equal(a, b)
    seeded_at_start = DreamVectorEnv(Walker(end=4), make_buffer(), 4, config, seed=7, render_mode="rgb_array")
    for a, b in zip(first, rollout(seeded_at_start, seed=None, render=True)):  # rendering changes nothing
        np.testing.assert_array_equal(a, b)
    other = rollout(env, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


class CountingJEPA(JEPAWorldModel):
    """A JEPA model that counts the observations it encodes."""

    encoded = 0

    def encode(self, frames: Tensor) -> Tensor:
        self.encoded += frames.shape[0] * frames.shape[1]
        return super().encode(frames)


def test_latent_cache_encodes_each_row_once_and_changes_nothing() -> None:
    torch.manual_seed(0)
    model = CountingJEPA(TINY).eval()
    buffer = make_buffer(random_frames=True)
    config = DreamConfig(horizon=3)
    cache = LatentCache(model, buffer.stacks)
    cached = rollout(DreamVectorEnv(model, buffer, 4, config, latent_cache=cache), seed=3)
    encoded = model.encoded
    rows = len(buffer)
    assert 0 < encoded <= rows  # never a row twice (context windows overlap and repeat)
    again = rollout(DreamVectorEnv(model, buffer, 4, config, latent_cache=cache), seed=3)
    assert model.encoded == encoded  # a second env on the same cache encodes nothing new
    cache.clear()
    fresh = rollout(DreamVectorEnv(model, buffer, 4, config, latent_cache=cache), seed=3)
    assert model.encoded == 2 * encoded
    for a, b, c in zip(cached, again, fresh):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    batch = buffer.sample(6, 3, np.random.default_rng(0))
    direct = model.encode(torch.as_tensor(batch.frames))
    torch.testing.assert_close(cache.encode(batch.rows, torch.device("cpu")), direct)


def test_dream_leaves_torch_global_generator_alone() -> None:
    env = DreamVectorEnv(Walker(), make_buffer(), 2, DreamConfig(), seed=0)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rollout(env, seed=0, steps=3)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("actions", "message"),
    [([-1, 0], r"in \[0, 3\)"), ([3, 0], r"in \[0, 3\)"), ([1.5, 0.0], "integers"), ([1.0, 0.0], "integers"),
     ([0, 0, 0], "shape"), ([[0, 0]], "shape"), ([True, False], "integers")],
)
def test_bad_actions_raise(actions: list, message: str) -> None:
    env = DreamVectorEnv(Walker(), make_buffer(), 2, DreamConfig(), seed=0)
    env.reset()
    with pytest.raises(ValueError, match=message):
        env.step(np.array(actions))


@pytest.mark.parametrize(("action", "message"), [(-1, "in"), (3, "in"), (1.5, "integers"), (np.array([0]), "scalar")])
def test_bad_single_env_actions_raise(action: object, message: str) -> None:
    env = DreamEnv(Walker(), make_buffer(), DreamConfig(), seed=0)
    env.reset()
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize("output", ["latent", "reward", "cont"])
def test_non_finite_predictions_raise_naming_the_output(output: str) -> None:
    model = Walker()
    env = DreamVectorEnv(model, make_buffer(), 2, DreamConfig(), seed=0)
    env.reset()
    model.poison = output
    with pytest.raises(FloatingPointError, match=output):
        env.step(np.array([0, 1]))


def test_finite_check_clears_overflowing_sums_and_ignores_rows_not_asked_about() -> None:
    _check_finite(None, latent=torch.full((4, 3), 3e38), reward=torch.zeros(4))  # the sum overflows, no value does
    poisoned = torch.zeros(4, 3)
    poisoned[1, 0] = float("nan")
    _check_finite(np.array([True, False, True, True]), latent=poisoned)  # row 1 ended: its output is not used
    with pytest.raises(FloatingPointError, match="latent"):
        _check_finite(np.ones(4, dtype=bool), reward=torch.zeros(4), latent=poisoned)


def test_single_env_needs_a_reset_after_the_episode_ends() -> None:
    env = DreamEnv(Walker(), make_buffer(), DreamConfig(horizon=2), seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    obs, info = env.reset()
    assert obs.shape == (2,) and info == {}
    obs, reward, terminated, truncated, info = env.step(1)
    assert (reward, terminated, truncated) == (1.0, False, False) and isinstance(reward, float)
    assert info == {"cont": 1.0, "life_loss": 0.0, "expected_reward": 0.75}
    assert env.step(np.int64(0))[3] is True
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


# ---- checkers, SB3 and real-env wrappers -----------------------------------------------------


WALKER_ID = "mbrl-tests/WalkerDream-v0"


def make_walker_dream(render_mode: str | None = None, **config: Any) -> DreamEnv:
    """The entry point of WALKER_ID: a dream of the closed-form Walker, seeded."""
    return DreamEnv(Walker(), make_buffer(random_frames=True), DreamConfig(**config), seed=0, render_mode=render_mode)


if WALKER_ID not in gym.registry:
    gym.register(WALKER_ID, entry_point=make_walker_dream)


@pytest.fixture(scope="module")
def jepa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny"
    make_run(path)
    return path


@pytest.mark.parametrize("family", ["walker", "jepa"])
@pytest.mark.parametrize("observation", ["latent", "pixels"])
def test_dream_env_passes_gymnasium_and_sb3_checks(family: str, observation: str, jepa_run: Path) -> None:
    """Both checkers, every warning recorded: an env made by id has a spec, so gymnasium also checks each render
    mode. The one warning allowed is SB3's advice on JEPA's (tokens, dim) latent, which its MlpPolicy flattens."""
    settings = {"horizon": 5, "observation": observation, "render_mode": "rgb_array"}
    made = gym.make(WALKER_ID, **settings) if family == "walker" else gym.make(DREAM_ID, checkpoint=jepa_run,
                                                                              **settings)
    env = made.unwrapped
    assert isinstance(env, DreamEnv) and env.spec is not None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gym_check_env(env)
        sb3_check_env(env, warn=True)
    expected = ["unconventional shape"] if family == "jepa" and observation == "latent" else []
    assert len(seen) == len(expected) and all(e in str(w.message) for e, w in zip(expected, seen)), [
        str(w.message) for w in seen]
    env.reset(seed=0)
    frame = env.render()
    assert frame is not None and frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    made.close()


def greedy_return(agent: BaseAlgorithm, env: DreamEnv, episodes: int = 20) -> float:
    """Mean return of the agent's deterministic policy over `episodes` dreams, each reset with its own seed."""
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=100 + episode)
        total, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.parametrize(("algo", "steps"), [("ppo", 768), ("dqn", 1536)])
def test_sb3_learns_the_optimum_of_a_toy_dream(algo: str, steps: int) -> None:
    """Walker's expected reward is 0.75 for action 1, -0.25 for 2 and 0 for 0, and nothing else matters, so over
    5 steps the optimum returns 3.75 and a uniform policy 5 * 0.5 / 3. Under seed 0, both learners find it."""
    config = DreamConfig(horizon=5, reward="expected")
    kwargs: dict[str, Any] = {"n_steps": 64, "batch_size": 64, "n_epochs": 4} if algo == "ppo" else {
        "buffer_size": 2000, "learning_starts": 100, "batch_size": 32, "train_freq": 1, "target_update_interval": 100,
        "exploration_fraction": 0.3}
    agent = ALGOS[algo]("MlpPolicy", DreamEnv(Walker(), make_buffer(), config, seed=0), learning_rate=3e-3, seed=0,
                        device="cpu", policy_kwargs={"net_arch": [32]}, **kwargs)
    before = greedy_return(agent, DreamEnv(Walker(), make_buffer(), config, seed=1))
    agent.learn(total_timesteps=steps)
    after = greedy_return(agent, DreamEnv(Walker(), make_buffer(), config, seed=1))
    uniform = 5 * (0.75 - 0.25) / 3
    assert before < uniform < after == pytest.approx(3.75), (before, after)


def test_latent_wrappers_encode_what_the_env_shows() -> None:
    """A pixel dream stands in for a real env: the wrappers give encode(observation), in the latent dream's space."""
    model = Walker()
    pixels = DreamConfig(observation="pixels")
    single = LatentObservation(DreamEnv(model, make_buffer(), pixels, seed=0), model)
    raw = DreamEnv(model, make_buffer(), pixels, seed=0)  # the same dream, unwrapped
    assert single.observation_space == DreamEnv(model, make_buffer(), DreamConfig()).observation_space
    for latent, stack in [(single.reset()[0], raw.reset()[0]), (single.step(1)[0], raw.step(1)[0])]:
        assert latent in single.observation_space
        np.testing.assert_array_equal(latent, [stack[-1, 0, 0], 0.0])  # Walker.encode: (newest corner pixel, 0)

    vector = LatentObservationVector(DreamVectorEnv(model, make_buffer(), 3, pixels, seed=0), model)
    raw_vector = DreamVectorEnv(model, make_buffer(), 3, pixels, seed=0)
    assert vector.single_observation_space == latent_space(model)
    actions = np.array([0, 1, 2])
    for latents, stacks in [(vector.reset()[0], raw_vector.reset()[0]),
                            (vector.step(actions)[0], raw_vector.step(actions)[0])]:
        assert latents in vector.observation_space
        np.testing.assert_array_equal(latents, np.stack([stacks[:, -1, 0, 0], np.zeros(3)], axis=1))

    with pytest.raises(ValueError, match="uint8"):
        LatentObservation(DreamEnv(model, make_buffer(), DreamConfig()), model)


@pytest.mark.slow
def test_a_dream_policy_runs_unchanged_on_the_real_env() -> None:
    from mbrl.envs.atari import AtariConfig, make_env

    model = tiny_jepa()
    dream = DreamEnv(model, make_buffer(random_frames=True), DreamConfig(), seed=0)
    real = LatentObservation(make_env(AtariConfig()), model)
    assert dream.observation_space == real.observation_space and dream.action_space == real.action_space

    def policy(z: np.ndarray) -> int:
        return int(np.abs(z).sum() * 100) % 4

    for env in (dream, real):
        obs, _ = env.reset(seed=0)
        for _ in range(20):
            assert obs in env.observation_space
            obs, _, terminated, truncated, _ = env.step(policy(obs))
            if terminated or truncated:
                obs, _ = env.reset()
    real.close()


class Pair(NamedTuple):
    a: torch.Tensor
    b: int


def test_map_state_walks_nested_states_and_refuses_to_combine_differing_values() -> None:
    """One walker serves the dream (shapes, rows, in-place restarts) and the planners (rows by index)."""
    state = {"z": torch.arange(6.0).view(3, 2), "ring": [torch.zeros(3, 4)], "pair": Pair(torch.ones(3), 7)}
    picked = map_state(lambda t: t.index_select(0, torch.tensor([2, 0])), state)
    assert picked["z"].tolist() == [[4.0, 5.0], [0.0, 1.0]] and picked["ring"][0].shape == (2, 4)
    assert isinstance(picked["pair"], Pair) and picked["pair"].b == 7
    fresh = map_state(lambda t: t + 10, picked)
    map_state(lambda t, new: t.index_copy_(0, torch.tensor([0, 1]), new), state, fresh)
    assert state["z"].tolist() == [[14.0, 15.0], [10.0, 11.0], [4.0, 5.0]]
    with pytest.raises(TypeError, match="int values differ"):
        map_state(lambda t, new: t, state, {**fresh, "pair": Pair(fresh["pair"].a, 8)})
