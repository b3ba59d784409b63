"""Real-env collection: step a vector env with a policy and append everything to a replay buffer."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from mbrl.core.config import check_ranges
from mbrl.core.replay import FIRST, LIFE_LOSS, TERMINATED, TRUNCATED, ReplayBuffer
from mbrl.envs.vector import ShardedVectorEnv, one_torch_thread
from mbrl.progress import Progress

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Maps a batch of observations uint8 (K, S, H, W) and their episode starts bool (K,) (True where the
observation is the first of an episode) to actions (K,)."""


@dataclass(frozen=True)
class CollectConfig:
    """Real-env collection settings.

    Attributes:
        num_envs: environments stepped together (at most 256: each holds an emulator and its frame stacks,
            in shared memory too).
        num_workers: processes stepping them; -1: one per CPU core (at most num_envs),
            0: all in the main process.
    """

    num_envs: int = 8
    num_workers: int = -1

    ranges: ClassVar[dict[str, str]] = {"num_envs": "[1, 256]", "num_workers": "[-1, 256]"}

    def __post_init__(self) -> None:
        check_ranges(self)


class RandomPolicy:
    """Uniformly random discrete actions from a seeded generator."""

    def __init__(self, action_space: gym.Space, seed: int | list[int]) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise TypeError(f"RandomPolicy needs a Discrete action space, got {action_space}")
        self.n = int(action_space.n)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        return self.rng.integers(0, self.n, size=len(obs))

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        """SB3's `predict` signature (for `mbrl.evaluate`): random actions whatever the arguments."""
        return self(observation), None


@dataclass
class CollectStats:
    """What one `Collector.run` gathered."""

    steps: int = 0
    episode_returns: list[float] = field(default_factory=list)  # raw game scores of finished episodes
    episode_lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0


class Collector:
    """Steps `env` and appends every observation to `buffer`, one stream per sub-env.

    Shards of the env are stepped in turn: while the workers of the other shards play, the
    results of one shard are stored and its next actions chosen, so no worker waits for the
    slowest one. The order is fixed, so a seeded run gives the same buffer every time. The env
    stays open between `run` calls, so a Dyna loop can collect a little at a time with
    whatever policy is current. Rewards stored are the raw game rewards. The first `run` resets the envs
    and opens their streams, so a collector that never runs leaves the buffer as it was.

    Args:
        env: a sharded vector env whose infos carry `raw_reward`, `life_loss` and `ram`, as
            `mbrl.envs.make_vector_env` gives.
        buffer: where rows go.
        seed: seeds the env resets.
    """

    def __init__(self, env: ShardedVectorEnv, buffer: ReplayBuffer, seed: int) -> None:
        self.env = env
        self.buffer = buffer
        self.seed = seed
        self.streams: np.ndarray | None = None  # the buffer's streams of the envs, opened by the first `run`
        n = env.num_envs
        self._actions = np.zeros(n, dtype=np.int64)  # the actions each env is playing now
        self._resetting = np.zeros(n, dtype=bool)  # envs whose next step is an autoreset
        self._starts = np.ones(n, dtype=bool)  # envs whose observation is the first of an episode
        self._returns = np.zeros(n)
        self._lengths = np.zeros(n, dtype=np.int64)

    def run(
        self,
        steps: int,
        policy: Policy,
        flush_every: int = 250,
        on_flush: Callable[[], None] | None = None,
        progress: bool | None = None,
        log: Progress | None = None,
    ) -> CollectStats:
        """Collect until at least `steps` transitions are stored (overshoot < num_envs).

        Args:
            steps: transitions to add (autoreset steps, whose action is ignored, do not count).
            policy: chooses actions from observations and episode starts (called on one shard at a time:
                a policy that keeps a history per env needs an env of one shard).
            flush_every: vector steps between buffer flushes and `on_flush` calls.
            on_flush: called after each flush (e.g. to write progress.json).
            progress: show a tqdm bar (None: only when stderr is a terminal).
            log: progress lines for a log, advanced by every stored transition (its phase is the caller's),
                noting the mean score of the last 10 finished episodes ("episode score").
        """
        if self.streams is None:  # reset the envs and store their first observations only when they will play
            self.streams = self.buffer.new_streams(self.env.num_envs)
            self.obs, info = self.env.reset(seed=self.seed)
            n = self.env.num_envs
            self.buffer.append(self.streams, self.obs[:, -1], np.zeros(n), np.zeros(n), np.full(n, FIRST, np.uint8),
                               info["ram"])
        with one_torch_thread():  # a torch policy shares the cores with the env workers
            return self._run(steps, policy, flush_every, on_flush, progress, log)

    def _run(self, steps: int, policy: Policy, flush_every: int, on_flush: Callable[[], None] | None,
             progress: bool | None, log: Progress | None) -> CollectStats:
        stats = CollectStats()
        start = time.perf_counter()
        bar = tqdm(total=steps, unit="step", desc="collect", disable=None if progress is None else not progress)
        playing = deque(range(len(self.env.shards)))  # shards in flight, in the order they are waited for
        for shard in playing:
            self._act(shard, policy)
        received = 0
        while playing:
            shard = playing.popleft()
            lo, hi = self.env.shards[shard]
            obs, _, terminated, truncated, info = self.env.recv(shard)
            actions, first = self._actions[lo:hi].copy(), self._resetting[lo:hi].copy()
            self.obs[lo:hi] = obs
            self._starts[lo:hi] = first
            self._resetting[lo:hi] = terminated | truncated
            new = int((~first).sum())
            stats.steps += new
            if stats.steps < steps:  # the next step of this shard starts before its rows are stored
                self._act(shard, policy)
                playing.append(shard)
            finished = len(stats.episode_returns)
            self._record(slice(lo, hi), actions, obs, terminated, truncated, info, first, stats)
            bar.update(new)
            if log is not None:
                if len(stats.episode_returns) > finished:
                    log.note(episode_score=float(np.mean(stats.episode_returns[-10:])))
                log.advance(new)
            received += 1
            if received % (flush_every * len(self.env.shards)) == 0:
                self._flush(on_flush)
                if stats.episode_returns:
                    bar.set_postfix(episodes=len(stats.episode_returns), score=np.mean(stats.episode_returns[-10:]))
        self._flush(on_flush)
        bar.close()
        stats.seconds = time.perf_counter() - start
        return stats

    def _act(self, shard: int, policy: Policy) -> None:
        lo, hi = self.env.shards[shard]
        self._actions[lo:hi] = policy(self.obs[lo:hi], self._starts[lo:hi].copy())
        self.env.send(shard, self._actions[lo:hi])

    def _record(
        self, envs: slice, actions: np.ndarray, obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
        info: dict, first: np.ndarray, stats: CollectStats,
    ) -> None:
        """Append one step of the envs `envs` to the buffer and account finished episodes.

        `first` marks envs that were autoreset by this step: their observation starts an
        episode and their action was ignored.
        """
        raw = np.asarray(info["raw_reward"], dtype=np.float64)
        flags = np.where(terminated, TERMINATED, 0) | np.where(truncated, TRUNCATED, 0)
        flags |= np.where(info["life_loss"], LIFE_LOSS, 0)
        flags = np.where(first, FIRST, flags).astype(np.uint8)
        assert self.streams is not None
        self.buffer.append(self.streams[envs], obs[:, -1], actions, raw, flags, info["ram"])
        moved = ~first
        returns, lengths = self._returns[envs], self._lengths[envs]  # views
        returns[moved] += raw[moved]
        lengths[moved] += 1
        ended = moved & (terminated | truncated)
        stats.episode_returns += returns[ended].tolist()
        stats.episode_lengths += lengths[ended].tolist()
        returns[ended] = 0.0
        lengths[ended] = 0

    def _flush(self, on_flush: Callable[[], None] | None) -> None:
        self.buffer.flush()
        if on_flush is not None:
            on_flush()

    def close(self) -> None:
        """Close the env and flush the buffer."""
        self.env.close()
        self.buffer.flush()
