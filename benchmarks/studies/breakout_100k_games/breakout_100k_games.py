"""The final agents of `breakout_100k.py` on more games: mbrl, PPO and random on the same games.

breakout_100k.py scores each run on 8 games at its end. A Breakout game's score varies by ~1.5
around its policy's mean, so a mean over 8 games is uncertain by ~0.5: as much as the methods
differ. This script plays `--episodes` full games with each seed's final agents, the same games
(one evaluation seed per training seed) for each method:
  METHOD  the agent of the finished run runs/bench/METHOD-sSEED of one of breakout_100k.py's mbrl
          methods (as `mbrl evaluate --run` loads it): mbrl-dqn (the atari100k preset), mbrl (the
          preset before 2026-12-05), mbrl-mpc, mbrl-dqn-dream
  METHOD:mpc  MPC on that run's world model with the run's `mpc` settings (`mbrl plan --run`'s agent,
          without a terminal value): the same 100k real steps, used by planning instead of the agent
  ppo     the baseline's PPO from runs/bench/ppo-sSEED, trained first with breakout_100k.py's
          code where this machine does not have it (or not to the end)
  random  the uniformly random policy
Each (method, seed) is added to benchmarks/results/breakout_100k_games.json at once; RESULTS.md
shows the per-seed means, mean +- std over seeds and the paired differences of mbrl and MPC to
PPO and random.

    python benchmarks/breakout_100k_games.py --seeds 0 1 2 3 4 5 --episodes 50
    python benchmarks/breakout_100k_games.py --seeds 0 1 2 3 4 5 --episodes 50 --methods mbrl:mpc mbrl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from breakout_100k import MBRL, current, train_ppo
from breakout_100k import RESULT as TRAINED

from mbrl.core.memory import keep_freed_memory
from report import HERE, load_result, machine, save_result

RESULT = HERE / "results" / "breakout_100k_games.json"
METHODS = (*MBRL, *(f"{method}:mpc" for method in MBRL), "ppo", "random")  # RUN:mpc plans in RUN's world model


def games_seed(seed: int) -> int:
    """The evaluation seed of a training seed's games (another stream than breakout_100k.py's 8 games)."""
    return int(np.random.SeedSequence([seed, 2000]).generate_state(1)[0])


def final_agent(method: str, seed: int, real_steps: int, runs: Path, config: Any) -> Any:
    """The final agent of `method`'s run for `seed` (one of METHODS)."""
    if method == "random":
        from mbrl.collect import RandomPolicy
        from mbrl.envs.atari import make_env

        return RandomPolicy(make_env(config.env).action_space, seed=seed)
    if method == "ppo":
        return train_ppo(seed, real_steps, runs, config)
    from mbrl.cli import config_for_run
    from mbrl.cli_agents import mpc_for_run
    from mbrl.core.run import RunDir
    from mbrl.loop import load_trained_agent, with_num_actions

    trained_by, _, acting = method.partition(":")
    trained = TRAINED.exists() and any(r["method"] == trained_by and r["seed"] == seed and r["real_steps"] == real_steps
                                       for r in current(json.loads(TRAINED.read_text())["runs"]))
    if not trained:
        raise SystemExit(f"no finished {trained_by} run for seed {seed} in {TRAINED}: run breakout_100k.py --seeds "
                         f"{seed} --methods {trained_by}")
    run = RunDir(runs / f"{trained_by}-s{seed}")
    run_config = with_num_actions(config_for_run(run, None, [], {"device": "cpu"}))
    if acting == "mpc":
        return mpc_for_run(run, run_config, torch.device("cpu"), seed)
    return load_trained_agent(run, run_config, torch.device("cpu"))


def mpc_record(config: Any) -> dict[str, Any]:
    """What RESULTS.md says of an MPC agent's `MPCConfig`."""
    search = config.search
    return {"planner": config.planner, "candidates": search.candidates, "horizon": search.horizon,
            "iterations": search.iterations, "life_loss_penalty": config.life_loss_penalty}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds whose agents to score")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["mbrl-dqn", "ppo", "random"])
    parser.add_argument("--episodes", type=int, default=50, help="full games per agent (default 50)")
    parser.add_argument("--real-steps", type=int, default=100_000, help="the runs' real-step budget (default 100000)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"), help="where the runs live")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does
    from mbrl.evaluate import evaluate_agent
    from mbrl.run_config import resolve_config

    config = resolve_config("atari100k", [])
    eval_config = dataclasses.replace(config.eval, episodes=args.episodes)
    command = " ".join(["python", "benchmarks/breakout_100k_games.py", *sys.argv[1:]])
    for seed in args.seeds:
        for method in args.methods:
            key = {"method": method, "seed": seed, "real_steps": args.real_steps, "episodes": args.episodes}
            saved = load_result(RESULT, "breakout_100k_games")
            if any(all(r.get(k) == v for k, v in key.items()) for r in saved["runs"]):
                continue
            agent = final_agent(method, seed, args.real_steps, args.runs, config)
            torch.manual_seed(seed)  # SB3's predict samples from torch's global generator
            result = evaluate_agent(agent, config.env, eval_config, games_seed(seed), progress=False)
            print(f"{method} seed {seed}: {result['mean']:.2f} +- {result['std']:.2f} over {args.episodes} games",
                  file=sys.stderr, flush=True)
            saved = load_result(RESULT, "breakout_100k_games")  # others may have added runs
            settings = {"mpc": mpc_record(agent.config)} if method.endswith(":mpc") else {}
            saved["runs"].append({**key, **settings, "mean": result["mean"], "std": result["std"],
                                  "scores": result["scores"], "lengths": result["lengths"],
                                  "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": command})
            save_result(saved, RESULT)


if __name__ == "__main__":
    main()
