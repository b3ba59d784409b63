"""Latent MPC speed: milliseconds per real action of CEM, MPPI and random shooting on the default JEPA model.

One `MPCAgent.predict` per real action (encode the newest frame stack, plan in imagination,
shift the warm start) for one env, timed over `--actions` actions after `--warmup` ones, on
random frames (untrained weights and random frames cost the same compute as trained ones and
real frames). Rows: CEM, MPPI and random shooting at the issue's budget N=512, H=12, I=4, and
CEM at smaller budgets, to find what meets 100 ms per action. Also profiles one imagination
step at N=512 to show where the time goes: the full `step` (the predictor re-reads its whole
context window), the predictor over only the newest latent and action (what a step with a KV
cache would cost, at most), and the reward and termination heads.

    python benchmarks/planning.py   # -> benchmarks/results/planning.json, RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.mpc import MPCAgent, MPCConfig
from agents.planners import PlannerConfig
from report import save_result
from world_models.jepa import JEPAConfig, JEPAWorldModel

HERE = Path(__file__).resolve().parent
TARGET_MS = 100.0
ISSUE_BUDGET = (512, 12, 4)  # candidates, horizon, iterations
SMALLER = [(128, 8, 3), (64, 8, 2), (64, 8, 1), (32, 6, 2), (64, 4, 2), (32, 4, 2), (16, 4, 2)]


class CountingSteps:
    """Wraps `model.step` to count imagined rollout steps (after shared-prefix dedupe)."""

    def __init__(self, model: JEPAWorldModel) -> None:
        self.count = 0
        self._step = model.step
        model.step = self  # type: ignore[method-assign]

    def __call__(self, state: Any, action: torch.Tensor) -> Any:
        self.count += len(action)
        return self._step(state, action)


def time_agent(model: JEPAWorldModel, counter: CountingSteps, config: MPCConfig, actions: int,
               warmup: int) -> dict[str, Any]:
    """Milliseconds per real action of an MPC agent on one env, and imagined steps per action."""
    agent = MPCAgent(model, config, seed=0)
    rng = np.random.default_rng(0)
    times, steps = [], []
    for k in range(warmup + actions):
        obs = rng.integers(0, 256, (1, 4, 64, 64), dtype=np.uint8)
        counter.count = 0
        start = time.perf_counter()
        agent.predict(obs, None, np.array([k == 0]), deterministic=True)
        elapsed = time.perf_counter() - start
        if k >= warmup:
            times.append(elapsed * 1e3)
            steps.append(counter.count)
    ms = np.array(times)
    search = config.search
    row = {"planner": config.planner, "candidates": search.candidates, "horizon": search.horizon,
           "iterations": search.iterations, "actions": actions, "median_ms": float(np.median(ms)),
           "p95_ms": float(np.percentile(ms, 95)), "imagined_steps": float(np.mean(steps)),
           "imagined_steps_without_dedupe": search.candidates * search.horizon * search.iterations}
    print(f"{config.planner} N={search.candidates} H={search.horizon} I={search.iterations}: median "
          f"{row['median_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, imagined steps {row['imagined_steps']:.0f} / "
          f"{row['imagined_steps_without_dedupe']}", flush=True)
    return row


@torch.no_grad()
def step_profile(model: JEPAWorldModel, batch: int, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of one imagined step for `batch` rollouts with a full context window, and of its parts."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, cfg.context, *model.latent_shape, generator=g)
    actions = torch.randint(0, cfg.num_actions, (batch, cfg.context), generator=g)
    state = model.observe(latents, actions[:, :-1])

    def ms(fn: Any) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e3

    return {
        "batch": batch,
        "step_ms": ms(lambda: model.step(state, actions[:, -1])),
        "predictor_full_window_ms": ms(lambda: model.dynamics(latents, actions)),
        "predictor_newest_only_ms": ms(lambda: model.dynamics(latents[:, -1:], actions[:, -1:])),
        "heads_ms": ms(lambda: model.transition(latents[:, -1], latents[:, -2])),
        "encode_one_obs_ms": ms(lambda: model.encode(torch.zeros(1, 1, cfg.frame_stack, cfg.frame_size,
                                                                 cfg.frame_size, dtype=torch.uint8))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=30, help="timed actions per row")
    parser.add_argument("--large-actions", type=int, default=10, help="timed actions per row at the issue budget")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared 2-core machine a second thread waits on the "
                        "other processes and makes small batches up to 40x slower)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "planning.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = JEPAWorldModel(JEPAConfig(num_actions=4)).eval()
    profile = step_profile(model, ISSUE_BUDGET[0])
    print("one step at N=512:", {k: round(v, 1) for k, v in profile.items()}, flush=True)
    counter = CountingSteps(model)
    n, h, i = ISSUE_BUDGET
    def mpc(name: str, n: int, h: int, i: int) -> MPCConfig:
        return MPCConfig(planner=name, search=PlannerConfig(candidates=n, horizon=h, iterations=i))

    rows = [time_agent(model, counter, mpc(name, n, h, i), args.large_actions, args.warmup)
            for name in ("cem", "mppi", "shooting")]
    for n, h, i in SMALLER:
        rows.append(time_agent(model, counter, mpc("cem", n, h, i), args.actions, args.warmup))
    meets = [r for r in rows if r["planner"] == "cem" and r["p95_ms"] <= TARGET_MS]
    best = max(meets, key=lambda r: r["imagined_steps_without_dedupe"], default=None)
    command = (f"python benchmarks/planning.py --actions {args.actions} --large-actions {args.large_actions} "
               f"--warmup {args.warmup} --threads {args.threads}")
    save_result({
        "benchmark": "planning",
        "torch_threads": args.threads,
        "load_average": os.getloadavg()[0],
        "command": command,
        "target_ms": TARGET_MS,
        "step_profile": profile,
        "rows": rows,
        "largest_cem_within_target": None if best is None else
        {k: best[k] for k in ("candidates", "horizon", "iterations", "median_ms", "p95_ms")},
    }, args.out)


if __name__ == "__main__":
    main()
