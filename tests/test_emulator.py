"""The emulator judge: replays from a saved state are the real game's steps, and the returns are the objective's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mbrl.core.errors import UserError
from mbrl.envs.atari import AtariConfig, make_env
from mbrl.envs.emulator import Emulator, Outcomes, emulator_objective, real_returns, snapshot


def test_real_returns_discount_penalise_lost_lives_and_stop_at_game_over() -> None:
    outcomes = Outcomes(reward=np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32),
                        life_loss=np.array([[0, 1, 0], [0, 0, 0]], dtype=np.float32),
                        alive=np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float32))
    returns = real_returns(outcomes, discount=0.5, life_loss_penalty=2.0)
    np.testing.assert_allclose(returns, [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])


@pytest.mark.slow  # needs ALE
def test_replays_match_the_real_env_and_repeat_exactly() -> None:
    config = AtariConfig(sticky_action_prob=0.0)  # the real game without sticky actions is what replays play
    env = make_env(config)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        env.step(int(rng.integers(4)))
    saved = snapshot(env)
    sequences = rng.integers(0, 4, size=(3, 150))
    emulator = Emulator(config)
    outcomes = emulator.outcomes(saved, sequences, frames=True)
    again = emulator.outcomes(saved, sequences, frames=True)
    assert outcomes.frames is not None and outcomes.frames.shape == (3, 150, 64, 64)
    for field in Outcomes._fields:
        np.testing.assert_array_equal(getattr(outcomes, field), getattr(again, field))
    rewards, losses = [], []
    for t, action in enumerate(sequences[0]):
        obs, reward, terminated, truncated, info = env.step(int(action))
        np.testing.assert_array_equal(outcomes.frames[0, t], obs[-1], err_msg=f"step {t}: the frame the env shows")
        rewards.append(np.sign(reward))
        losses.append(float(info["life_loss"]))
        if terminated or truncated:
            break
    steps = len(rewards)
    np.testing.assert_array_equal(outcomes.reward[0, :steps], rewards)
    np.testing.assert_array_equal(outcomes.life_loss[0, :steps], losses)
    assert outcomes.alive[0, :steps].all()
    assert outcomes.life_loss[0].sum() >= 1, "150 random steps lose a life: the test compares something"
    emulator.close()


@pytest.mark.slow  # needs ALE
def test_an_unknown_game_is_a_user_error() -> None:
    with pytest.raises(UserError, match="ALE/NoSuchGame-v5"):
        Emulator(dataclasses.replace(AtariConfig(), id="ALE/NoSuchGame-v5"))


@pytest.mark.slow  # needs ALE
def test_the_emulator_objective_scores_each_problem_from_its_own_state() -> None:
    config = AtariConfig(sticky_action_prob=0.0)
    env = make_env(config)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    states = []
    for steps in (30, 200):  # two problems: the second state is later in the game
        for _ in range(steps):
            env.step(int(rng.integers(4)))
        states.append(snapshot(env))
    sequences = torch.as_tensor(rng.integers(0, 4, size=(2, 5, 60)))
    emulator = Emulator(config)
    returns = emulator_objective(emulator, 0.9, 1.0)(states, sequences)
    assert returns.shape == (2, 5) and returns.dtype == torch.float32
    for b in range(2):
        expected = real_returns(emulator.outcomes(states[b], sequences[b].numpy()), 0.9, 1.0)[:, -1]
        np.testing.assert_allclose(returns[b].numpy(), expected, rtol=1e-6)
    emulator.close()


@pytest.mark.slow  # needs ALE
@pytest.mark.parametrize("action", [1, 2])
def test_continued_counts_what_a_policy_earns_after_each_sequence_until_a_life_is_lost(action: int) -> None:
    config = AtariConfig(sticky_action_prob=0.0)
    env = make_env(config)
    obs, _ = env.reset(seed=5)
    saved = snapshot(env)
    emulator = Emulator(config)
    sequences = np.random.default_rng(1).integers(0, 4, size=(4, 3))
    steps, discount = 300, 0.9
    stacks: list[np.ndarray] = []

    def constant(stack: np.ndarray) -> int:
        stacks.append(stack)
        return action

    got = emulator.continued(saved, sequences, obs, constant, steps, discount)
    assert {s.shape for s in stacks} == {(4, 64, 64)} and stacks[0].dtype == np.uint8
    assert np.array_equal(stacks[0][0], obs[3])  # 3 steps after obs, its newest frame is the stack's oldest
    cut = []
    for i, sequence in enumerate(sequences):  # the same actions replayed in one go
        out = emulator.outcomes(saved, np.array([[*sequence, *[action] * steps]]))
        reward, lost = out.reward[0, 3:], out.life_loss[0, 3:]
        end = int(np.argmax(lost)) + 1 if lost.any() else steps  # up to and with the first lost life
        assert got[i] == pytest.approx(float((discount ** np.arange(end) * reward[:end]).sum()))
        cut.append(reward[end:].sum() > 0)
    # from this state, RIGHT earns points before its first lost life; FIRE loses one first and scores only after
    assert (got > 0).all() if action == 2 else (got == 0).all() and any(cut)
    emulator.close()
