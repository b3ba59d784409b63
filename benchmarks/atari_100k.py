"""Any ALE game at the Atari-100k budget with the value-aware JEPA, paired with the random policy on the same games.

For each (game, protocol, seed):
  value       `mbrl train-agent --preset atari100k-value` (100k real agent steps; run dir
              runs/bench100k/GAME-PROTOCOL-sSEED, resumed if it exists), then `--episodes` full games of
              its agent (epsilon-greedy on the world model's value head, joint.eval_epsilon)
  value:tree  MPC on that run's world model: every sequence of `mpc.search.horizon` (3) steps, the model's
              value added at the leaves (`mbrl plan --run RUN` with the preset's mpc settings and
              mpc.search.min_prob=0.001, so its first actions are random about as often as the agent's)
  random      the uniformly random policy
All methods of a seed play the same games (one evaluation seed per training seed). Protocols: 'published'
(no sticky actions in training and scoring, as most published Atari-100k scores) and 'v5' (ALE v5 as it is,
sticky actions 0.25, as the rest of mbrl's scores). Both score full games up to 108k frames, raw score.
Each finished row is appended to benchmarks/results/atari_100k.json at once; a killed run resumes where it
stopped (the training run from its last checkpoint, finished rows are skipped). `--merge FILE` adds the rows
of another atari_100k.json (one written elsewhere, in this or the older format of plain rows) that this one
lacks, and re-renders.

    python -m benchmarks.atari_100k --game ALE/Breakout-v5 --protocol published --seeds 0
    python -m benchmarks.atari_100k --game ALE/Pong-v5 --protocol published --seeds 0 --methods value random
    python -m benchmarks.atari_100k --merge /elsewhere/benchmarks/results/atari_100k.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.breakout_100k import SittingClock
from benchmarks.paired import paired_t
from benchmarks.report import HERE, gathered, load_result, machine, save_result
from mbrl.core.memory import keep_freed_memory

RESULT = HERE / "results" / "atari_100k.json"
PRESET = "atari100k-value"
PROTOCOLS = {"published": ["env.sticky_action_prob=0.0", "eval.sticky_action_prob=0.0"], "v5": []}
METHODS = ("value", "value:tree", "random")
PUBLISHED = {  # Atari-100k scores (no sticky actions) from the per-game score files in ../shared/research
    "Breakout": {"random": 1.7, "SimPLe": 16.4, "SPR": 19.6, "DrQ(eps)": 19.8, "TWM": 20.0, "IRIS": 83.7},
    "Pong": {"random": -20.7, "DrQ(eps)": -9.1, "SPR": -5.4, "SimPLe": 12.8, "IRIS": 14.6},
}
KEY = ("preset", "game", "protocol", "method", "seed", "real_steps", "episodes")  # what makes a row; one per key


def game_name(env_id: str) -> str:
    return env_id.split("/")[-1].split("-")[0]


def run_name(preset: str, env_id: str, protocol: str, seed: int) -> str:
    """The run directory's name: GAME-PROTOCOL-sSEED, prefixed by the preset unless it is `PRESET`."""
    name = f"{game_name(env_id)}-{protocol}-s{seed}"
    return name if preset == PRESET else f"{preset}-{name}"


def train(preset: str, env_id: str, protocol: str, seed: int, real_steps: int, runs: Path) -> Path:
    """The seed's `mbrl train-agent` run of the preset under the protocol, trained to its end in a process of its
    own (resumed if killed)."""
    run = runs / run_name(preset, env_id, protocol, seed)
    args = ["train-agent", "--preset", preset, "--seed", str(seed), "--real-steps", str(real_steps), "--quiet"]
    if (run / "config.yaml").exists():
        args += ["--resume", str(run)]  # its saved config holds the settings
    else:
        args += ["--run", str(run), "--env", env_id, *(a for s in PROTOCOLS[protocol] for a in ("--set", s))]
    if subprocess.run([sys.executable, "-m", "mbrl", *args]).returncode != 0:
        raise SystemExit(f"mbrl train-agent failed for {env_id} seed {seed}")
    return run


def agent_of(method: str, run: Path, seed: int) -> tuple[Any, Any]:
    """The method's agent and the run config it is scored under."""
    from mbrl.collect import RandomPolicy
    from mbrl.core.run import RunDir
    from mbrl.loop import load_trained_agent
    from mbrl.session import config_for_run, mpc_for_run, with_num_actions

    overrides = ["mpc.search.min_prob=0.001"] if method == "value:tree" else []
    config = with_num_actions(config_for_run(RunDir(run), None, overrides, {"device": "cpu"}))
    if method == "random":
        return RandomPolicy(gym_action_space(config), seed=seed), config
    if method == "value:tree":
        return mpc_for_run(RunDir(run), config, torch.device("cpu"), seed), config
    return load_trained_agent(RunDir(run), config, torch.device("cpu")), config


def gym_action_space(config: Any) -> Any:
    from mbrl.envs.atari import make_env

    return make_env(config.env).action_space


def games_seed(seed: int) -> int:
    from mbrl.session import derive_seed

    return derive_seed([seed, 3000])


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table (one row per game, protocol, method and seed), the
    methods paired with random over seeds and the published scores."""
    notes = ["Per seed, `mbrl train-agent --preset PRESET` for its real agent steps (atari100k-value: 100k), then "
             "full games (108k-frame cap, raw score) of its agent (value), of MPC with the value at the leaves of an "
             "exhaustive depth-3 tree (value:tree) and of the random policy, all methods of a seed on the same games. "
             "Protocol 'published': no sticky actions in training and scoring, as most published Atari-100k scores; "
             "'v5': sticky actions 0.25. Train hours: the run's wall clock (acting, updates and its 16-game "
             "evaluation). A preset named NAME@DATE is NAME as it was until DATE."]
    runs = saved["runs"]
    rows = [[key_of(e)[0], e["game"], e["protocol"], e["method"], e["seed"], e["real_steps"],
             e["episodes"], f"{e['mean']:.2f}", f"{e['std']:.2f}", f"{e['train_hours']:.2f}",
             f"{e['date']}, {e['machine']}"] for e in runs]
    paired = []
    for preset, game, protocol in sorted({key_of(e)[:3] for e in runs}):
        by = {(e["method"], e["seed"]): e["mean"] for e in runs if key_of(e)[:3] == (preset, game, protocol)}
        for method in sorted({m for m, _ in by} - {"random"}):
            diffs = [by[(m, s)] - by[("random", s)] for m, s in by if m == method and ("random", s) in by]
            if not diffs:
                continue
            t = paired_t(diffs)  # None for a single seed
            test = "" if t is None else f", t = {t.t:.2f} with {t.df} df, p = {t.p:.3f}"
            paired.append(f"- {preset}, {game}, {protocol}: {method} - random = {statistics.mean(diffs):+.2f} over "
                          f"{len(diffs)} seed(s){test}")
    published = saved.get("published", {})
    notes_after = ["Paired over seeds (same games), mean of the per-seed differences:", *paired] if paired else []
    if published:
        notes_after.append("Published Atari-100k scores (no sticky actions): " + "; ".join(
            f"{game}: " + ", ".join(f"{name} {score:g}" for name, score in refs.items())
            for game, refs in published.items()) + ".")
    columns = ["preset", "game", "protocol", "method", "seed", "real steps", "games", "mean", "std", "train hours",
               "date, machine"]
    title = "Atari games at a real-step budget with the value-aware JEPA"
    return {**saved, **gathered(runs), "title": title, "notes": notes,
            "tables": [{"columns": columns, "rows": rows, "notes": notes_after}]}


def missing_rows(saved: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `other` (this format's or the older one's: the same row dicts) that `saved` lacks, by `KEY`."""
    return [r for r in other if not any(same_key(r, s) for s in saved)]


def key_of(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a row measures, by `KEY`; rows from before the preset was recorded ran `PRESET`."""
    return tuple(row.get(k, PRESET if k == "preset" else None) for k in KEY)


def same_key(row: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two rows measure the same thing."""
    return key_of(row) == key_of(other)


def merge(path: Path) -> int:
    """Add the rows of the atari_100k result at `path` that the saved result lacks; how many."""
    saved = load_result(RESULT, "atari_100k")
    new = missing_rows(saved["runs"], json.loads(path.read_text())["runs"])
    saved["runs"] += new
    saved["published"] = PUBLISHED
    save_result(with_tables(saved), RESULT)
    return len(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=PRESET,
                        help=f"the mbrl train-agent preset each seed trains (default {PRESET})")
    parser.add_argument("--game", default="ALE/Breakout-v5", help="ALE game id (default ALE/Breakout-v5)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="published",
                        help="published: no sticky actions; v5: sticky actions 0.25 (default published)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--episodes", type=int, default=50, help="full games per method and seed (default 50)")
    parser.add_argument("--real-steps", type=int, default=100_000, help="real agent steps per run (default 100000)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench100k"), help="where the runs live")
    parser.add_argument("--merge", type=Path, metavar="FILE",
                        help="only add the rows of this atari_100k.json that the saved result lacks")
    args = parser.parse_args()
    if args.merge:
        print(f"{merge(args.merge)} rows added from {args.merge}", file=sys.stderr)
        return
    keep_freed_memory()  # as the mbrl command line does
    from mbrl.evaluate import evaluate_agent

    command = " ".join(["python", "-m", "benchmarks.atari_100k", *sys.argv[1:]])
    game = game_name(args.game)
    for seed in args.seeds:
        name = run_name(args.preset, args.game, args.protocol, seed)
        with SittingClock(args.runs / f"{name}-{args.real_steps}.seconds") as clock:
            run = train(args.preset, args.game, args.protocol, seed, args.real_steps, args.runs)
        trained = json.loads((run / "eval.json").read_text())
        hours = trained.get("train_seconds", clock.seconds()) / 3600  # the run's own clock, over its sittings
        for method in args.methods:
            key = dict(zip(KEY, (args.preset, game, args.protocol, method, seed, args.real_steps, args.episodes)))
            if any(same_key(r, key) for r in load_result(RESULT, "atari_100k")["runs"]):
                continue
            agent, config = agent_of(method, run, seed)
            eval_config = dataclasses.replace(config.eval, episodes=args.episodes)
            started = time.perf_counter()
            result = evaluate_agent(agent, config.env, eval_config, games_seed(seed), progress=False)
            print(f"{game} {args.protocol} {method} seed {seed}: {result['mean']:.2f} +- {result['std']:.2f} over "
                  f"{args.episodes} games", file=sys.stderr, flush=True)
            saved = load_result(RESULT, "atari_100k")  # read again: another sitting may have added rows
            saved["runs"].append({**key, "train_hours": hours, "eval_seconds": time.perf_counter() - started,
                                  "sticky_action_prob": eval_config.sticky_action_prob, "mean": result["mean"],
                                  "std": result["std"], "scores": result["scores"], "lengths": result["lengths"],
                                  "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": command})
            saved["published"] = PUBLISHED
            save_result(with_tables(saved), RESULT)


if __name__ == "__main__":
    main()
