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
Each (method, seed) is added to this study's results/breakout_100k_games.json at once; its table
shows the per-seed means, mean +- std over seeds and the paired differences of mbrl and MPC to
PPO and random.

    python -m benchmarks.studies.breakout_100k_games.breakout_100k_games --seeds 0 1 2 3 4 5 --episodes 50
    python -m benchmarks.studies.breakout_100k_games.breakout_100k_games --seeds 0 1 2 3 4 5 --episodes 50 \
        --methods mbrl:mpc mbrl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.breakout_100k import REMOVED, baseline_config, current, train_ppo
from benchmarks.breakout_100k import RESULT as TRAINED
from benchmarks.paired import paired_t
from benchmarks.report import gathered, load_result, machine, save_result
from mbrl.core.memory import keep_freed_memory

RESULT = Path(__file__).resolve().parent / "results" / "breakout_100k_games.json"
METHODS = (*REMOVED, *(f"{method}:mpc" for method in REMOVED), "ppo", "random")  # RUN:mpc plans in RUN's model


def games_seed(seed: int) -> int:
    """The evaluation seed of a training seed's games (another stream than breakout_100k.py's 8 games)."""
    from mbrl.session import derive_seed

    return derive_seed([seed, 2000])


def final_agent(method: str, seed: int, real_steps: int, runs: Path, config: Any) -> Any:
    """The final agent of `method`'s run for `seed` (one of METHODS)."""
    if method == "random":
        from mbrl.collect import RandomPolicy
        from mbrl.envs.atari import make_env

        return RandomPolicy(make_env(config.env).action_space, seed=seed)
    if method == "ppo":
        return train_ppo(seed, real_steps, runs, config)
    from mbrl.core.run import RunDir
    from mbrl.loop import load_trained_agent
    from mbrl.session import config_for_run, mpc_for_run, with_num_actions

    trained_by, _, acting = method.partition(":")
    trained = TRAINED.exists() and any(r["method"] == trained_by and r["seed"] == seed and r["real_steps"] == real_steps
                                       for r in current(json.loads(TRAINED.read_text())["runs"]))
    if not trained:
        raise SystemExit(f"no finished {trained_by} run for seed {seed} in {TRAINED}: run `python -m "
                         f"benchmarks.breakout_100k --seeds {seed} --methods {trained_by}`")
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


def mpc_phrases(runs: list[dict[str, Any]]) -> list[str]:
    """The distinct MPC settings of the rows, each as one phrase."""
    settings = (x["mpc"] for x in runs if x.get("mpc"))
    return list(dict.fromkeys(f"{m['planner']} N={m['candidates']}, H={m['horizon']}, I={m['iterations']}, "
                              f"life-loss penalty {m['life_loss_penalty']:g}" for m in settings))


def paired_lines(groups: dict[tuple[str, int], dict[int, dict[str, Any]]]) -> list[str]:
    """Each method against PPO and random, paired over the seeds both have (same games): Student's t."""
    lines = []
    for (method, episodes), runs in sorted(groups.items()):
        for other in ("ppo", "random") if method not in ("ppo", "random") else ():
            others = groups.get((other, episodes), {})
            seeds = sorted(set(runs) & set(others))
            diffs = [runs[s]["mean"] - others[s]["mean"] for s in seeds]
            if len(diffs) < 2:
                continue
            test = paired_t(diffs)
            if test is None:
                t = "no t (the differences are all equal)"
            else:
                p = "< 0.001" if test.p < 0.001 else f"= {test.p:.3f}"
                t = (f"t = {test.t:.2f} with {test.df} df, two-sided p {p}, 95% interval of the mean difference "
                     f"{test.low:+.2f} to {test.high:+.2f}")
            lines.append(f"- {method} - {other}, paired over seeds {', '.join(map(str, seeds))} ({episodes} games "
                         f"each): " + ", ".join(f"{d:+.2f}" for d in diffs) + f"; mean {statistics.mean(diffs):+.2f}, "
                         f"{t}.")
    return lines


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table: per method, its seeds' means, mean +- std over seeds,
    and the paired differences to PPO and random."""
    runs = saved["runs"]
    notes = ["Each seed's final agents of `benchmarks.breakout_100k` (the methods as defined there; an mbrl method: "
             "its run's agent; PPO: the baseline's, trained again on this machine where it lacked it; random) on the "
             "same full games per seed, another set than that table's 8 (evaluation rules as there)."
             + "".join(f" RUN:mpc: MPC on the world model of RUN's run with the run's settings ({s}), no terminal "
                       "value: the same 100k real steps, acted on by planning instead of the run's agent."
                       for s in mpc_phrases(runs))
             + (" The DQN agents (mbrl-dqn*) act at random with their final epsilon, 0.05, when not greedy, as in "
                "the loop's own games." if any(x["method"].startswith("mbrl-dqn") for x in runs) else "")]
    groups: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["episodes"]), {})[run["seed"]] = run
    rows = []
    for (method, episodes), by_seed in sorted(groups.items()):
        means = [run["mean"] for _, run in sorted(by_seed.items())]
        per_seed = ", ".join(f"s{seed}: {run['mean']:.2f} ({run['std']:.2f})" for seed, run in sorted(by_seed.items()))
        rows.append([method, episodes, len(by_seed), f"{statistics.mean(means):.2f} +- {statistics.pstdev(means):.2f}",
                     per_seed])
    columns = ["method", "games per seed", "seeds", "score mean +- std over seeds", "per-seed mean (std over games)"]
    return {**saved, **gathered(runs), "title": "The final 100k agents on more games", "notes": notes,
            "tables": [{"columns": columns, "rows": rows, "notes": paired_lines(groups)}]}


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

    config = baseline_config()
    eval_config = dataclasses.replace(config.eval, episodes=args.episodes)
    command = " ".join(["python", "-m", "benchmarks.studies.breakout_100k_games.breakout_100k_games", *sys.argv[1:]])
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
            save_result(with_tables(saved), RESULT)


if __name__ == "__main__":
    main()
