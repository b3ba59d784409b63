"""Breakout at the Atari-100k budget: SB3 PPO on the real game vs the random policy.

For each seed, with the same evaluation code (`mbrl.evaluate.evaluate_agent`: full games,
sticky actions, 108k-frame cap, raw score) and the same number of games:
  ppo     SB3 PPO (CnnPolicy) trained directly on real Breakout for the same real-step budget,
          checkpointed every chunk in runs/bench/ppo-sSEED and resumed if killed
  random  the uniformly random policy
Each finished (method, seed) is appended to benchmarks/results/breakout_100k.json at once, so
seeds can be run in separate sittings; RESULTS.md shows mean +- std over the seeds so far. The
file also keeps, as history, the rows of mbrl's methods on a preset since removed (`REMOVED`);
mbrl's own runs at this budget are `benchmarks.atari_100k`'s.

    python -m benchmarks.breakout_100k --seeds 0 [--real-steps 100000]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import HERE, distinct, gathered, load_result, machine, save_result
from mbrl.core.atomic import write_atomic
from mbrl.core.memory import keep_freed_memory

RESULT = HERE / "results" / "breakout_100k.json"
REFERENCES = {"random (published)": 1.7, "SB3 PPO at 100k (reported)": 2.5, "STORM": 15.9, "SimPLe": 16.4,
              "TWM": 20.0, "human": 30.5, "IRIS": 83.7, "DIAMOND": 132.5}
PPO_CHUNK = 10_000
METHODS = ("ppo", "random")
EPISODES = 8  # full games per seed, as in every saved row
REMOVED_PRESET = "atari100k"
REMOVED = ("mbrl-dqn", "mbrl", "mbrl-mpc", "mbrl-dqn-dream")
"""The methods of the results file that ran `mbrl train-agent --preset atari100k`, a preset removed on 2026-12-08
with the DQN's updates on real transitions: their rows stay as history, labelled so (`with_tables`)."""


class SittingClock:
    """Wall clock of a resumable run, summed over the sittings it took: `path` holds the seconds of earlier
    sittings and is rewritten every `every` seconds while the run goes on, so a kill loses at most that.
    `ticked` is set at each of those writes; `now` reads the clock (seconds)."""

    def __init__(self, path: Path, every: float = 30.0, now: Callable[[], float] = time.perf_counter) -> None:
        self.path, self.every, self.now = path, every, now
        self.before = float(path.read_text()) if path.exists() else 0.0
        self.start = now()
        self.end: float | None = None  # set when the sitting ends
        self.ticked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> SittingClock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = self.now()
        self._write()

    def seconds(self) -> float:
        """Seconds of all sittings so far, this one included (up to its end once it has ended)."""
        return self.before + (self.end if self.end is not None else self.now()) - self.start

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write()
            self.ticked.set()

    def _write(self) -> None:
        write_atomic(self.path, f"{self.seconds():.1f}".encode())


def baseline_config() -> Any:
    """The run config the baselines are trained and scored under: the defaults on ALE/Breakout-v5 with `EPISODES`
    games per seed (the removed preset's env and evaluation, so the rows stay comparable)."""
    from mbrl.run_config import resolve_config

    return resolve_config(None, ["env.id=ALE/Breakout-v5", f"eval.episodes={EPISODES}"])


def ppo_baseline(venv: Any, seed: int, directory: Path | None = None) -> Any:
    """The baseline's SB3 PPO (CnnPolicy, Atari settings) over `venv`, restored from `directory`'s checkpoint
    if it has one (as `run_ppo` saves them)."""
    from stable_baselines3 import PPO

    from mbrl.agents.sb3_agent import restore_agent
    from mbrl.core.checkpoint import load_checkpoint

    model = PPO("CnnPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4, ent_coef=0.01,
                clip_range=0.1, seed=seed, device="cpu", verbose=0)
    if directory is not None and (directory / "ppo.json").exists():
        ckpt = load_checkpoint(directory, "ppo")
        restore_agent(model, ckpt, ckpt.metadata)
    return model


def run_ppo(seed: int, real_steps: int, runs: Path, config: Any) -> dict[str, Any]:
    """The PPO baseline trained (`train_ppo`) and scored."""
    from mbrl.evaluate import evaluate_agent

    return evaluate_agent(train_ppo(seed, real_steps, runs, config), config.env, config.eval, seed=_eval_seed(seed))


def train_ppo(seed: int, real_steps: int, runs: Path, config: Any) -> Any:
    """SB3 PPO with a CNN on real Breakout (episodic life and clipped rewards for training) for `real_steps`,
    checkpointed per chunk in runs/ppo-sSEED and resumed from there (returned at once if it is trained)."""
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecMonitor

    from mbrl.agents.sb3_agent import agent_tensors
    from mbrl.core.checkpoint import save_checkpoint
    from mbrl.envs.atari import make_env

    train_env = dataclasses.replace(config.env, episodic_life=True, clip_rewards=True)
    venv = VecMonitor(SubprocVecEnv([lambda: make_env(train_env)] * 8))
    directory = runs / f"ppo-s{seed}"
    model = ppo_baseline(venv, seed, directory)
    while model.num_timesteps < real_steps:
        model.learn(min(PPO_CHUNK, real_steps - model.num_timesteps), reset_num_timesteps=False)
        tensors, meta = agent_tensors(model)
        save_checkpoint(directory, "ppo", tensors, meta, step=model.num_timesteps)
        print(f"ppo seed {seed}: {model.num_timesteps} real steps", file=sys.stderr)
    venv.close()
    return model


def run_random(seed: int, config: Any) -> dict[str, Any]:
    from mbrl.collect import RandomPolicy
    from mbrl.envs.atari import make_env
    from mbrl.evaluate import evaluate_agent

    policy = RandomPolicy(make_env(config.env).action_space, seed=seed)
    return evaluate_agent(policy, config.env, config.eval, seed=_eval_seed(seed))


def current(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the current code: those not marked `superseded` (a reason, such as a fixed bug that shaped
    them; they stay in the results file and get rows of their own in RESULTS.md)."""
    return [r for r in runs if not r.get("superseded")]


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table: one row per method and budget (superseded runs apart),
    mean +- std over its seeds' means."""
    notes = [f"Same evaluation code for every method: {saved['episodes']} full games per seed (no episodic life, "
             "sticky actions 0.25, 108k-frame cap, raw score). Hours are wall clock on the row's machine, summed over "
             "the sittings a resumed run took (runs finished before 2026-12-02 show their last sitting only). "
             "Methods: ppo is SB3 PPO with a CNN on the real pixels (episodic life and clipped rewards in training), "
             "random the uniformly random policy."
             + (f" Rows marked 'removed preset {REMOVED_PRESET}' are history: mbrl's Dyna loop on the "
                f"`{REMOVED_PRESET}` preset, removed on 2026-12-08 with its DQN updates on real transitions (mbrl's "
                "runs at this budget are now benchmarks.atari_100k's). mbrl-dqn was the preset as of 2026-12-05: a "
                "DQN agent that took one gradient step per real step on the buffer's real transitions "
                "(`loop.real_updates=1`, 3-step returns, batch 64, learning rate 1e-4) and learned in the dream too, "
                "10k dream steps per iteration; mbrl-dqn-dream that with as many dream updates as real ones "
                "(`agent.gradient_steps=128`); mbrl the preset before 2026-12-05, PPO learning in the dream only "
                "(50k dream steps per iteration); mbrl-mpc that with MPC playing the real game in the iterations "
                "(`loop.collect_with=mpc`)." if any(run["method"] in REMOVED for run in saved["runs"]) else "")]
    if saved.get("older_commands"):
        notes.append("Runs before 2026-12-07 did not record their commands; the first command above is the last of "
                     "theirs.")
    unrecorded = saved.get("unrecorded", {})  # the machine shown for runs that did not record theirs
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in saved["runs"]:
        tags = ([f"removed preset {REMOVED_PRESET}"] if run["method"] in REMOVED else []) + (
            [f"superseded: {run['superseded']}"] if run.get("superseded") else [])
        label = run["method"] + (f" ({'; '.join(tags)})" if tags else "")
        groups.setdefault((label, run["real_steps"]), []).append(run)
    rows = []
    for (method, steps), runs in sorted(groups.items()):
        means = [run["mean"] for run in runs]
        rows.append([method, steps, len(runs), f"{statistics.mean(means):.2f} +- "
                     f"{statistics.pstdev(means) if len(means) > 1 else 0.0:.2f}",
                     ", ".join(f"s{run['seed']}: {run['mean']:.2f} ({run['std']:.2f})" for run in runs),
                     ", ".join(f"{run['hours']:.2f}" for run in runs),
                     ", ".join(sorted({{**unrecorded, **run}["machine"] for run in runs}))])
    published = ("Published Atari-100k Breakout scores, for context (not measured here): "
                 + ", ".join(f"{name} {score}" for name, score in saved["references"].items()) + ".")
    header = gathered(saved["runs"], unrecorded)  # nor did they record their command before 2026-12-07
    header["command"] = distinct([*saved.get("older_commands", []), *header["command"]])
    columns = ["method", "real steps", "seeds", "score mean +- std over seeds", "per-seed mean (std over games)",
               "hours", "machine"]
    return {**saved, **header, "title": "Breakout at the Atari-100k budget", "notes": notes,
            "tables": [{"columns": columns, "rows": rows, "notes": [published]}]}


def _load() -> dict[str, Any]:
    return load_result(RESULT, "breakout_100k")


def _eval_seed(seed: int) -> int:
    from mbrl.session import derive_seed

    return derive_seed([seed, 1000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--real-steps", type=int, default=100_000, help="real agent steps per run (default 100000)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"), help="where the runs live")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = baseline_config()
    command = " ".join(["python", "-m", "benchmarks.breakout_100k", *sys.argv[1:]])
    for seed in args.seeds:
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed and r["real_steps"] == args.real_steps
                   for r in current(_load()["runs"])):
                continue
            with SittingClock(args.runs / f"{method}-s{seed}-{args.real_steps}.seconds") as clock:
                if method == "ppo":
                    result = run_ppo(seed, args.real_steps, args.runs, config)
                else:
                    result = run_random(seed, config)
            hours = clock.seconds() / 3600  # summed over the sittings a resumed run took
            saved = _load()  # read again: another sitting may have added its seeds meanwhile
            saved["runs"].append({"method": method, "seed": seed, "real_steps": args.real_steps, "hours": hours,
                                  "mean": result["mean"], "std": result["std"], "scores": result["scores"],
                                  "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": command})
            saved.update(references=REFERENCES, episodes=config.eval.episodes)
            save_result(with_tables(saved), RESULT)


if __name__ == "__main__":
    main()
