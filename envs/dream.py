"""The dream: a world model's imagination as a gymnasium env, batched over sub-envs.

Each imagined episode starts from a real context sampled from the replay buffer (a window of
observations and the actions between them, encoded and given to `observe`; restarts take
contexts from a pool prefilled N at a time), then every `step` is one batched
`world_model.step` for all sub-envs. `DreamVectorEnv` autoresets on the next
step, as gymnasium's vector envs do; `DreamEnv` is the single-env view that SB3 and
`check_env` use. Observations are latents, or in pixel mode decoded frame stacks shaped like
the real env's observations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from torch import Tensor

from mbrl.core.config import check_ranges
from mbrl.core.replay import ReplayBuffer
from mbrl.world_models.base import WorldModel, map_state
from mbrl.world_models.blocks import tensor_versions
from mbrl.world_models.latent_cache import LatentCache

_MAX_EXTRA_CONTEXT = 64  # longest search for a context whose state keeps its shape when stepped


@dataclass(frozen=True)
class DreamConfig:
    """How imagined episodes start, end and look.

    Attributes:
        horizon: imagined steps before an episode is truncated.
        context: real observations encoded to start an imagination: a window of `context`
            observations and the `context - 1` actions between them, sampled from the replay
            buffer. A world model whose state grows with the context gets a window long enough
            that stepping keeps the state's shape, so that every rollout's state has one shape
            and sub-envs can restart independently (JEPA's state has one shape for any context).
        observation: "latent" (float32 `latent_shape`) or "pixels" (uint8 (S, H, W) frame
            stacks of decoded frames, like the real env's observations).
        reward: "clipped" (the predicted expected reward rounded to -1, 0 or 1) or "expected"
            (the expected reward as predicted).
        terminate_on: "game_over", or "life_loss" (a lost life or a game over ends the episode).
        termination: "threshold" (an episode terminates when the predicted probability of its end
            event exceeds `termination_threshold`) or "sample" (it terminates with that
            probability, drawn from the env's seeded generator: rare events a head predicts
            with a probability below one half still end some episodes).
        termination_threshold: see `termination`.
        value_bootstrap: an episode truncated at `horizon` gets `discount` x the world model's value of its last
            latent added to its last reward (a world model with a value head, `WorldModel.has_value`), so
            an agent learning from short dreams sees past their end; the episode still reports
            truncated, as gymnasium asks. Off by default (the reward is the model's alone).
        discount: the per-step discount of `value_bootstrap` (that of the agent learning in the dream).
        device: torch device of the world model and of imagination.
    """

    horizon: int = 15
    context: int = 4
    observation: str = "latent"
    reward: str = "clipped"
    terminate_on: str = "game_over"
    termination: str = "threshold"
    termination_threshold: float = 0.5
    value_bootstrap: bool = False
    discount: float = 0.99
    device: str = "cpu"

    ranges: ClassVar[dict[str, str]] = {"horizon": "[1, 100_000]", "context": "[1, 1024]",
                                        "termination_threshold": "[0, 1]", "discount": "[0, 1]"}

    def __post_init__(self) -> None:
        check_ranges(self)
        choices = {"observation": ("latent", "pixels"), "reward": ("clipped", "expected"),
                   "terminate_on": ("game_over", "life_loss"), "termination": ("threshold", "sample")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


def latent_space(world_model: WorldModel) -> gym.spaces.Box:
    """The observation space of one latent: float32 `latent_shape`, every finite value (the dream raises on a
    non-finite one). Finite bounds, not infinite ones, which gymnasium's env checker warns about."""
    bound = float(np.finfo(np.float32).max)
    return gym.spaces.Box(-bound, bound, tuple(world_model.latent_shape), np.float32)


class DreamVectorEnv(gym.vector.VectorEnv):
    """`num_envs` imagined episodes stepped together, with next-step autoreset.

    A sub-env that ended on the previous step ignores its action, restarts from a new real
    context and returns reward 0, terminated and truncated False. Rewards are float64 (N,);
    step infos hold float32 (N,) arrays "cont" (continue probability), "life_loss"
    (probability) and "expected_reward", with gymnasium's "_key" masks (False where the
    sub-env restarted instead of stepping).

    Args:
        world_model: the imagination; it must live on `config.device`.
        buffer: real episodes that start contexts are sampled from.
        num_envs: imagined episodes run in parallel.
        config: dream settings.
        seed: seeds the context sampling and torch's generator (also `reset(seed=...)`).
        episodes: if given, contexts come only from these episode ids (e.g. a training split).
        render_mode: None or "rgb_array".
        latent_cache: latents of the buffer's rows, shared between envs over the same buffer and
            world model (None: the env keeps its own); see `LatentCache` for when it is valid.
    """

    def __init__(self, world_model: WorldModel, buffer: ReplayBuffer, num_envs: int, config: DreamConfig,
                 seed: int | None = None, episodes: np.ndarray | None = None, render_mode: str | None = None,
                 latent_cache: LatentCache | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.world_model, self.buffer, self.config, self.episodes = world_model, buffer, config, episodes
        self.latent_cache = latent_cache if latent_cache is not None else LatentCache(world_model, buffer.stacks)
        self.num_envs, self.render_mode, self.device = num_envs, render_mode, torch.device(config.device)
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.frame_shape = (buffer.frame_stack, *buffer.frame_shape)  # (S, H, W) of a pixel observation
        self.single_action_space = gym.spaces.Discrete(world_model.num_actions)
        if config.observation == "latent":
            self.single_observation_space: gym.spaces.Box = latent_space(world_model)
        else:
            self.single_observation_space = gym.spaces.Box(0, 255, self.frame_shape, np.uint8)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._generator = torch.Generator()
        with torch.no_grad(), self._model_rng():
            self.context = self._context_length()
            decoded = self._frames(torch.zeros(1, *world_model.latent_shape, device=self.device))
        if decoded.shape[1:] != buffer.frame_shape:
            raise ValueError(f"the world model decodes {decoded.shape[1:]} frames; the buffer holds "
                             f"{buffer.frame_shape} frames")
        self._seed(seed)  # after the probes above: seed=s then reset() is the same as reset(seed=s)
        self._state: Any = None  # the world model's batched imagination state
        self._latent = torch.zeros(0)  # (N, *latent_shape) current latents
        self._stack = np.zeros((num_envs, *self.frame_shape), np.uint8)  # pixel mode: (N, S, H, W)
        self._steps = np.zeros(num_envs, np.int64)  # imagined steps of each episode
        self._ended = np.zeros(num_envs, bool)  # ended on the previous step: restarts on the next
        self._pool: tuple[Any, Tensor, np.ndarray] | None = None  # prefilled starts (see `_start`)
        self._tensors = [*world_model.parameters(), *world_model.buffers()]  # listed once: a walk costs ~1 ms
        self._pool_used, self._pool_weights = 0, self._weights()
        if config.value_bootstrap and not world_model.has_value:
            raise ValueError(f"dream.value_bootstrap needs a world model with a value head; "
                             f"{type(world_model).__name__} has none")

    @torch.no_grad()
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Restart sub-envs from new real contexts; `seed` reseeds both generators.

        `options={"reset_mask": mask}` (bool (N,), after a full reset) restarts only the masked
        sub-envs, in one batched start, as gymnasium's vector envs allow; others are untouched.
        """
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"DreamVectorEnv.reset takes only the option reset_mask, got {sorted(options)}")
        if seed is not None:
            self._seed(seed)
        if mask is None:
            with self._model_rng():
                self._pool = None  # a full reset starts all sub-envs afresh and forgets prefilled starts
                self._state, self._latent, self._stack[:] = self._prefill(self.num_envs)
            mask = np.ones(self.num_envs, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask.dtype} "
                                 f"{mask.shape}")
            if self._state is None:
                raise RuntimeError("a partial reset needs a full reset() first")
            if mask.any():
                with self._model_rng():
                    rows = torch.as_tensor(np.flatnonzero(mask), device=self.device)
                    state, latent, self._stack[mask] = self._start(len(rows))
                    _scatter_(self._state, rows, state)
                    self._latent.index_copy_(0, rows, latent)
        self._steps[mask] = 0
        self._ended[mask] = False
        return self._observation(), {}

    @torch.no_grad()
    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One imagined step of every sub-env: int (N,) actions in [0, num_actions).

        Raises:
            ValueError: the actions are not N integers in range.
            FloatingPointError: the world model predicted NaN or inf (the message names the output).
        """
        actions = self._check_actions(actions)
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        restart, live = self._ended.copy(), ~self._ended
        with self._model_rng():
            out = self.world_model.step(self._state, torch.as_tensor(actions, device=self.device))
            assert out.latent is not None, "a step asked for its latent gave none"
            _check_finite(live, latent=out.latent, reward=out.reward, cont=out.cont, life_loss=out.life_loss)
            state, latent = out.state, out.latent
            if self.config.observation == "pixels":
                self._stack = np.concatenate([self._stack[:, 1:], self._frames(latent)[:, None]], axis=1)
            if restart.any():  # only the sub-envs that ended: one batched start for all of them
                rows = torch.as_tensor(np.flatnonzero(restart), device=self.device)
                fresh_state, fresh_latent, self._stack[restart] = self._start(len(rows))
                _scatter_(state, rows, fresh_state)
                latent.index_copy_(0, rows, fresh_latent)
        self._state, self._latent = state, latent

        expected, cont, life_loss = (x.float().cpu().numpy() for x in (out.reward, out.cont, out.life_loss))
        clipped = np.clip(np.round(expected), -1, 1) + 0.0  # round half to even; + 0.0 turns -0.0 into 0.0
        reward = clipped if self.config.reward == "clipped" else expected
        end = 1.0 - cont if self.config.terminate_on == "game_over" else np.maximum(1.0 - cont, life_loss)
        if self.config.termination == "sample":
            terminated = live & (self.np_random.random(self.num_envs) < end)
        else:
            terminated = live & (end > self.config.termination_threshold)
        self._steps = np.where(live, self._steps + 1, 0)
        truncated = live & (self._steps >= self.config.horizon)
        self._ended = terminated | truncated
        cut = truncated & ~terminated
        if self.config.value_bootstrap and cut.any():
            value = self.world_model.value(out.latent[torch.as_tensor(np.flatnonzero(cut), device=self.device)])
            reward = reward.astype(np.float64)
            reward[cut] += self.config.discount * value.float().cpu().numpy()
        info = {"cont": np.where(live, cont, 1.0).astype(np.float32),
                "life_loss": np.where(live, life_loss, 0.0).astype(np.float32),
                "expected_reward": np.where(live, expected, 0.0).astype(np.float32)}
        info.update({f"_{key}": live.copy() for key in list(info)})
        return self._observation(), np.where(live, reward, 0.0).astype(np.float64), terminated, truncated, info

    @torch.no_grad()
    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The current frame of every sub-env, uint8 (N, H, W, 3) grayscale (None without a render_mode)."""
        if self.render_mode is None:
            gym.logger.warn("render() needs render_mode='rgb_array'")
            return None
        if self._state is None:
            raise RuntimeError("call reset() before render()")
        return np.repeat(self._frames(self._latent)[..., None], 3, axis=-1)  # no draw: rendering changes nothing

    # ---- internals -----------------------------------------------------------------------

    def _seed(self, seed: int | None) -> None:
        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._generator.manual_seed(self._np_random_seed % 2**63)

    @contextlib.contextmanager
    def _model_rng(self) -> Iterator[None]:
        """World-model calls draw from torch's global generator seeded from ours, and leave the caller's untouched."""
        devices = [self.device] if self.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            seed = int(torch.randint(2**62, (), generator=self._generator))
            if devices:
                torch.manual_seed(seed)
            else:  # torch.manual_seed would also queue a seed for every accelerator: ~1 ms a call without one
                torch.default_generator.manual_seed(seed)
            yield

    def _context_length(self) -> int:
        """The shortest window (>= config.context) whose observed state keeps its shape when stepped."""
        latent = torch.zeros(1, 1, *self.world_model.latent_shape, device=self.device)
        for length in range(self.config.context, self.config.context + _MAX_EXTRA_CONTEXT):
            actions = torch.zeros(1, length - 1, dtype=torch.long, device=self.device)
            state = self.world_model.observe(latent.expand(1, length, *latent.shape[2:]), actions)
            stepped = self.world_model.step(state, torch.zeros(1, dtype=torch.long, device=self.device)).state
            if _shapes(state) == _shapes(stepped):
                return length
        raise ValueError("the world model's state grows with every step, so sub-envs cannot restart independently")

    def _start(self, n: int) -> tuple[Any, Tensor, np.ndarray]:
        """`n` new episodes (as `_prefill`), taken from a pool of real contexts prefilled `num_envs` at a time.

        A prefill's cost is mostly per call, not per row (256 rows take 3.5x the time of 17), and a
        trained world model ends a few rollouts at every step, so restarts draw on the pool; it is
        refilled when it holds fewer than `n` starts (the rest are dropped) or when the world model's
        weights changed since it was filled.
        """
        weights = self._weights()
        if self._pool is None or self._pool_weights != weights or len(self._pool[1]) - self._pool_used < n:
            self._pool, self._pool_used, self._pool_weights = self._prefill(max(n, self.num_envs)), 0, weights
        state, latent, stack = self._pool
        taken = slice(self._pool_used, self._pool_used + n)
        self._pool_used += n
        return _rows(state, taken), latent[taken], stack[taken]

    def _weights(self) -> tuple[tuple[int, int, torch.dtype], ...]:
        """The world model's tensors' versions (`tensor_versions`): prefilled starts are valid while they stay."""
        return tensor_versions(self._tensors)

    def _prefill(self, n: int) -> tuple[Any, Tensor, np.ndarray]:
        """`n` new episodes from real contexts: (state, latents (n, *latent_shape), pixel stacks (n, S, H, W)).

        The pixel stack holds the decoded newest frames of the context's last S observations
        (the frames of the last observation's real stack, as the decoder pictures them), the
        oldest repeated when the context is shorter than S; it is zeros in latent mode.
        """
        ends = self.buffer.sample_ends(n, self.context - 1, self.np_random, self.episodes)
        rows, actions = self.buffer.window_rows(ends, self.context - 1)  # frames only for rows the cache lacks
        latents = self.latent_cache.encode(rows, self.device)  # (n, T, *latent)
        _check_finite(None, latent=latents)
        state = self.world_model.observe(latents, torch.as_tensor(actions, device=self.device))
        stack = np.zeros((n, *self.frame_shape), np.uint8)
        if self.config.observation == "pixels":
            frames = self._frames(latents[:, -self.frame_shape[0]:])  # (n, min(T, S), H, W)
            stack[:] = np.concatenate([frames[:, :1]] * (self.frame_shape[0] - frames.shape[1]) + [frames], axis=1)
        return state, latents[:, -1], stack

    def _frames(self, latents: Tensor) -> np.ndarray:
        """latents (..., *latent_shape) -> uint8 decoded newest frames (..., H, W)."""
        return (self.world_model.decode(latents).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def _observation(self) -> np.ndarray:
        if self.config.observation == "pixels":
            return self._stack.copy()
        return self._latent.float().cpu().numpy().copy()  # never a view of the model's state

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.dtype.kind not in "iu":
            raise ValueError(f"actions must be integers, got dtype {a.dtype}")
        if a.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {a.shape}")
        n = self.world_model.num_actions
        if ((a < 0) | (a >= n)).any():
            raise ValueError(f"actions must be in [0, {n}), got {a.tolist()}")
        return a.astype(np.int64)


class DreamEnv(gym.Env):
    """One imagined episode at a time (a `DreamVectorEnv` with one sub-env), without autoreset.

    Takes `DreamVectorEnv`'s arguments except `num_envs`. `step` returns Python floats and
    bools and infos of floats; after an episode ends, call `reset()`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}  # Atari's 60 Hz with a 4-frame skip

    def __init__(self, world_model: WorldModel, buffer: ReplayBuffer, config: DreamConfig, seed: int | None = None,
                 episodes: np.ndarray | None = None, render_mode: str | None = None) -> None:
        self.vector = DreamVectorEnv(world_model, buffer, 1, config, seed, episodes, render_mode)
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.render_mode = render_mode
        self._running = False

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _ = self.vector.reset(seed=seed, options=options)
        self._np_random, self._np_random_seed = self.vector.np_random, self.vector.np_random_seed  # one generator
        self._running = True
        return obs[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One imagined step; `action` is an integer scalar in [0, num_actions)."""
        if not self._running:
            raise RuntimeError("the episode has ended or not started: call reset()")
        if np.shape(action) != ():
            raise ValueError(f"action must be an integer scalar, got shape {np.shape(action)}")
        obs, reward, terminated, truncated, info = self.vector.step(np.asarray(action)[None])
        self._running = not (terminated[0] or truncated[0])
        scalars = {key: float(value[0]) for key, value in info.items() if not key.startswith("_")}
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), scalars

    def render(self) -> np.ndarray | None:
        """The current frame, uint8 (H, W, 3) (None without a render_mode)."""
        frames = self.vector.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self.vector.close()


def _check_finite(rows: np.ndarray | None, **outputs: Tensor) -> None:
    """Raise FloatingPointError naming the first output with NaN or inf (in the given batch rows).

    One reduction first: every output summed whole, the sums added, so a NaN or inf anywhere (even in
    a row not asked about) makes the total non-finite; only then, or when finite values overflowed
    the float32 total, are the outputs checked one by one in the given rows to name the culprit.
    """
    if bool(torch.isfinite(torch.stack([x.sum(dtype=torch.float32) for x in outputs.values()]).sum())):
        return
    for name, x in outputs.items():
        if rows is not None:
            x = x[torch.as_tensor(rows, device=x.device)]
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"the world model predicted a non-finite {name} (NaN or inf)")


def _shapes(state: Any) -> Any:
    """The per-rollout shapes of a state's tensors, in the state's structure."""
    return map_state(lambda tensor: tuple(tensor.shape[1:]), state)


def _rows(state: Any, rows: slice) -> Any:
    """Batch rows `rows` of a state, as views."""
    return map_state(lambda tensor: tensor[rows], state)


def _scatter_(state: Any, rows: Tensor, fresh: Any) -> None:
    """Write `fresh` into batch rows `rows` of `state`, in place (the env owns its state)."""
    map_state(lambda tensor, new: tensor.index_copy_(0, rows, new.to(tensor.dtype)), state, fresh)
