"""Collection throughput: raw ale_py.AtariVectorEnv vs the `mbrl collect` pipeline, same env count.

Both play random actions on the same game at 64x64 grayscale, 4-frame stacks, sticky actions
0.25, with the same number of envs. The mbrl side is the whole pipeline behind `mbrl collect`
(sharded vector env, preprocessing, RAM and life-loss info, replay buffer appends and flushes
to disk). The speed of these shared machines drifts by a factor of up to 1.5 within a minute,
so short rounds alternate between the two and the ratio is taken per round; the median
ratio over rounds is the figure. Also measured: replay buffer bytes per stored frame, in memory
(resident set growth on load) and on disk.

    python -m benchmarks.collect_throughput   # -> benchmarks/results/collect_throughput.json, RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ale_py
import numpy as np

from benchmarks.report import HERE, save_result
from mbrl.collect import Collector, RandomPolicy
from mbrl.core.replay import ReplayBuffer
from mbrl.envs.atari import RAM_SIZE, AtariConfig, make_vector_env


def raw_steps_per_second(game: str, num_envs: int, steps: int, seed: int) -> float:
    env = ale_py.AtariVectorEnv(
        game, num_envs, img_height=64, img_width=64, stack_num=4, repeat_action_probability=0.25,
        reward_clipping=False,
    )
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n = env.single_action_space.n  # type: ignore[attr-defined]
    for _ in range(20):  # warm-up
        env.step(rng.integers(0, n, num_envs))
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        env.step(rng.integers(0, n, num_envs))
    seconds = time.perf_counter() - start
    env.close()
    return (steps // num_envs) * num_envs / seconds


def mbrl_steps_per_second(config: AtariConfig, num_envs: int, steps: int, seed: int, directory: Path) -> float:
    env = make_vector_env(config, num_envs)
    buffer = ReplayBuffer.open(directory, (config.frame_size, config.frame_size), config.frame_stack, RAM_SIZE)
    collector = Collector(env, buffer, seed=seed)
    policy = RandomPolicy(env.single_action_space, seed)
    collector.run(20 * num_envs, policy, progress=False)  # warm-up, as for the raw env
    stats = collector.run(steps, policy, progress=False)
    collector.close()
    buffer.close()
    return stats.steps / stats.seconds


_MEASURE_LOAD = """
import resource, sys
from pathlib import Path
def resident():
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
from mbrl.core.replay import ReplayBuffer
before = resident()
buffer = ReplayBuffer.load(Path(sys.argv[1]))
print(resident() - before, len(buffer), buffer.nbytes)
"""


def buffer_memory(directory: Path, frame_pixels: int) -> dict[str, float]:
    """Bytes per stored frame pixel of a saved buffer: resident growth when a fresh process loads it, and on disk."""
    out = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(directory)], capture_output=True, text=True,
                         check=True).stdout.split()
    grown, rows, nbytes = (int(x) for x in out)
    on_disk = (directory / "rows.bin").stat().st_size
    return {
        "rows": rows,
        "resident_bytes_per_frame_pixel": grown / rows / frame_pixels,
        "disk_bytes_per_frame_pixel": on_disk / rows / frame_pixels,
        "accounted_bytes_per_frame_pixel": nbytes / rows / frame_pixels,
    }


def with_tables(r: dict[str, Any]) -> dict[str, Any]:
    """The result with its title and table."""
    rows = [
        ["env, envs", f"{r['env']}, {r['num_envs']}"],
        ["raw `ale_py.AtariVectorEnv` steps/s, median of rounds", f"{r['raw_median']:.0f}"],
        ["`mbrl collect` pipeline steps/s, median of rounds", f"{r['mbrl_median']:.0f}"],
        ["mbrl / raw, median of per-round ratios (target >= 0.80)", f"{r['ratio_median']:.2f}"],
        ["per-round ratios", ", ".join(f"{x:.2f}" for x in r["ratio_per_round"])],
        [f"replay bytes per frame pixel, resident after load ({r['rows']} rows)",
         f"{r['resident_bytes_per_frame_pixel']:.3f}"],
        ["replay bytes per frame pixel, on disk", f"{r['disk_bytes_per_frame_pixel']:.3f}"],
        ["replay bytes per frame pixel, all arrays incl. bookkeeping", f"{r['accounted_bytes_per_frame_pixel']:.3f}"],
    ]
    note = ("The speed of one pipeline varies from round to round on a shared machine, so the figure is the median "
            "of per-round ratios; the raw env uses a C++ thread pool and cannot record the console RAM.")
    return {**r, "title": "Collection throughput", "tables": [{"columns": ["measure", "value"], "rows": rows,
                                                                "notes": [note]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ALE/Breakout-v5")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4000, help="steps per measurement round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--memory-steps", type=int, default=30_000, help="size of the buffer whose memory is measured")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "collect_throughput.json")
    args = parser.parse_args()

    config = AtariConfig(id=args.env)
    game = args.env.split("/")[-1].split("-")[0]
    game = "".join("_" + c.lower() if c.isupper() else c for c in game).lstrip("_")  # MsPacman -> ms_pacman
    raw, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            raw.append(raw_steps_per_second(game, args.num_envs, args.steps, seed=r))
            ours.append(mbrl_steps_per_second(config, args.num_envs, args.steps, r, Path(tmp) / f"replay{r}"))
            print(f"round {r}: raw {raw[-1]:.0f} steps/s, mbrl collect {ours[-1]:.0f} steps/s, "
                  f"ratio {ours[-1] / raw[-1]:.2f}", flush=True)
        big = Path(tmp) / "memory"  # a larger buffer, so fixed costs do not blur the per-frame figure
        mbrl_steps_per_second(config, args.num_envs, args.memory_steps, 0, big)
        memory = buffer_memory(big, config.frame_size**2)

    result = {
        "benchmark": "collect_throughput",
        "command": "python -m benchmarks.collect_throughput " + f"--env {args.env} --num-envs {args.num_envs} "
        f"--steps {args.steps} --rounds {args.rounds} --memory-steps {args.memory_steps}",
        "env": args.env,
        "num_envs": args.num_envs,
        "raw_steps_per_second": raw,
        "mbrl_steps_per_second": ours,
        "raw_median": statistics.median(raw),
        "mbrl_median": statistics.median(ours),
        "ratio_per_round": [o / r for o, r in zip(ours, raw)],
        "ratio_median": statistics.median(o / r for o, r in zip(ours, raw)),
        **memory,
    }
    save_result(with_tables(result), args.out)


if __name__ == "__main__":
    main()
