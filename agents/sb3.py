"""stable-baselines3 on the dream: an SB3 `VecEnv` over a batched gymnasium vector env.

SB3 trains on `VecEnv`s that autoreset on the same step: when a sub-env's episode ends, the
observation returned is already the first one of its next episode, and the episode's last
observation is in `infos[i]["terminal_observation"]`. A gymnasium `VectorEnv` such as
`DreamVectorEnv` autoresets on the next step instead (one step later, ignoring that step's
action). `DreamVecEnv` converts: after a step where some sub-envs ended it restarts just those
with gymnasium's partial reset, `reset(options={"reset_mask": ended})`, so every step is one
batched `step` call plus, when some episode ended, one batched partial `reset`.

    from mbrl.agents.sb3 import DreamVecEnv
    from mbrl.envs import make_dream_vector_env
    venv = DreamVecEnv(make_dream_vector_env(64, "runs/NAME"))
    stable_baselines3.PPO("MlpPolicy", VecMonitor(venv)).learn(100_000)

`LatentVecEnv` is the same agent's view of the real game: real frame stacks encoded to latents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from mbrl.envs.dream import latent_space
from mbrl.envs.wrappers import encode_observations
from mbrl.world_models.base import WorldModel


class DreamVecEnv(VecEnv):
    """An SB3 `VecEnv` (same-step autoreset) over a gymnasium `VectorEnv` (next-step or disabled autoreset).

    The vector env must support gymnasium's partial reset, `reset(options={"reset_mask": mask})`,
    restarting only the masked sub-envs and returning every sub-env's observation, as
    `SyncVectorEnv` and `AsyncVectorEnv` do. Its observations must batch into one array (a
    `Box`, `Discrete`, ... observation space; not `Dict` or `Tuple`).

    Step infos are the vector env's infos split per sub-env (a key appears where its "_key"
    mask is set), plus SB3's "TimeLimit.truncated" (truncated and not terminated) and, for
    sub-envs that ended, "terminal_observation" (the last observation of the episode that
    ended). The infos of partial resets are in `reset_infos`.

    The sub-envs of a vector env are one object: `get_attr` reads the vector env's attribute
    (the same value for every index), `set_attr` and `env_method` act on the vector env and so
    only accept all indices.

    Args:
        venv: the vector env, e.g. a `DreamVectorEnv`; closing the adapter closes it.
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
            raise ValueError(f"DreamVecEnv needs a vector env with next-step or disabled autoreset, got {mode}")
        if isinstance(venv.single_observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
            raise TypeError(f"DreamVecEnv needs observations that batch into one array, "
                            f"got {type(venv.single_observation_space).__name__} observations")
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # ---- stepping ------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        """Restart every sub-env; the seed set by `seed()` and the options by `set_options()` apply once."""
        seed = self._seeds[0]  # VecEnv.seed(s) gives sub-env i seed s + i: a vector env takes s
        options = self._options[0]
        if any(o != options for o in self._options):
            raise ValueError("a vector env takes one options dict for all its sub-envs, got different ones")
        obs, info = self.venv.reset(seed=seed, options=dict(options) if options else None)
        self.reset_infos = _split_infos(info, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        self._actions = None
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """One batched step; sub-envs whose episode ended restart at once, in one batched partial reset."""
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, info = self.venv.step(actions)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        dones = terminated | truncated
        infos = _split_infos(info, self.num_envs)
        time_limit = (truncated & ~terminated).tolist()
        for i, sub_info in enumerate(infos):
            sub_info["TimeLimit.truncated"] = time_limit[i]
        if dones.any():
            ended = np.flatnonzero(dones)
            final = obs[ended]  # fancy indexing copies: the reset may reuse the vector env's buffer
            obs, reset_info = self.venv.reset(options={"reset_mask": dones.copy()})
            fresh = _split_infos(reset_info, self.num_envs)
            for k, i in enumerate(ended.tolist()):
                infos[i]["terminal_observation"] = final[k]
                self.reset_infos[i] = fresh[i]
        return obs, np.asarray(rewards, np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    # ---- attributes, methods, wrappers, rendering ----------------------------------------

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute `attr_name`, once per index (raises AttributeError if it has none)."""
        return [getattr(self.venv, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set the vector env's attribute `attr_name` (for all sub-envs at once)."""
        self._all(indices, "set_attr")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call the vector env's method once (for all sub-envs at once); its result is repeated per sub-env."""
        self._all(indices, "env_method")
        return [getattr(self.venv, method_name)(*method_args, **method_kwargs)] * self.num_envs

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether sub-envs are wrapped in `wrapper_class`: looks into `venv.envs` when the vector env has them."""
        envs = getattr(self.venv, "envs", None)
        rows = self._indices(indices)
        if not isinstance(envs, (list, tuple)):
            return [False] * len(rows)  # a batched vector env has no sub-env objects to wrap
        return [_is_wrapped(envs[i], wrapper_class) for i in rows]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        if frames is None:
            return [None] * self.num_envs
        return list(np.asarray(frames))  # (N, H, W, 3), or a tuple of N frames (SyncVectorEnv)

    # ---- internals -----------------------------------------------------------------------

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, (int, np.integer)):
            return [int(indices)]
        assert isinstance(indices, Iterable)
        return [int(i) for i in indices]

    def _all(self, indices: VecEnvIndices, what: str) -> None:
        if sorted(set(self._indices(indices))) != list(range(self.num_envs)):
            raise ValueError(f"{what}: the sub-envs of a vector env are one object, so only all of them "
                             f"(indices=None) can be changed, got indices {indices!r}")


class LatentVecEnv(VecEnvWrapper):
    """An SB3 `VecEnv` of real uint8 (S, H, W) frame stacks seen as the world model's latents: each step's
    observations, and the `terminal_observation` of each episode that ended, in one batched encode.

    An agent then learns on the real game in the space the dream gives it, which tells what the
    representation allows apart from what the dream teaches (`benchmarks/dream_gap.py --learn-in real`).

    Args:
        venv: SB3 vector env of real frame stacks, e.g. a `DummyVecEnv` of `mbrl.envs.atari.make_env`.
        world_model: encodes the frames (it must live on `device`).
        device: torch device of the encoding.
    """

    def __init__(self, venv: VecEnv, world_model: WorldModel, device: torch.device | str = "cpu") -> None:
        super().__init__(venv, observation_space=latent_space(world_model))
        self.world_model, self.device = world_model, torch.device(device)

    def reset(self) -> VecEnvObs:
        return self._encode(np.asarray(self.venv.reset()))

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        ended = [i for i, info in enumerate(infos) if "terminal_observation" in info]
        if ended:
            last = self._encode(np.stack([infos[i]["terminal_observation"] for i in ended]))
            for i, latent in zip(ended, last):
                infos[i]["terminal_observation"] = latent
        return self._encode(np.asarray(obs)), rewards, dones, infos

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        return encode_observations(self.world_model, frames, self.device)


def _split_infos(info: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """A gymnasium vector info (arrays with "_key" masks, nested dicts alike) -> one dict per sub-env."""
    infos: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue
        mask = info.get(f"_{key}")
        rows = range(num_envs) if mask is None else np.flatnonzero(mask).tolist()
        values = _split_infos(value, num_envs) if isinstance(value, dict) else value
        for i in rows:
            infos[i][key] = values[i]
    return infos


def _is_wrapped(env: gym.Env, wrapper_class: type[gym.Wrapper]) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, wrapper_class):
            return True
        env = env.env
    return False
