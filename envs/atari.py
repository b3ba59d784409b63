"""Real Atari environments: ALE with standard preprocessing, single and vectorised.

Pipeline of one env (any `ALE/*-v5` id):
    gymnasium.make(id, frameskip=1, obs_type="ram")   # ALE skips no frame itself; sticky actions 0.25
    -> AtariFrames(frame_skip=4, max-pool, no-op starts, 64x64 grayscale)   # info["ram"]
    -> FireReset                                      # press FIRE after reset where the game needs it
    -> AtariInfo                                      # info: life_loss, raw_reward; episodic life, clipping
    -> FrameStack(4)                                  # uint8 (4, 64, 64), zeros before the first frame

The frames equal those of gymnasium's AtariPreprocessing (a test checks it) and the stack
padding equals ale_py.AtariVectorEnv's; `make_vector_env` steps many such envs in parallel.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, ClassVar, SupportsFloat

import ale_py
import cv2
import gymnasium as gym
import numpy as np

from mbrl.core.config import check_ranges
from mbrl.core.errors import UserError
from mbrl.envs.vector import InfoSpec, ShardedVectorEnv

gym.register_envs(ale_py)

RAM_SIZE = 128
INFO_KEYS: InfoSpec = {
    "ram": ((RAM_SIZE,), np.uint8),
    "lives": ((), np.int32),
    "life_loss": ((), np.bool_),
    "raw_reward": ((), np.float64),
}
"""The per-step info every real env gives, and that vector envs carry through."""


@dataclass(frozen=True)
class AtariConfig:
    """How a real Atari game is made and preprocessed.

    Attributes:
        id: gymnasium id of an ALE game, e.g. "ALE/Breakout-v5" or "ALE/Pong-v5".
        frame_size: observations are frame_size x frame_size grayscale (a replay row holds one frame, so
            frame_size^2 bytes of it per stored step).
        frame_stack: frames per observation.
        frame_skip: emulator frames per agent step (max-pooled over the last two).
        sticky_action_prob: probability that ALE repeats the previous action (v5: 0.25).
        noop_max: at most this many no-op steps after reset (random count).
        fire_reset: press FIRE after reset in games whose action set has it.
        max_episode_frames: emulator frames before truncation (standard: 108k = 30 min).
        episodic_life: end the episode at every life loss (for training only; the game
            itself resets only at game over).
        clip_rewards: return sign(reward); the raw reward stays in info["raw_reward"].
    """

    id: str = "ALE/Breakout-v5"
    frame_size: int = 64
    frame_stack: int = 4
    frame_skip: int = 4
    sticky_action_prob: float = 0.25
    noop_max: int = 30
    fire_reset: bool = True
    max_episode_frames: int = 108_000
    episodic_life: bool = False
    clip_rewards: bool = False

    ranges: ClassVar[dict[str, str]] = {
        "frame_size": "[8, 256]", "frame_stack": "[1, 16]", "frame_skip": "[1, 64]", "sticky_action_prob": "[0, 1]",
        "noop_max": "[0, 10_000]", "max_episode_frames": "[1, 10_000_000]"}

    def __post_init__(self) -> None:
        check_ranges(self)


class AtariFrames(gym.Wrapper):
    """Frame skip with max-pooling, no-op starts and a square grayscale resize, read straight from ALE.

    Same preprocessing as gymnasium's AtariPreprocessing, made for speed: the inner env is
    created with `obs_type="ram"`, so its per-frame observation is the 128-byte console RAM
    (returned in `info["ram"]`), and the screen is copied out of ALE only on the two frames
    that are pooled. One difference: when the game ends mid-skip, the observation is the
    final screen, not the previous step's pooled frames.

    Args:
        env: an ALE env made with `frameskip=1, obs_type="ram"`.
        frame_skip: emulator frames per step, max-pooled over the last two.
        size: output frames are uint8 (size, size).
        noop_max: reset plays 1..noop_max no-op frames (0: none).
    """

    def __init__(self, env: gym.Env, frame_skip: int, size: int, noop_max: int) -> None:
        super().__init__(env)
        self.ale = _atari(env).ale
        self.frame_skip, self.size, self.noop_max = frame_skip, size, noop_max
        height, width = self.ale.getScreenDims()
        self._screens = np.zeros((2, height, width), dtype=np.uint8)  # the last two frames of a step
        self.observation_space = gym.spaces.Box(0, 255, (size, size), dtype=np.uint8)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        ram, info = self.env.reset(**kwargs)
        noops = self.env.unwrapped.np_random.integers(1, self.noop_max + 1) if self.noop_max > 0 else 0
        for _ in range(noops):
            ram, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                ram, info = self.env.reset(**kwargs)
        self.ale.getScreenGrayscale(self._screens[0])
        self._screens[1] = 0
        return self._frame(), {**info, "ram": ram}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        total = 0.0
        for k in range(self.frame_skip):
            ram, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if (terminated or truncated) and k < self.frame_skip - 1:  # ended mid-skip: show the final screen
                self.ale.getScreenGrayscale(self._screens[0])
                self._screens[1] = self._screens[0]
                break
            if k >= self.frame_skip - 2:
                self.ale.getScreenGrayscale(self._screens[self.frame_skip - 1 - k])
        return self._frame(), total, terminated, truncated, {**info, "ram": ram}

    def _frame(self) -> np.ndarray:
        np.maximum(self._screens[0], self._screens[1], out=self._screens[0])
        return cv2.resize(self._screens[0], (self.size, self.size), interpolation=cv2.INTER_AREA)


class FrameStack(gym.Wrapper):
    """The last `size` frames as uint8 (size, H, W), zeros before the episode's first frame."""

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        frame_shape = env.observation_space.shape or ()
        self._stack = np.zeros((size, *frame_shape), dtype=np.uint8)
        self.observation_space = gym.spaces.Box(0, 255, self._stack.shape, dtype=np.uint8)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        frame, info = self.env.reset(**kwargs)
        self._stack[:] = 0
        self._stack[-1] = frame
        return self._stack.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame
        return self._stack.copy(), reward, terminated, truncated, info


class FireReset(gym.Wrapper):
    """After every reset, press FIRE (games like Breakout wait for it to launch the ball)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = _atari(env).get_action_meanings()
        self._fire = meanings.index("FIRE") if "FIRE" in meanings else None

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        if self._fire is not None:
            obs, _, terminated, truncated, info = self.env.step(self._fire)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


class AtariInfo(gym.Wrapper):
    """Adds `lives`, `life_loss` and `raw_reward` to info; optional episodic life and reward clipping.

    With `episodic_life`, a life loss ends the episode and the next `reset` continues the same
    game with one no-op step instead of a new game, unless the game is over.
    """

    def __init__(self, env: gym.Env, episodic_life: bool = False, clip_rewards: bool = False) -> None:
        super().__init__(env)
        self.episodic_life = episodic_life
        self.clip_rewards = clip_rewards
        self._ale = _atari(env).ale
        self._lives = 0
        self._game_over = True

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        if self._game_over or not self.episodic_life:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._lives = self._ale.lives()
        self._game_over = False
        return obs, self._info(info, 0.0, False)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self._ale.lives()
        life_loss = lives < self._lives
        self._lives = lives
        self._game_over = terminated or truncated
        raw = float(reward)
        info = self._info(info, raw, life_loss)
        if self.episodic_life and life_loss:
            terminated = True
        return obs, (float(np.sign(raw)) if self.clip_rewards else raw), terminated, truncated, info

    def _info(self, info: dict[str, Any], raw_reward: float, life_loss: bool) -> dict[str, Any]:
        return {**info, "lives": self._lives, "life_loss": life_loss, "raw_reward": raw_reward}


def check_env_id(env_id: str) -> None:
    """Raise a one-line UserError unless `env_id` names an ALE game."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise UserError(f"unknown env id '{env_id}': {exc}") from None
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    if not entry.startswith("ale_py"):
        raise UserError(f"env '{env_id}' is not an Atari (ALE) game; mbrl needs an image env such as ALE/Breakout-v5")


def make_env(config: AtariConfig, render_mode: str | None = None) -> gym.Env:
    """One preprocessed Atari env: uint8 (frame_stack, frame_size, frame_size) observations.

    Raises:
        UserError: `config.id` is not a known ALE game.
    """
    check_env_id(config.id)
    env = gym.make(
        config.id,
        frameskip=1,  # AtariFrames skips frames; v5's own skip on top would make it 16
        obs_type="ram",  # AtariFrames reads the screen itself, only on the frames it keeps
        repeat_action_probability=config.sticky_action_prob,
        full_action_space=False,
        max_num_frames_per_episode=config.max_episode_frames,
        render_mode=render_mode,
    )
    env = AtariFrames(env, frame_skip=config.frame_skip, size=config.frame_size, noop_max=config.noop_max)
    if config.fire_reset:
        env = FireReset(env)
    env = AtariInfo(env, episodic_life=config.episodic_life, clip_rewards=config.clip_rewards)
    return FrameStack(env, config.frame_stack)


def make_vector_env(config: AtariConfig, num_envs: int, num_workers: int | None = None) -> ShardedVectorEnv:
    """`num_envs` copies of `make_env(config)` with next-step autoreset; infos carry INFO_KEYS.

    Args:
        num_workers: processes that step the envs (each a shard of them). None: one per CPU
            core, at most `num_envs`; 0: step all of them in this process.
    """
    check_env_id(config.id)
    env_fns = [functools.partial(make_env, config)] * num_envs
    if num_workers is None:
        num_workers = min(num_envs, _cpu_count())
    return ShardedVectorEnv(env_fns, num_workers=num_workers, info_keys=INFO_KEYS)


def _atari(env: gym.Env) -> ale_py.AtariEnv:
    inner = env.unwrapped
    if not isinstance(inner, ale_py.AtariEnv):
        raise TypeError(f"expected an ALE env underneath, got {type(inner).__name__}")
    return inner


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
