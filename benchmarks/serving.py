"""How the final 100k agents serve: how often they press FIRE, and how long they wait after a lost life.

In Breakout the ball waits after every lost life until FIRE is pressed (the game's first serve is
pressed by `envs.atari.FireReset`). An agent that rarely presses FIRE loses no lives while it
waits, which a dream that ends imagined episodes at a lost life may reward. For each agent
(`METHOD:SEED`, loaded as `breakout_100k_games.py` does) this plays `--episodes` full games on one
env and reports: the share of steps with FIRE, the steps from each lost life to the next FIRE
(median, mean), steps per game and the mean score. Rows go to results/serving.json (replacing
the same agent's row for the same games).

With `--dream-seeds S ...` it also asks whether the dream of the mbrl run of seed S rewards not
serving: in that dream (`mbrl.loop.run_dream`, as the agent learned in it, from real contexts of
the run's training episodes) it runs, for `--dream-steps` imagined steps each, the uniformly random
policy, a random policy that never presses FIRE, and the run's final agent, and reports the
imagined reward and model-ended episodes (lost lives) per step (`latent_distill.dream_rates`).

    python benchmarks/serving.py --agents mbrl:0 mbrl:1 ppo:1 random:1 --episodes 10
    python benchmarks/serving.py --agents mbrl:1 --dream-seeds 1 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from breakout_100k_games import final_agent, games_seed
from latent_distill import dream_rates

from mbrl.memory import keep_freed_memory
from report import HERE, save_result

RESULT = HERE / "results" / "serving.json"


def serve_waits(actions: list[int], life_lost: list[bool], fire: int) -> list[int]:
    """Steps from each lost life to the next FIRE, that step included, in one game: actions[t] is taken at step t
    and life_lost[t] says whether step t lost a life. A lost life with no FIRE after it counts nothing."""
    waits, lost_at = [], None
    for t, (action, lost) in enumerate(zip(actions, life_lost, strict=True)):
        if lost_at is not None and action == fire:
            waits.append(t - lost_at)
            lost_at = None
        if lost:
            lost_at = t
    return waits


def play(agent: Any, env: Any, games: int, seed: int, fire: int) -> dict[str, Any]:
    """`games` full games of `agent` on `env` (one env, as the agent's `predict` takes a batch of one); `fire` is
    the FIRE action."""
    waits: list[int] = []
    scores, lengths, fires = [], [], 0
    obs, _ = env.reset(seed=seed)
    for _ in range(games):
        actions: list[int] = []
        lost: list[bool] = []
        score, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs[None], None, np.array([not actions]), deterministic=False)
            actions.append(int(np.asarray(action)[0]))
            obs, _, terminated, truncated, info = env.step(actions[-1])
            lost.append(bool(info["life_loss"]))
            score += float(info["raw_reward"])
            done = terminated or truncated
        waits += serve_waits(actions, lost, fire)
        fires += sum(a == fire for a in actions)
        scores.append(score)
        lengths.append(len(actions))
        obs, _ = env.reset()
    return {"fire_share": fires / sum(lengths), "median_wait": float(np.median(waits)) if waits else None,
            "mean_wait": float(np.mean(waits)) if waits else None, "serves": len(waits),
            "steps_per_game": float(np.mean(lengths)), "mean_score": float(np.mean(scores)), "scores": scores}


class UniformOver:
    """A random policy over some of the actions, SB3's `predict` over a batch of observations."""

    def __init__(self, actions: list[int], seed: int) -> None:
        self.actions, self.rng = np.asarray(actions), np.random.default_rng(seed)

    def predict(self, obs: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, None]:
        return self.rng.choice(self.actions, size=len(obs)), None


def dream_rows(seed: int, steps: int, runs: Path, fire: int, actions: int) -> list[dict[str, Any]]:
    """Imagined reward and lost lives per step of three policies in the dream of the mbrl run of `seed`."""
    from mbrl.cli import config_for_run
    from mbrl.loop import load_trained_agent, run_dream, with_num_actions
    from mbrl.run import RunDir

    run = RunDir(runs / f"mbrl-s{seed}")
    config = with_num_actions(config_for_run(run, None, [], {"device": "cpu"}))
    trained = load_trained_agent(run, config, torch.device("cpu"))
    policies = {"uniform": UniformOver(list(range(actions)), seed),
                "uniform without FIRE": UniformOver([a for a in range(actions) if a != fire], seed),
                "the run's agent": trained.model}
    rows = []
    for name, policy in policies.items():
        env = run_dream(run, config, trained.world_model, torch.device("cpu"), seed=seed)
        torch.manual_seed(seed)
        rates = dream_rates(policy, env, steps)
        env.close()
        rows.append({"run_seed": seed, "policy": name, "reward_per_step": rates["dream_reward_per_step"],
                     "ends_per_step": rates["dream_ends_per_step"], "steps": rates["dream_steps"]})
        print(f"dream of mbrl seed {seed}, {name}: reward {rows[-1]['reward_per_step']:.4f} and lost lives "
              f"{rows[-1]['ends_per_step']:.4f} per imagined step", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=[], metavar="METHOD:SEED",
                        help="final agents of breakout_100k.py's runs, e.g. mbrl:1 ppo:1 random:1")
    parser.add_argument("--episodes", type=int, default=10, help="full games per agent (default 10)")
    parser.add_argument("--dream-seeds", type=int, nargs="*", default=[],
                        help="also the imagined reward of three policies in these mbrl runs' dreams")
    parser.add_argument("--dream-steps", type=int, default=20_000, help="imagined steps per policy (default 20000)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"), help="where the runs live")
    args = parser.parse_args()
    for spec in args.agents:
        method, _, seed = spec.partition(":")
        if method not in ("mbrl", "ppo", "random") or not seed.isdigit():
            parser.error(f"--agents takes METHOD:SEED with METHOD mbrl, ppo or random, got {spec!r}")
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(1)
    from envs.atari import make_env
    from mbrl.evaluate import eval_env_config
    from mbrl.run_config import resolve_config

    config = resolve_config("atari100k", [])
    env = make_env(eval_env_config(config.env, config.eval))
    fire = env.unwrapped.get_action_meanings().index("FIRE")
    command = " ".join(["python", "benchmarks/serving.py", *sys.argv[1:]])
    for spec in args.agents:
        method, seed = spec.split(":")
        agent = final_agent(method, int(seed), 100_000, args.runs, config)
        torch.manual_seed(int(seed))  # SB3's predict samples from torch's global generator
        row = {"agent": method, "seed": int(seed), "episodes": args.episodes, "command": command,
               **play(agent, env, args.episodes, games_seed(int(seed)), fire)}
        print(f"{spec}: FIRE on {row['fire_share']:.1%} of steps, median wait after a lost life {row['median_wait']}, "
              f"{row['steps_per_game']:.0f} steps per game, mean score {row['mean_score']:.2f}", file=sys.stderr)
        saved = json.loads(RESULT.read_text()) if RESULT.exists() else {"benchmark": "serving", "rows": []}
        saved["rows"] = [r for r in saved["rows"] if (r["agent"], r["seed"], r["episodes"]) !=
                         (method, int(seed), args.episodes)] + [row]
        save_result(saved, RESULT)
    for seed in args.dream_seeds:
        rows = dream_rows(seed, args.dream_steps, args.runs, fire, int(env.action_space.n))
        saved = json.loads(RESULT.read_text()) if RESULT.exists() else {"benchmark": "serving", "rows": []}
        saved["dream"] = [r for r in saved.get("dream", []) if r["run_seed"] != seed] + [
            dict(r, command=command) for r in rows]
        save_result(saved, RESULT)
    env.close()


if __name__ == "__main__":
    main()
