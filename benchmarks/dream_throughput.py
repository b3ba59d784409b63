"""Dream env throughput vs the real env: steps/s on this machine's CPU cores.

Real: `ale_py.AtariVectorEnv` on Breakout at 64x64x4 with as many envs as dream rollouts
(capped at 64) and its default thread pool. Dream: `DreamVectorEnv` over the default JEPA world
model (untrained weights cost the same as trained ones) at N = 1, 16, 64, 256 rollouts, in latent
and pixel observation mode; start contexts come from a replay buffer of random frames, their
latents read from one LatentCache warmed before timing (as in the Dyna loop, where the encoder
is frozen and every dream shares the trainer's cache). Steps/s counts sub-env steps (N per
vector step), autoresets included; imagined episodes end only at the horizon (15 steps), about as
often as a trained model's do in the quick preset (13.5 steps). The sub-envs start staggered, so
1/15 of the rollouts restart from a new real context at every step (as when a trained model ends
episodes at any step), not all of them every 15th step.

Each figure is the median of `--repeats` measurements, real and dream alternated.

    python -m benchmarks.dream_throughput   # -> benchmarks/results/dream_throughput.json, RESULTS.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import ale_py
import numpy as np
import torch

from benchmarks.report import HERE, save_result
from mbrl.core.memory import keep_freed_memory
from mbrl.core.replay import FIRST, TERMINATED, ReplayBuffer
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.run_config import RunConfig
from mbrl.world_models.jepa import JEPAWorldModel
from mbrl.world_models.latent_cache import LatentCache

TARGET = 10.0  # the dream at N=256 rollouts runs at least this many times the real env's steps/s


def random_buffer(episodes: int, length: int, seed: int) -> ReplayBuffer:
    """Episodes of random 64x64 frames, one stream each."""
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer((64, 64), 4, ram_size=0)
    streams = buffer.new_streams(episodes)
    for t in range(length + 1):
        flags = np.full(episodes, FIRST if t == 0 else (TERMINATED if t == length else 0), np.uint8)
        frames = rng.integers(0, 256, (episodes, 64, 64), dtype=np.uint8)
        buffer.append(streams, frames, rng.integers(0, 4, episodes), np.zeros(episodes), flags)
    return buffer


def steps_per_second(env: object, num_envs: int, steps: int, warmup: int = 5) -> float:
    """Sub-env steps per second of random actions on an env that was reset."""
    rng = np.random.default_rng(0)
    for _ in range(warmup):
        env.step(rng.integers(0, 4, num_envs))  # type: ignore[attr-defined]
    count = max(32, steps // num_envs)  # a few hundred ms at least: shorter timings scatter widely
    start = time.perf_counter()
    for _ in range(count):
        env.step(rng.integers(0, 4, num_envs))  # type: ignore[attr-defined]
    return count * num_envs / (time.perf_counter() - start)


def real_steps_per_second(num_envs: int, steps: int) -> float:
    env = ale_py.AtariVectorEnv("breakout", num_envs, img_height=64, img_width=64, repeat_action_probability=0.25)
    env.reset(seed=0)
    speed = steps_per_second(env, num_envs, steps)
    env.close()
    return speed


def warm_cache(model: JEPAWorldModel, buffer: ReplayBuffer) -> LatentCache:
    """A cache holding the latent of every row of the buffer."""
    cache = LatentCache(model, buffer.stacks)
    cache.encode(np.arange(len(buffer))[:, None], torch.device("cpu"))
    return cache


def dream_steps_per_second(model: JEPAWorldModel, buffer: ReplayBuffer, cache: LatentCache, num_envs: int, mode: str,
                           steps: int) -> float:
    # episodes end only at the horizon: an untrained end head would end a random share of them every step,
    # and restarts (a prefill, in pixel mode also decoding the context) would make the figure depend on it
    config = DreamConfig(observation=mode, termination_threshold=1.0)
    env = DreamVectorEnv(model, buffer, num_envs, config, seed=0, latent_cache=cache)
    env.reset()
    group = np.arange(num_envs) % config.horizon
    for i in range(1, config.horizon):  # stagger: sub-envs of group i restart i steps after the first
        env.step(np.zeros(num_envs, np.int64))
        env.reset(options={"reset_mask": group == i})
    return steps_per_second(env, num_envs, steps, warmup=3)


def with_tables(r: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, notes and table."""
    at_256 = next((row["dream_latent"] / row["real"] for row in r["rows"] if row["num_envs"] == 256), None)
    target = ("not measured (no N=256 row)" if at_256 is None else
              f"{'met' if at_256 >= TARGET else 'not met'} ({at_256:.1f}x)")
    notes = [f"Torch threads {r['torch_threads']}. Default JEPA world model. Real: `ale_py.AtariVectorEnv` Breakout "
             "64x64x4 with min(N, 64) envs. Imagined episodes end at the 15-step horizon and restart staggered (1/15 "
             "of the rollouts at every step, as when a trained model ends episodes at any step). Each figure is the "
             f"median of the alternated repeats in the JSON (`samples`). Target: the dream at N=256 runs at least "
             f"{TARGET:g}x the real env: {target}. Pixel mode is bound by the decoder."]
    rows = [[row["num_envs"], f"{row['real']:.0f}", f"{row['dream_latent']:.0f}",
             f"{row['dream_latent'] / row['real']:.2f}", f"{row['dream_pixels']:.0f}",
             f"{row['dream_pixels'] / row['real']:.2f}"] for row in r["rows"]]
    columns = ["N", "real steps/s", "dream latent steps/s", "latent / real", "dream pixels steps/s", "pixels / real"]
    return {**r, "title": "Dream env throughput", "notes": notes, "tables": [{"columns": columns, "rows": rows}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--steps", type=int, default=4096, help="sub-env steps timed per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each figure; the median is kept")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dream_throughput.json")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does

    torch.manual_seed(0)
    model = JEPAWorldModel(RunConfig().world_model).eval()
    buffer = random_buffer(episodes=32, length=40, seed=0)
    cache = warm_cache(model, buffer)
    rows = []
    for n in args.sizes:
        samples: dict[str, list[float]] = {"real": [], "dream_latent": [], "dream_pixels": []}
        for _ in range(args.repeats):  # alternated, so that a slow spell of a shared machine hits all three
            samples["real"].append(real_steps_per_second(min(n, 64), args.steps))
            samples["dream_latent"].append(dream_steps_per_second(model, buffer, cache, n, "latent", args.steps))
            samples["dream_pixels"].append(dream_steps_per_second(model, buffer, cache, n, "pixels", args.steps))
        row = {"num_envs": n, "real_envs": min(n, 64), **{key: float(np.median(v)) for key, v in samples.items()},
               "samples": samples}
        rows.append(row)
        real, latent, pixels = row["real"], row["dream_latent"], row["dream_pixels"]
        print(f"N={n}: real {real:.0f}, dream latent {latent:.0f} ({latent / real:.2f}x), "
              f"pixels {pixels:.0f} ({pixels / real:.2f}x) steps/s (medians of {args.repeats})", flush=True)
    save_result(with_tables({
        "benchmark": "dream_throughput",
        "torch_threads": torch.get_num_threads(),
        "command": "python -m benchmarks.dream_throughput --sizes " + " ".join(map(str, args.sizes))
        + f" --steps {args.steps} --repeats {args.repeats}",
        "rows": rows,
    }), args.out)


if __name__ == "__main__":
    main()
