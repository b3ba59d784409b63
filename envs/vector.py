"""A fast vector env: sub-envs split into shards, each shard stepped by one worker process.

gymnasium's AsyncVectorEnv runs one process per env and pickles every result and info dict
through a pipe; with 8 Atari envs on 2 cores that halves the throughput. Here a worker steps
a whole shard in a plain loop and writes observations, rewards, flags and the declared info
fields straight into shared memory; the pipe carries only the actions and an acknowledgement.
With `num_workers=0` the same shard loop runs in the calling process. Besides gymnasium's
lockstep `step`, shards can be stepped one at a time (`send` / `recv`), so that the caller
works on one shard's results while the other workers keep playing.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

InfoSpec = dict[str, tuple[tuple[int, ...], Any]]
"""Per-env info fields carried through: name -> (shape of one env's value, dtype)."""


class ShardedVectorEnv(gym.vector.VectorEnv):
    """`len(env_fns)` envs with next-step autoreset, stepped by `num_workers` processes.

    Args:
        env_fns: picklable callables that each make one env (all with the same spaces).
        num_workers: worker processes, each stepping a contiguous shard; 0 steps every env
            in this process.
        info_keys: the info fields returned from `reset` and `step` (with their `_name`
            masks, as gymnasium's vector envs do); other info keys are dropped.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], num_workers: int, info_keys: InfoSpec) -> None:
        self.num_envs = len(env_fns)
        probe = env_fns[0]()  # only to read the spaces
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.metadata = {**probe.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        probe.close()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        fields: InfoSpec = {
            "obs": (self.single_observation_space.shape or (), self.single_observation_space.dtype),
            "reward": ((), np.float64),
            "terminated": ((), np.bool_),
            "truncated": ((), np.bool_),
            **{f"info.{k}": v for k, v in info_keys.items()},
        }
        ctx = mp.get_context("spawn")  # no fork: the parent may hold torch / OpenMP threads
        self._layout = {name: ((self.num_envs, *shape), np.dtype(dtype).str) for name, (shape, dtype) in fields.items()}
        self._shared = {name: ctx.RawArray("b", max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
                        for name, (shape, dtype) in self._layout.items()}
        self._arrays = _views(self._shared, self._layout, 0, self.num_envs)
        self._masks = {f"_{k}": np.ones(self.num_envs, dtype=bool) for k in info_keys}

        self._conns: list[Any] = []  # one per shard: a pipe to its worker, or an _InProcess stand-in
        self._procs: list[Any] = []
        if num_workers == 0:
            self.shards = [(0, self.num_envs)]
            self._conns.append(_InProcess(_Shard(list(env_fns), self._arrays)))
        else:
            bounds = np.linspace(0, self.num_envs, min(num_workers, self.num_envs) + 1).astype(int)
            self.shards = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
            for lo, hi in self.shards:
                parent, child = ctx.Pipe()
                args = (child, list(env_fns[lo:hi]), self._shared, self._layout, lo, hi)
                proc = ctx.Process(target=_worker, args=args, daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        self.closed = False

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env; an int seed gives env i the seed `seed + i`, as SyncVectorEnv does."""
        seeds = _per_env_seeds(seed, self.num_envs)
        for conn, (lo, hi) in zip(self._conns, self.shards):
            conn.send(("reset", (seeds[lo:hi], options)))
        for shard in range(len(self.shards)):
            self._wait(shard)
        return self._arrays["obs"].copy(), self._info(slice(None))

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env; an env that ended on the previous step resets now and ignores its action."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Start stepping every shard; the caller may work meanwhile, then call `step_wait`."""
        actions = np.asarray(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions, got {len(actions)}")
        for shard, (lo, hi) in enumerate(self.shards):
            self.send(shard, actions[lo:hi])

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Finish the step started by `step_async`."""
        for shard in range(len(self.shards)):
            self._wait(shard)
        return self._results(slice(None))

    def send(self, shard: int, actions: np.ndarray) -> None:
        """Start stepping one shard (envs `shards[shard]`) with its actions.

        Stepping shards one by one (send, recv, send, ...) keeps every worker busy while the
        caller handles another shard's results; `step` waits for the slowest shard each time.
        """
        lo, hi = self.shards[shard]
        if len(actions) != hi - lo:
            raise ValueError(f"shard {shard} has {hi - lo} envs, got {len(actions)} actions")
        self._conns[shard].send(("step", np.asarray(actions)))

    def recv(self, shard: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Wait for the step of one shard started by `send`; its envs' results."""
        self._wait(shard)
        lo, hi = self.shards[shard]
        return self._results(slice(lo, hi))

    def close_extras(self, **kwargs: Any) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        for conn in self._conns:
            conn.close()

    def _wait(self, shard: int) -> None:
        ok, error = self._conns[shard].recv()
        if not ok:
            raise RuntimeError(f"a ShardedVectorEnv worker failed:\n{error}")

    def _results(self, envs: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = self._arrays
        return (a["obs"][envs].copy(), a["reward"][envs].copy(), a["terminated"][envs].copy(),
                a["truncated"][envs].copy(), self._info(envs))

    def _info(self, envs: slice) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for name, array in self._arrays.items():
            if name.startswith("info."):
                key = name[len("info.") :]
                info[key] = array[envs].copy()
                info[f"_{key}"] = self._masks[f"_{key}"][envs]
        return info


class _Shard:
    """Steps a list of envs with next-step autoreset, writing results into the given arrays."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]], arrays: dict[str, np.ndarray]) -> None:
        self.envs = [fn() for fn in env_fns]
        self.arrays = arrays
        self.info_keys = [name[len("info.") :] for name in arrays if name.startswith("info.")]
        self.autoreset = np.zeros(len(self.envs), dtype=bool)

    def reset(self, arg: tuple[list[int | None], dict[str, Any] | None]) -> None:
        seeds, options = arg
        for i, env in enumerate(self.envs):
            self._write(i, *env.reset(seed=seeds[i], options=options), reward=0.0, terminated=False, truncated=False)
        self.autoreset[:] = False

    def step(self, actions: np.ndarray) -> None:
        for i, env in enumerate(self.envs):
            if self.autoreset[i]:
                obs, info = env.reset()
                reward: SupportsFloat = 0.0
                terminated, truncated = False, False
            else:
                obs, reward, terminated, truncated, info = env.step(actions[i])
            self._write(i, obs, info, reward=float(reward), terminated=terminated, truncated=truncated)
            self.autoreset[i] = terminated or truncated

    def _write(self, i: int, obs: Any, info: dict[str, Any], reward: float, terminated: bool, truncated: bool) -> None:
        a = self.arrays
        a["obs"][i] = obs
        a["reward"][i] = reward
        a["terminated"][i] = terminated
        a["truncated"][i] = truncated
        for key in self.info_keys:
            a[f"info.{key}"][i] = info[key]

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _InProcess:
    """Stands in for a worker's pipe when `num_workers=0`: `recv` runs the command `send` left."""

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.pending: tuple[str, Any] = ("", None)

    def send(self, message: tuple[str, Any]) -> None:
        if message[0] == "close":
            self.shard.close()
        self.pending = message

    def recv(self) -> tuple[bool, None]:
        command, arg = self.pending
        getattr(self.shard, command)(arg)
        return True, None

    def close(self) -> None:
        pass


def _views(shared: dict[str, Any], layout: dict[str, tuple], lo: int, hi: int) -> dict[str, np.ndarray]:
    """Numpy views of rows [lo, hi) of each shared array."""
    return {
        name: np.frombuffer(shared[name], dtype=np.dtype(dtype), count=int(np.prod(shape))).reshape(shape)[lo:hi]
        for name, (shape, dtype) in layout.items()
    }


def _worker(conn: Any, env_fns: list, shared: dict[str, Any], layout: dict[str, tuple], lo: int, hi: int) -> None:
    """Serve reset / step / close for one shard."""
    shard = None
    try:
        _single_threaded()
        shard = _Shard(env_fns, _views(shared, layout, lo, hi))
        while True:
            try:
                command, arg = conn.recv()
            except (EOFError, ConnectionError):  # the parent is gone (killed): nothing to serve, no one to tell
                break
            if command == "close":
                break
            getattr(shard, command)(arg)
            conn.send((True, None))
    except KeyboardInterrupt:
        pass
    except Exception:  # the parent raises it, with this traceback
        with contextlib.suppress(OSError):  # unless the parent is gone meanwhile (a broken pipe)
            conn.send((False, traceback.format_exc()))
    finally:
        if shard is not None:
            shard.close()
        conn.close()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread in the calling process while worker processes step envs.

    The workers keep the cores busy, and torch's thread pool waiting for a core it does not get
    makes small forward passes 10-20x slower (measured: encoding 4 observations took 107-310 ms
    with 2 threads next to a busy core, 15 ms with 1). The previous thread count is restored after.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _single_threaded() -> None:
    """The workers already use every core between them; a library's own thread pool would oversubscribe."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _per_env_seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"expected {n} seeds, got {len(seeds)}")
    return seeds
