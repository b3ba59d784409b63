"""MPC with a perfect model: the planner searching the real game's own replays instead of a world model's.

`mbrl plan` scores action sequences with a world model's imagination. Here the same planner
(`mbrl.agents.planners`, the default `mpc` search, discount and life-loss penalty) scores them with
`mbrl.envs.emulator.emulator_objective`: each candidate replayed from the real game's saved state (no
sticky actions), earning its real clipped rewards minus the life-loss penalty. Each real step
plans from the game's state, acts as `mbrl plan` does (the first action drawn from the plan's
distribution, or the best sequence's with --act best) and shifts the plan as the next warm start.
Games follow the evaluation rules (full games, sticky actions 0.25, raw score) but are cut after
`--max-steps` agent steps, as planning on the emulator takes ~0.1-1 s per step; the score of a
cut game counts as it stands. What this bounds: how far the planner and the objective could take
MPC if the world model's imagination were the game.

    python -m benchmarks.studies.emulator_planning.emulator_planning --games 5 --horizon 16 --max-steps 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import gathered, load_result, machine, save_result

RESULT = Path(__file__).resolve().parent / "results" / "emulator_planning.json"


def play(games: int, seed: int, horizon: int, act: str, max_steps: int, overrides: list[str]) -> dict[str, Any]:
    """Scores, lengths and seconds of `games` real games played by MPC on the emulator."""
    from mbrl.agents.mpc import shift
    from mbrl.agents.planners import PLANNERS, DiscreteSpace
    from mbrl.envs.atari import make_env
    from mbrl.envs.emulator import Emulator, emulator_objective, snapshot
    from mbrl.evaluate import eval_env_config
    from mbrl.run_config import resolve_config

    config = resolve_config(None, ["env.id=ALE/Breakout-v5", *overrides, f"mpc.search.horizon={horizon}"])
    mpc = config.mpc
    env = make_env(eval_env_config(config.env, config.eval))
    emulator = Emulator(config.env)
    planner = PLANNERS[mpc.planner](DiscreteSpace(int(env.action_space.n)), mpc.search)  # type: ignore[attr-defined]
    objective = emulator_objective(emulator, mpc.discount, mpc.life_loss_penalty)
    generator = torch.Generator().manual_seed(seed)
    scores, lengths, cut, seconds = [], [], [], []
    for game in range(games):
        start = time.perf_counter()
        env.reset(seed=seed + game)
        warm, score, steps, over = None, 0.0, 0, False
        while not over and steps < max_steps:
            plan = planner.plan(objective, [snapshot(env)], 1, generator, warm)
            first = (plan.actions[0, 0] if act == "best"
                     else planner.space.sample(plan.distribution, 1, generator)[0, 0, 0])
            warm = shift(plan.distribution, planner.prior(1))
            _, reward, terminated, truncated, _ = env.step(int(first))
            score, steps, over = score + float(reward), steps + 1, terminated or truncated
        scores.append(score)
        lengths.append(steps)
        cut.append(not over)
        seconds.append(time.perf_counter() - start)
        print(f"game {game + 1}/{games}: {score:g} in {steps} steps{' (cut)' if not over else ''}, "
              f"{seconds[-1]:.0f} s", file=sys.stderr, flush=True)
    emulator.close()
    env.close()
    search = mpc.search
    return {"planner": mpc.planner, "candidates": search.candidates, "horizon": search.horizon,
            "iterations": search.iterations, "discount": mpc.discount, "life_loss_penalty": mpc.life_loss_penalty,
            "act": act, "games": games, "seed": seed, "max_steps": max_steps, "overrides": overrides,
            "scores": scores, "lengths": lengths, "cut": cut, "seconds": seconds,
            "mean": float(np.mean(scores)), "std": float(np.std(scores))}


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table, one row per run."""
    notes = ["`mbrl plan`'s planner and objective (the default `mpc` section's life-loss penalty and discount) with "
             "the world model's imagination replaced by the real game replayed from its saved state without sticky "
             "actions (`mbrl.envs.emulator.emulator_objective`): what MPC could reach if imagination were the game. "
             "Real games under the evaluation rules (sticky actions 0.25, raw score), cut after 'max steps' agent "
             "steps: a cut game's score counts as it stands. Acting: a draw from the plan's distribution ('sampled', "
             "as `mbrl plan`) or the best sequence's first action. Seconds: per agent step, one process, ALE on one "
             "core."]
    rows = [[e["planner"], f"{e['candidates']}, {e['horizon']}, {e['iterations']}", e["act"],
             f"{e['games']} ({e['seed']})", e["max_steps"], f"{e['mean']:.2f} +- {e['std']:.2f}",
             ", ".join(f"{x:g}" for x in e["scores"]), ", ".join(str(n) for n in e["lengths"]), sum(e["cut"]),
             f"{sum(e['seconds']) / sum(e['lengths']):.2f}", f"{e['date']}, {e['machine']}"] for e in saved["runs"]]
    columns = ["planner", "N, H, I", "acts", "games (seed)", "max steps", "score", "per game", "steps per game", "cut",
               "s per step", "date, machine"]
    return {**saved, **gathered(saved["runs"]), "notes": notes, "tables": [{"columns": columns, "rows": rows}],
            "title": "MPC with a perfect model: planning on the real game's replays"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=5, help="real games (default 5)")
    parser.add_argument("--horizon", type=int, default=16, help="steps per candidate sequence (default 16)")
    parser.add_argument("--act", choices=["sampled", "best"], default="sampled",
                        help="act a draw from the plan's distribution (as mbrl plan does) or the best sequence's first")
    parser.add_argument("--max-steps", type=int, default=2000, help="agent steps after which a game is cut")
    parser.add_argument("--seed", type=int, default=0, help="seeds the games and the planner")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the default config, e.g. --set mpc.search.candidates=128")
    args = parser.parse_args()
    if min(args.games, args.horizon, args.max_steps) < 1:
        parser.error("--games, --horizon and --max-steps must be >= 1")
    entry = play(args.games, args.seed, args.horizon, args.act, args.max_steps, args.set)
    entry.update(command=" ".join(["python", "-m", "benchmarks.studies.emulator_planning.emulator_planning",
                                   *sys.argv[1:]]),
                 date=time.strftime("%Y-%m-%d"), machine=machine())
    saved = load_result(RESULT, "emulator_planning")
    saved["runs"].append(entry)
    save_result(with_tables(saved), RESULT)


if __name__ == "__main__":
    main()
