"""The real game as the judge of a plan: what each action sequence really earns from a saved emulator state.

`Emulator` holds a second ALE instance of the game, made without sticky actions, so that
replaying a sequence from a state saved in the real env (`snapshot`) is deterministic. Every
candidate is replayed from the same state with the env's frame skip, and `Outcomes` records
per agent step what the planning objective of `mbrl.agents.planners.objective` imagines: the clipped
reward, whether a life was lost and whether the game was still on. `real_returns` turns them
into that objective's discounted returns, for every horizon at once, and `emulator_objective`
makes the game itself a planner's objective: planning with a perfect model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import ale_py
import cv2
import gymnasium as gym
import numpy as np
import torch

from mbrl.envs.atari import AtariConfig, _atari, check_env_id


class Outcomes(NamedTuple):
    """What N action sequences of H steps really did, float32 (N, H) each.

    Attributes:
        reward: sign of the points of each step (the clipped reward the world model's head predicts).
        life_loss: 1 where the step lost a life.
        alive: 1 where the game was still on when the step began.
        frames: uint8 (N, H, size, size) each step's observed frame, as `mbrl.envs.atari.AtariFrames` makes
            it (max of the step's last two screens, resized), when asked for; else None.
    """

    reward: np.ndarray
    life_loss: np.ndarray
    alive: np.ndarray
    frames: np.ndarray | None = None


def snapshot(env: gym.Env) -> ale_py.ALEState:
    """The emulator state of a real env (any wrapping of an ALE env), to replay sequences from."""
    return _atari(env).ale.cloneState()


class Emulator:
    """Replays action sequences of the game of `config` from saved emulator states, without sticky actions.

    Raises:
        UserError: `config.id` is not a known ALE game.
    """

    def __init__(self, config: AtariConfig) -> None:
        check_env_id(config.id)
        self._env = gym.make(config.id, frameskip=1, obs_type="ram", repeat_action_probability=0.0,
                             full_action_space=False)
        self._env.reset(seed=0)
        atari = _atari(self._env)
        self.ale, self.action_set = atari.ale, list(atari._action_set)
        self.frame_skip, self.size = config.frame_skip, config.frame_size
        height, width = self.ale.getScreenDims()
        self._screens = np.zeros((2, height, width), dtype=np.uint8)

    def outcomes(self, state: ale_py.ALEState, sequences: np.ndarray, frames: bool = False) -> Outcomes:
        """Replay each of `sequences`, int (N, H) indices into the game's minimal action set, from `state`;
        with `frames`, also keep each step's observed frame (a step after the game ended repeats the last)."""
        n, horizon = sequences.shape
        reward, life_loss, alive = (np.zeros((n, horizon), dtype=np.float32) for _ in range(3))
        seen = np.zeros((n, horizon, self.size, self.size), dtype=np.uint8) if frames else None
        for i, sequence in enumerate(sequences):
            self.ale.restoreState(state)
            for t, action in enumerate(sequence):
                if self.ale.game_over():
                    if seen is not None and t > 0:
                        seen[i, t] = seen[i, t - 1]
                    continue
                alive[i, t] = 1.0
                reward[i, t], life_loss[i, t], frame = self._play(int(action), seen is not None)
                if seen is not None and frame is not None:
                    seen[i, t] = frame
        return Outcomes(reward, life_loss, alive, seen)

    def continued(self, state: ale_py.ALEState, sequences: np.ndarray, obs: np.ndarray,
                  policy: Callable[[np.ndarray], int], steps: int, discount: float) -> np.ndarray:
        """What `policy` really earns after each sequence: float (N,) its discounted clipped rewards over `steps`
        agent steps that follow the sequence (int (N, H)) replayed from `state`, until it loses a life or the game
        ends (as a value trained with lives as episodes counts them). `obs` is the uint8 (S, size, size) frame
        stack observed at `state`; the policy sees the stacks of the frames that follow."""
        out = np.zeros(len(sequences))
        for i, sequence in enumerate(sequences):
            self.ale.restoreState(state)
            stack = obs.copy()
            for action in sequence:
                if self.ale.game_over():
                    break
                frame = self._play(int(action), True)[2]
                assert frame is not None
                stack = np.concatenate([stack[1:], frame[None]])
            for k in range(steps):
                if self.ale.game_over():
                    break
                reward, lost, frame = self._play(policy(stack), True)
                out[i] += discount**k * reward
                if lost:
                    break
                assert frame is not None
                stack = np.concatenate([stack[1:], frame[None]])
        return out

    def _play(self, action: int, observe: bool) -> tuple[float, float, np.ndarray | None]:
        """One agent step (frame skip) of action index `action`: clipped reward, life lost, and (when `observe`)
        the observed frame, the max of its last two screens resized."""
        lives, points = self.ale.lives(), 0
        for k in range(self.frame_skip):
            points += self.ale.act(self.action_set[action])
            if observe and k >= self.frame_skip - 2:
                self.ale.getScreenGrayscale(self._screens[self.frame_skip - 1 - k])
        frame = None
        if observe:
            pooled = np.maximum(self._screens[0], self._screens[1])
            frame = cv2.resize(pooled, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return float(np.sign(points)), float(self.ale.lives() < lives), frame

    def close(self) -> None:
        self._env.close()


def real_returns(outcomes: Outcomes, discount: float, life_loss_penalty: float) -> np.ndarray:
    """float (N, H): column h - 1 is each sequence's discounted return over its first h steps, as the planning
    objective counts it: sum_t discount^t * alive_t * (reward_t - life_loss_penalty * life_loss_t)."""
    steps = outcomes.reward.shape[1]
    gain = outcomes.alive * (outcomes.reward - life_loss_penalty * outcomes.life_loss)
    return np.cumsum(gain * discount ** np.arange(steps), axis=1)


def emulator_objective(emulator: Emulator, discount: float, life_loss_penalty: float
                       ) -> Callable[[Sequence[ale_py.ALEState], torch.Tensor], torch.Tensor]:
    """A planner's objective (see `mbrl.agents.planners.base.Objective`) whose state is B saved emulator states and
    whose returns (B, N) are what int64 (B, N, H) action sequences really earn from them (`real_returns`)."""

    def objective(states: Sequence[ale_py.ALEState], action_sequences: torch.Tensor) -> torch.Tensor:
        sequences = action_sequences.cpu().numpy()
        returns = [real_returns(emulator.outcomes(state, candidates), discount, life_loss_penalty)[:, -1]
                   for state, candidates in zip(states, sequences, strict=True)]
        return torch.as_tensor(np.stack(returns), dtype=torch.float32, device=action_sequences.device)

    return objective
