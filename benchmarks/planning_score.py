"""Breakout score of latent MPC against the run's own agent and the random policy, on the same games.

For each run: full real games with MPC on the run's world model (`mbrl plan`'s agent: the run's
`mpc` settings with the overrides below, optionally the run's agent's critic as terminal value),
with the run's trained agent (when it has one) and with the random policy, through the same
`evaluate_agent` and the same seed, so the three start the same games. Each scored run is written
to benchmarks/results/planning_score.json at once (replacing an earlier entry with the same run,
settings, games and seed), so runs can be scored in separate processes or sittings.

    python -m benchmarks.planning_score --runs runs/bench/mbrl-s0 runs/bench/mbrl-s1 --episodes 50 --seed 1 \
        --value-from-agent --horizon 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import HERE, gathered, load_result, machine, save_result
from mbrl.core.memory import keep_freed_memory

RESULT = HERE / "results" / "planning_score.json"
ACTS_BEFORE = "best"  # entries written before `mpc_acts` was recorded: MPC acted its best sequence's first action
SETTINGS = ("planner", "candidates", "horizon", "iterations", "value_from_agent", "discount", "life_loss_penalty",
            "mpc_acts")


def score_run(run_path: Path, episodes: int, seed: int, value_from_agent: bool, overrides: list[str]
              ) -> dict[str, Any]:
    """Scores of MPC, the run's agent (None without one) and the random policy on the same `episodes` games."""
    from mbrl.collect import RandomPolicy
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import make_env
    from mbrl.evaluate import evaluate_agent
    from mbrl.loop import AGENT, load_trained_agent
    from mbrl.session import config_for_run, mpc_for_run, with_num_actions

    run = RunDir(run_path)
    config = config_for_run(run, None, overrides, {"eval.episodes": episodes, "device": "cpu"})
    device = torch.device("cpu")
    trained = (load_trained_agent(run, with_num_actions(config), device)
               if (run.checkpoint_dir / f"{AGENT}.json").exists() or value_from_agent else None)
    policies: dict[str, Any] = {"mpc": mpc_for_run(run, config, device, seed, trained if value_from_agent else None)}
    if trained is not None:
        policies["agent"] = trained
    policies["random"] = RandomPolicy(make_env(config.env).action_space, seed=seed)
    search = config.mpc.search
    entry: dict[str, Any] = {
        "run": str(run_path), "episodes": episodes, "seed": seed, "planner": config.mpc.planner,
        "candidates": search.candidates, "horizon": search.horizon, "iterations": search.iterations,
        "value_from_agent": value_from_agent, "discount": config.mpc.discount,
        "life_loss_penalty": config.mpc.life_loss_penalty, "mpc_acts": "best" if config.eval.deterministic else
        "sampled", "overrides": overrides, "agent": None}
    for name, policy in policies.items():
        torch.manual_seed(seed)  # SB3's predict samples from torch's global generator
        start = time.perf_counter()
        def on_game(r: dict[str, Any], name: str = name) -> None:
            print(f"{run_path} {name}: game {r['episodes']}: {r['scores'][-1]:g} in {r['lengths'][-1]} steps",
                  file=sys.stderr, flush=True)

        result = evaluate_agent(policy, config.env, config.eval, seed, progress=False, on_game=on_game)
        entry[name] = {key: result[key] for key in ("mean", "median", "std", "scores", "lengths")}
        entry[name]["seconds"] = time.perf_counter() - start
        print(f"{run_path} {name}: mean {result['mean']:.2f} +- {result['std']:.2f} over {episodes} games",
              file=sys.stderr, flush=True)
    return entry


def save_score(entry: dict[str, Any], out: Path) -> None:
    """Add a scored run to the results file `out`, replacing its earlier entry of the same run, settings, games
    and seed; the file is read again first, as other processes may have added runs meanwhile."""
    entry = dict(entry, date=time.strftime("%Y-%m-%d"), machine=machine())
    saved = load_result(out, "planning_score")
    saved["runs"] = [r for r in saved["runs"] if not same_entry(r, entry)] + [entry]
    save_result(with_tables(saved), out)


def same_entry(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k, ACTS_BEFORE) == b.get(k, ACTS_BEFORE) if k == "mpc_acts" else a.get(k) == b.get(k)
               for k in ("run", "episodes", "seed", "overrides", *SETTINGS))


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table, one row per scored run."""
    notes = ["Per run: full real games (no episodic life, sticky actions 0.25, 108k-frame cap, raw score) with MPC on "
             "the run's world model (`mbrl plan`'s agent; 'value': the run's agent's critic values the last imagined "
             "latent), with the run's own trained agent and with the random policy, through the same evaluation code "
             "and seed, so the three start the same games. 'MPC acts': the first action of the best sequence found, "
             "or one drawn from the plan's final distribution (what `mbrl evaluate` and `mbrl plan` do since "
             "2026-12-03, as with agents: a plan that never values FIRE otherwise stalls the game). Target of issue "
             "6: MPC clearly above random. Mean +- std over games; minutes of MPC's games (one torch thread, sharing "
             "the cores)."]
    columns = ["run", "planner", "N, H, I", "value", "life-loss penalty", "MPC acts", "games (seed)", "MPC",
               "run's agent", "random", "MPC minutes", "date, machine"]

    def score(x: dict[str, Any] | None) -> str:
        return "-" if x is None else f"{x['mean']:.2f} +- {x['std']:.2f}"

    rows = [[e["run"], e["planner"], f"{e['candidates']}, {e['horizon']}, {e['iterations']}",
             "yes" if e["value_from_agent"] else "no", f"{e['life_loss_penalty']:g}", e.get("mpc_acts", ACTS_BEFORE),
             f"{e['episodes']} ({e['seed']})", score(e["mpc"]), score(e["agent"]), score(e["random"]),
             f"{e['mpc']['seconds'] / 60:.1f}", f"{e['date']}, {e['machine']}"] for e in saved["runs"]]
    return {**saved, **gathered(saved["runs"]), "title": "Latent MPC on the real game", "notes": notes,
            "tables": [{"columns": columns, "rows": rows}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="train-agent runs to score")
    parser.add_argument("--episodes", type=int, default=10, help="full real games per policy and run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the games, the planner and the random policy")
    parser.add_argument("--value-from-agent", action="store_true",
                        help="the run's agent's critic values the last imagined latent (as mbrl plan's option)")
    parser.add_argument("--horizon", type=int, help="imagined steps per candidate (config mpc.search.horizon)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every run, e.g. --set mpc.life_loss_penalty=3 (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULT, help="results file (default results/planning_score.json)")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(1)  # each policy shares the cores with the env workers, as in mbrl evaluate
    overrides = args.set + ([f"mpc.search.horizon={args.horizon}"] if args.horizon else [])
    command = " ".join(["python", "-m", "benchmarks.planning_score", *sys.argv[1:]])
    for run in args.runs:
        entry = score_run(run, args.episodes, args.seed, args.value_from_agent, overrides)
        save_score(dict(entry, command=command), args.out)


if __name__ == "__main__":
    main()
