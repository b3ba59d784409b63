"""Dyna's direct RL: n-step targets from real stretches and DQN updates on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor

from mbrl.agents.replay_updates import learn_from_replay, nstep_targets
from mbrl.agents.sb3 import DreamVecEnv
from mbrl.agents.sb3_agent import AgentConfig, build_agent
from mbrl.core.replay import FIRST, LIFE_LOSS, TERMINATED, TRUNCATED, ReplayBuffer, Stretches
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.world_models.latent_cache import LatentCache
from tests.toys import make_buffer, tiny_jepa


def test_nstep_targets_stop_at_the_first_episode_end_of_the_dream() -> None:
    stretches = Stretches(
        rows=np.array([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, -1, -1], [40, 41, 42, 43]]),
        actions=np.zeros((4, 3), np.int64),
        rewards=np.array([[1.0, 5.0, -3.0], [0.0, 2.0, 4.0], [7.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32),
        flags=np.array([[0, LIFE_LOSS, 0], [0, 0, TERMINATED], [0, 0, 0], [0, TRUNCATED, 0]], np.uint8),
    )
    returns, bootstrap, last = nstep_targets(stretches, 0.5, "life_loss")
    # a lost life ends the first: 1 + 0.5; the second ends at game over; the third runs out of stored rows
    # after one step; a time-limit cut is no end: the fourth is bootstrapped after three steps
    assert returns.tolist() == [1.5, 0.5 + 0.25, 1.0, 1.75]
    assert bootstrap.tolist() == [0.0, 0.0, 0.5, 0.125]
    assert last.tolist() == [12, 23, 31, 43]
    returns, bootstrap, last = nstep_targets(stretches, 0.5, "game_over")  # lost lives go on
    assert returns[0] == 1 + 0.5 - 0.25 and bootstrap[0] == 0.125 and last[0] == 13


def one_step_games(count: int) -> ReplayBuffer:
    """Games of one transition on random frames: action 1 scores a point, the others none."""
    buffer = ReplayBuffer((64, 64), 4, ram_size=128)
    stream = buffer.new_streams(1)
    rng = np.random.default_rng(0)
    for game in range(count):
        for flags in (FIRST, TERMINATED):
            action = game % 3
            frame = rng.integers(0, 256, (1, 64, 64), dtype=np.uint8)
            reward = np.array([float(action == 1)])
            buffer.append(stream, frame, np.array([action]), reward, np.array([flags], np.uint8))
    return buffer


def test_real_updates_learn_the_closed_form_values_of_one_step_games() -> None:
    model = tiny_jepa()
    venv = VecMonitor(DreamVecEnv(DreamVectorEnv(model, make_buffer(), 2, DreamConfig(horizon=4), seed=0)))
    torch.manual_seed(0)
    agent = build_agent(AgentConfig(algo="dqn", hidden=32, layers=1, learning_rate=3e-3), venv, seed=0, device="cpu")
    buffer = one_step_games(30)
    cache = LatentCache(model, buffer.stacks)
    loss = learn_from_replay(agent, buffer, cache, 400, 0, 32, 3, "life_loss", 50, np.random.default_rng(0))
    firsts = np.flatnonzero(buffer.flags(np.arange(len(buffer))) == FIRST)
    with torch.no_grad():
        q = agent.q_net(cache.encode(firsts, torch.device("cpu")))
    actions = np.arange(len(firsts)) % 3
    taken = q[torch.arange(len(firsts)), torch.as_tensor(actions)]
    # no bootstrap after a game over: Q(o, a) is the reward, 1 for action 1 and 0 for the others
    assert torch.allclose(taken, torch.as_tensor(actions == 1, dtype=torch.float32), atol=0.15), taken
    assert loss < 0.1
    assert torch.equal(agent.q_net_target.state_dict()["q_net.0.weight"], agent.q_net.state_dict()["q_net.0.weight"])


def test_real_updates_need_a_dqn() -> None:
    venv = VecMonitor(DreamVecEnv(DreamVectorEnv(tiny_jepa(), make_buffer(), 2, DreamConfig(horizon=4), seed=0)))
    agent = build_agent(AgentConfig(algo="ppo", hidden=8, layers=1, n_steps=8, batch_size=16), venv, seed=0,
                        device="cpu")
    with pytest.raises(TypeError, match="needs a DQN agent"):
        learn_from_replay(agent, make_buffer(), LatentCache(tiny_jepa(), make_buffer().stacks), 1, 0, 4, 1,
                          "life_loss", 10, np.random.default_rng(0))
