"""Scoring an agent on the real game: full games, raw score, the same code for every agent.

`mbrl evaluate`, the Dyna loop's periodic evaluation, `mbrl plan` and the benchmarks all call
`evaluate_agent`, so their numbers are comparable. Games are played as the Atari-100k papers
do: no episodic life (a game is all its lives), sticky actions (ALE v5's 0.25), the standard
cap of 108,000 frames, and the raw (unclipped) game score.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from tqdm import tqdm

from mbrl.core.config import check_ranges
from mbrl.envs.atari import AtariConfig, make_vector_env
from mbrl.envs.vector import one_torch_thread
from mbrl.progress import Progress

MAX_GIF_FRAMES = 3000


class Agent(Protocol):
    """What can be evaluated: stable-baselines3's `predict` signature over uint8 (K, S, H, W) frame stacks."""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]:
        """Actions (K,) for K observations; `episode_start[i]` marks the first observation of an episode."""
        ...


@dataclass(frozen=True)
class EvalConfig:
    """How an agent is scored on the real game.

    Attributes:
        episodes: full games played.
        num_envs: games played at once (at most `episodes`, and at most 256: each holds an emulator).
        num_workers: processes stepping them: -1 one per core, 0 in the calling process.
        deterministic: pass `deterministic=True` to the agent's `predict` (the greedy action);
            False samples, which keeps a Breakout agent from stalling without pressing FIRE.
        sticky_action_prob: ALE's repeat-action probability during evaluation (v5: 0.25).
        max_episode_frames: emulator frames before a game is cut (the standard 108,000).
    """

    episodes: int = 10
    num_envs: int = 8
    num_workers: int = -1
    deterministic: bool = False
    sticky_action_prob: float = 0.25
    max_episode_frames: int = 108_000

    ranges: ClassVar[dict[str, str]] = {
        "episodes": "[1, 100_000]", "num_envs": "[1, 256]", "num_workers": "[-1, 256]", "sticky_action_prob": "[0, 1]",
        "max_episode_frames": "[1, 10_000_000]"}

    def __post_init__(self) -> None:
        check_ranges(self)


def eval_env_config(env: AtariConfig, config: EvalConfig) -> AtariConfig:
    """The run's game with evaluation rules: full games, raw rewards, sticky actions, the frame cap."""
    return dataclasses.replace(env, episodic_life=False, clip_rewards=False,
                               sticky_action_prob=config.sticky_action_prob,
                               max_episode_frames=config.max_episode_frames)


def evaluate_agent(agent: Agent, env: AtariConfig, config: EvalConfig, seed: int,
                   gif_path: Path | None = None, progress: bool | None = None,
                   on_game: Callable[[dict[str, Any]], None] | None = None,
                   log: Progress | None = None) -> dict[str, Any]:
    """Play `config.episodes` full games with `agent` and report their raw scores.

    Each of the K envs plays a fixed share of the games (the first `episodes % K` one more), so
    short games are not over-counted; games an env plays beyond its share are not scored.

    Args:
        agent: anything with SB3's `predict` over frame stacks.
        env: the game and preprocessing (evaluation rules are applied on top, see `eval_env_config`).
        config: evaluation settings.
        seed: seeds the envs, and torch's and numpy's global generators for the games (an SB3 policy samples
            its actions from them; the caller's streams are restored after). An agent with a generator of its
            own (MPC) draws from that.
        gif_path: if given, env 0's first game is written there as a GIF.
        progress: tqdm bar over games (None: only when stderr is a terminal).
        on_game: called after every scored game with the result so far (as returned, with
            `complete` False until the last game), e.g. to save finished games as they come.
        log: progress lines for a log, updated with the games scored at every step (its phase is the
            caller's), noting the game steps played and the mean score so far.

    Returns:
        JSON-ready dict: scores and lengths per game (in finishing order), mean, median, std,
        min, max, the settings used, and `complete` (True).
    """
    from mbrl.video import save_gif

    k = min(config.num_envs, config.episodes)
    quota = np.full(k, config.episodes // k) + (np.arange(k) < config.episodes % k)
    workers = None if config.num_workers < 0 else config.num_workers
    venv = make_vector_env(eval_env_config(env, config), k, workers)
    scores: list[float] = []
    lengths: list[int] = []
    frames: list[np.ndarray] = []
    bar = tqdm(total=config.episodes, desc="evaluate", unit="game", disable=None if progress is None else not progress)
    try:
        with one_torch_thread(), seeded_global_generators(seed):  # a torch agent shares the cores with the envs
            obs, _ = venv.reset(seed=seed)
            starting = np.ones(k, dtype=bool)  # the observation starts a game (after reset or autoreset)
            returns, steps, done = np.zeros(k), np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
            recording = gif_path is not None
            played = 0  # game steps of all envs (for the progress lines)
            while (done < quota).any():
                if recording:
                    frames.append(obs[0, -1].copy())
                actions, _ = agent.predict(obs, None, starting.copy(), deterministic=config.deterministic)
                obs, _, terminated, truncated, info = venv.step(np.asarray(actions, dtype=np.int64))
                playing = ~starting  # a step right after a game ended is the autoreset: no game move
                returns[playing] += np.asarray(info["raw_reward"])[playing]
                steps[playing] += 1
                ended = playing & (terminated | truncated)
                for i in np.flatnonzero(ended):
                    if done[i] < quota[i]:
                        scores.append(float(returns[i]))
                        lengths.append(int(steps[i]))
                        bar.update(1)
                        bar.set_postfix(mean=f"{np.mean(scores):.1f}")
                        if on_game is not None:
                            on_game(summarize(scores, lengths, env.id, seed, config))
                    done[i] += 1
                if log is not None:
                    played += int(playing.sum())
                    log.note(game_steps=f"{played:,}", mean_score=float(np.mean(scores)) if scores else None)
                    log.update(len(scores))
                recording = recording and not ended[0] and len(frames) < MAX_GIF_FRAMES
                returns[ended], steps[ended] = 0.0, 0
                starting = ended
    finally:
        bar.close()
        venv.close()
    if gif_path is not None and frames:
        save_gif(np.stack(frames), gif_path, fps=30, scale=3)
    return summarize(scores, lengths, env.id, seed, config)


@contextlib.contextmanager
def seeded_global_generators(seed: int) -> Iterator[None]:
    """torch's (CPU and CUDA) and numpy's global generators seeded from `seed` inside, restored to their states
    before on the way out."""
    import torch

    before = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(before)


def summarize(scores: list[float], lengths: list[int], env_id: str, seed: int, config: EvalConfig) -> dict[str, Any]:
    """The JSON-ready result of the games scored so far (`complete` once all `config.episodes` are)."""
    a = np.asarray(scores)
    return {
        "env": env_id, "episodes": len(scores), "complete": len(scores) == config.episodes,
        "mean": float(a.mean()), "median": float(np.median(a)), "std": float(a.std()), "min": float(a.min()),
        "max": float(a.max()), "scores": list(scores), "lengths": list(lengths), "seed": seed,
        "deterministic": config.deterministic, "sticky_action_prob": config.sticky_action_prob,
        "max_episode_frames": config.max_episode_frames,
    }
