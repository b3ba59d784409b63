"""How the final 100k agents serve: how often they press FIRE, and how long they wait after a lost life.

In Breakout the ball waits after every lost life until FIRE is pressed (the game's first serve is
pressed by `mbrl.envs.atari.FireReset`). An agent that rarely presses FIRE loses no lives while it
waits, which a dream that ends imagined episodes at a lost life may reward. For each agent
(`METHOD:SEED`, loaded as the breakout_100k_games study does) this plays `--episodes` full games on one
env and reports: the share of steps with FIRE, the steps from each lost life to the next FIRE
(median, mean), steps per game and the mean score. Rows go to results/serving.json (replacing
the same agent's row for the same games) of this study.

With `--dream-seeds S ...` it also asks whether the dream of the mbrl run of seed S rewards not
serving: in that dream (`mbrl.loop.run_dream`, as the agent learned in it, from real contexts of
the run's training episodes) it runs, for `--dream-steps` imagined steps each, the uniformly random
policy, a random policy that never presses FIRE, and the run's final agent, and reports the
imagined reward and model-ended episodes (lost lives) per step (the latent_distill study's `dream_rates`).

With `--fire-seeds S ...` it asks whether the world model of the mbrl run of seed S knows that
FIRE serves: from real contexts of its held-out episodes in which the ball waits to be served
(not in play for the context's last WAIT observations, no FIRE between them, the context not at
an episode's start), it imagines `--fire-horizon` steps of FIRE then NOOPs, and of NOOPs only, and
reads whether the ball is in play from each imagined latent with a linear probe (ridge regression
on one latent, fit on training episodes to the RAM's ball-in-play flag, its accuracy on held-out
observations reported). The same contexts' real continuations give the truth: where the first
real action was FIRE, and where no FIRE came yet (in play never, by the game's rules). As a
control of the probe on imagined latents, contexts with the ball in play are imagined under
their real actions and read the same way, against their real continuations. And how big a serve
is to the dynamics loss: for contexts whose next real action is FIRE and whose ball is in play one
step later, the real latent's first step and the predictor's error on it, against the first steps
of the control's contexts, in units of the control's mean real step.

    python -m benchmarks.studies.serving.serving --agents mbrl:0 mbrl:1 ppo:1 random:1 --episodes 10
    python -m benchmarks.studies.serving.serving --agents mbrl:1 --dream-seeds 1 4
    python -m benchmarks.studies.serving.serving --fire-seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.breakout_100k import baseline_config
from benchmarks.report import gathered, load_result, machine, save_result
from benchmarks.studies.breakout_100k_games.breakout_100k_games import final_agent, games_seed
from benchmarks.studies.latent_distill.latent_distill import dream_rates
from mbrl.core.memory import keep_freed_memory

RESULT = Path(__file__).resolve().parent / "results" / "serving.json"
WAIT = 4  # context observations before a serve that must all show no ball, with no FIRE between them


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
    from mbrl.core.run import RunDir
    from mbrl.loop import load_trained_agent, run_dream
    from mbrl.session import config_for_run, with_num_actions

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


def waiting(ball: np.ndarray, actions: np.ndarray, starts: np.ndarray, context: int, fire: int) -> np.ndarray:
    """bool (B,): the windows whose context ends with the ball waiting to be served: not in play in the context's
    last WAIT observations, no FIRE between them, and the window not beginning at an episode's start (the reset's
    own FIRE, not recorded as an action, may still be launching the ball there).

    Args:
        ball: bool (B, context + H) ball in play at each observation of the windows.
        actions: int (B, context - 1 + H) the actions between them.
        starts: bool (B,) the window's first observation starts an episode.
    """
    return ((~ball[:, context - WAIT:context]).all(1) & (actions[:, context - WAIT:context - 1] != fire).all(1)
            & ~starts)


@torch.no_grad()
def fire_row(seed: int, runs: Path, fire: int, noop: int, horizon: int, contexts: int,
             moves: tuple[int, int]) -> dict[str, Any]:
    """Ball in play 1..`horizon` steps after real waiting contexts: imagined after FIRE and after NOOPs by the
    world model of the mbrl run of `seed` (read by a linear probe), and in the real continuations; and how far
    apart the model imagines the two paddle moves `moves` (RIGHT, LEFT) held from the same contexts."""
    from mbrl.core.replay import FIRST, ReplayBuffer, split_episodes
    from mbrl.core.run import RunDir
    from mbrl.envs.registration import load_world_model
    from mbrl.eval_world_model import IN_PLAY, apply_probe, fit_probe, in_play
    from mbrl.session import config_for_run
    from mbrl.world_models.base import imagine

    run = RunDir(runs / f"mbrl-s{seed}")
    config = config_for_run(run, None, [], {"device": "cpu"})
    model = load_world_model(run, torch.device("cpu"))[0].eval()
    buffer = ReplayBuffer.load(run.replay_dir)
    train, held = split_episodes(buffer, config.world_model_training.holdout_every)
    rule = IN_PLAY[config.env.id]["ball_y"]
    rng = np.random.default_rng(seed)

    def encode(rows: np.ndarray) -> torch.Tensor:  # buffer rows (..., C) -> latents (..., C, *latent_shape)
        stacks = buffer.stacks(rows.ravel())
        z = torch.cat([model.encode(torch.as_tensor(stacks[i:i + 512])[:, None])[:, 0]
                       for i in range(0, len(stacks), 512)])
        return z.view(*rows.shape, *z.shape[1:])

    def probe_data(episodes: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = buffer.sample(n, 0, rng, episodes=episodes)
        x = encode(sample.rows[:, 0]).flatten(1).double()
        return x, torch.as_tensor(in_play(sample.ram[:, 0], rule)).double()[:, None]

    probe = fit_probe(*probe_data(train, 4096))
    x_test, y_test = probe_data(held, 2048)
    accuracy = float(((apply_probe(probe, x_test) > 0.5) == (y_test > 0.5)).double().mean())

    def imagined(latents: torch.Tensor, actions: np.ndarray) -> tuple[torch.Tensor, list[float]]:
        """Latents (P, horizon, F) imagined from encoded contexts (P, context, ...) under `actions` (P, context - 1 +
        horizon), and the share of them the probe reads in play at each step."""
        imagined_latents = imagine(model, latents, torch.as_tensor(actions)).latent
        assert imagined_latents is not None  # imagine always gives them
        flat = imagined_latents.flatten(2)
        read = apply_probe(probe, flat.double().flatten(0, 1)).view(len(latents), horizon) > 0.5
        return flat, read.double().mean(0).tolist()

    def one_step(z: torch.Tensor, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per window (latents z (P, context + 1, ...) of a context and the observation after it, actions (P,
        >= context)): the real latent's first step after the context and the predictor's error on it, each the mean
        absolute change per feature."""
        predicted = imagine(model, z[:, :context], torch.as_tensor(actions[:, :context])).latent
        assert predicted is not None
        real = z[:, context]
        return (real - z[:, context - 1]).abs().flatten(1).mean(1), (predicted[:, 0] - real).abs().flatten(1).mean(1)

    context = int(model.config.context)
    span = context - 1 + horizon  # the context, then the real continuation
    rows, actions = buffer.window_rows(np.unique(buffer.sample_ends(50_000, span, rng, episodes=held)), span)
    ball = in_play(buffer.ram(rows.ravel()), rule).reshape(rows.shape)  # (B, context + horizon)
    keep = waiting(ball, actions, buffer.flags(rows[:, 0]) & FIRST != 0, context, fire)
    # the probe's control: contexts with the ball in play, imagined under their real actions
    control = rng.permutation(np.flatnonzero(ball[:, context - 1]))[:contexts]
    control_latents = encode(rows[control, :context + 1])  # the context and its next observation
    control_imagined = imagined(control_latents[:, :context], actions[control])[1]
    control_real = ball[control, context:].mean(0).tolist()
    control_change, control_error = one_step(control_latents, actions[control])
    typical = control_change.mean()

    rows, actions, ball = rows[keep], actions[keep], ball[keep]
    after = ball[:, context:]  # (B, horizon): in play 1..horizon steps after the context
    first_fire = actions[:, context - 1] == fire
    no_fire_yet = np.cumsum(actions[:, context - 1:] == fire, axis=1) == 0  # no FIRE up to that step
    pick = rng.permutation(len(rows))[:contexts]
    encoded = encode(rows[pick, :context])  # (P, context, ...)
    # FIRE then NOOPs, NOOPs only, and the two paddle moves each held (actions the model is known to follow)
    plans = {"fire": [fire] + [noop] * (horizon - 1), "noop": [noop] * horizon, "right": [moves[0]] * horizon,
             "left": [moves[1]] * horizon}
    branch, shares = {}, {}
    for name, plan in plans.items():
        branch[name], shares[name] = imagined(encoded, np.concatenate(
            [actions[pick, :context - 1], np.tile(plan, (len(pick), 1))], 1))
    unit = (branch["noop"][:, 0] - encoded[:, -1].flatten(1)).abs().mean()  # the NOOP branch's first step
    served = rng.permutation(np.flatnonzero(first_fire & after[:, 0]))[:contexts]  # FIRE, then the ball in play
    serve_change, serve_error = one_step(encode(rows[served, :context + 1]), actions[served])

    def gap(a: str, b: str) -> list[float]:
        """How far branch a strays from branch b, in units of the NOOP branch's first step from the context."""
        return ((branch[a] - branch[b]).abs().mean((0, 2)) / unit).tolist()

    return {"run_seed": seed, "horizon": horizon, "waiting_contexts": int(len(rows)), "imagined_contexts": len(pick),
            "probe_accuracy": accuracy, "probe_in_play": float(y_test.mean()),
            "real_fire": after[first_fire].mean(0).tolist(), "real_fire_contexts": int(first_fire.sum()),
            "real_no_fire": [float(after[no_fire_yet[:, t], t].mean()) if no_fire_yet[:, t].any() else None
                             for t in range(horizon)],
            "imagined_fire": shares["fire"], "imagined_noop": shares["noop"], "fire_noop_gap": gap("fire", "noop"),
            "right_left_gap": gap("right", "left"),
            "control_real": control_real, "control_imagined": control_imagined,
            "served_contexts": len(served), "serve_change": float(serve_change.mean() / typical),
            "serve_error": float(serve_error.mean() / typical), "control_error": float(control_error.mean() / typical)}

def fire_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`--fire-seeds`: does an mbrl run's world model know that FIRE serves?"""
    def at(values: list[float | None], steps: tuple[int, ...]) -> str:
        return " / ".join("-" if values[t - 1] is None else f"{values[t - 1]:.2f}" for t in steps)

    horizon = max(row["horizon"] for row in rows)
    steps = tuple(t for t in (1, 3, horizon) if t <= horizon)
    title = ("Does the world model know that FIRE serves? From real contexts of a run's held-out episodes in which the "
             "ball waits to be served, the share of imagined or real steps with the ball in play "
             f"{' / '.join(map(str, steps))} steps after the context (imagined: read from the latent by a linear "
             "probe fit to the RAM's ball-in-play flag; 'probe' its accuracy on held-out real observations, with the "
             "share in play there); 'FIRE - NOOP' is how far the FIRE branch's latents lie from the NOOP branch's at "
             "those steps, in units of the NOOP branch's first step away from the context, and 'RIGHT - LEFT' the "
             "same for RIGHT and LEFT each held from the same contexts (since 2026-12-04; '-' before), for scale: an "
             "action the model follows; 'control': contexts with the ball in play imagined under their real actions, "
             "read by the same probe (real / imagined, at the same steps); 'serve size' (since 2026-12-04's last "
             "runs): from the waiting contexts whose next real action is FIRE and whose ball is in play one step "
             "later, the real latent's first step and the predictor's error on it (mean absolute change per feature, "
             "under the real actions), and the predictor's error on the control's first steps, all in units of the "
             "control's mean real first step.")
    table = []
    for row in sorted(rows, key=lambda row: (row["runs"], row["run_seed"])):
        control = (f"{at(row['control_real'], steps)}; {at(row['control_imagined'], steps)}" if "control_real" in row
                   else "-")
        size = (f"{row['serve_change']:.2f} / {row['serve_error']:.2f}; {row['control_error']:.2f} "
                f"({row['served_contexts']})" if "serve_change" in row else "-")
        table.append([f"{row['runs']}/mbrl-s{row['run_seed']}",
                      f"{row['waiting_contexts']} ({row['imagined_contexts']})",
                      f"{row['probe_accuracy']:.2f} ({row['probe_in_play']:.2f})",
                      f"{at(row['real_fire'], steps)} ({row['real_fire_contexts']})", at(row["imagined_fire"], steps),
                      at(row["imagined_noop"], steps), at(row["real_no_fire"], steps), at(row["fire_noop_gap"], steps),
                      at(row["right_left_gap"], steps) if "right_left_gap" in row else "-", control, size])
    columns = ["run", "waiting contexts (imagined from)", "probe (in play)", "real after FIRE (contexts)",
               "imagined after FIRE", "imagined after NOOPs", "real before any FIRE", "FIRE - NOOP", "RIGHT - LEFT",
               "control: real; imagined", "serve size: real step / error; control error (serves)"]
    return {"title": title, "columns": columns, "rows": table}


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and tables: the agents' serves, the dream's rates under policies
    that serve or not, and whether imagination follows a serve."""
    notes = ["Full games (the evaluation rules: sticky actions 0.25, 108k-frame cap, raw score) on one env per agent; "
             "'wait' = steps from a lost life to the next FIRE, which serves the ball again."]
    rows = [[row["agent"], row["seed"], row["episodes"], f"{row['fire_share']:.1%}",
             "-" if row["median_wait"] is None else f"{row['median_wait']:g}",
             "-" if row["median_wait"] is None else f"{row['mean_wait']:.1f}", f"{row['steps_per_game']:.0f}",
             f"{row['mean_score']:.2f}"] for row in sorted(saved["rows"], key=lambda row: (row["agent"], row["seed"],
                                                                                            row["episodes"]))]
    tables = [{"columns": ["agent", "seed", "games", "FIRE share", "wait median", "wait mean", "steps per game",
                           "mean score"], "rows": rows}]
    if saved.get("dream"):
        tables.append({"title": "In the dream of an mbrl run (its world model, imagined episodes from real contexts, "
                                "ended at a lost life or after the dream's horizon): imagined reward and lost lives "
                                "per imagined step.",
                       "columns": ["mbrl run", "policy", "imagined steps", "reward per step", "lost lives per step"],
                       "rows": [[f"seed {row['run_seed']}", row["policy"], row["steps"],
                                 f"{row['reward_per_step']:.4f}", f"{row['ends_per_step']:.4f}"]
                                for row in saved["dream"]]})
    if saved.get("fire"):
        tables.append(fire_table(saved["fire"]))
    header = gathered([*saved["rows"], *saved.get("dream", []), *saved.get("fire", [])], saved.get("unrecorded"))
    return {**saved, **header, "title": "How the final 100k agents serve", "notes": notes, "tables": tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=[], metavar="METHOD:SEED",
                        help="final agents of breakout_100k.py's runs, e.g. mbrl:1 ppo:1 random:1")
    parser.add_argument("--episodes", type=int, default=10, help="full games per agent (default 10)")
    parser.add_argument("--dream-seeds", type=int, nargs="*", default=[],
                        help="also the imagined reward of three policies in these mbrl runs' dreams")
    parser.add_argument("--dream-steps", type=int, default=20_000, help="imagined steps per policy (default 20000)")
    parser.add_argument("--fire-seeds", type=int, nargs="*", default=[],
                        help="also whether these mbrl runs' world models know that FIRE serves")
    parser.add_argument("--fire-horizon", type=int, default=10, help="imagined steps after a context (default 10)")
    parser.add_argument("--fire-contexts", type=int, default=512,
                        help="waiting contexts imagined from, at most (default 512)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"), help="where the runs live")
    args = parser.parse_args()
    for spec in args.agents:
        method, _, seed = spec.partition(":")
        if method not in ("mbrl", "ppo", "random") or not seed.isdigit():
            parser.error(f"--agents takes METHOD:SEED with METHOD mbrl, ppo or random, got {spec!r}")
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(1)
    from mbrl.envs.atari import make_env
    from mbrl.evaluate import eval_env_config

    config = baseline_config()
    env = make_env(eval_env_config(config.env, config.eval))
    meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
    fire, noop = meanings.index("FIRE"), meanings.index("NOOP")
    moves = (meanings.index("RIGHT"), meanings.index("LEFT"))
    command = " ".join(["python", "-m", "benchmarks.studies.serving.serving", *sys.argv[1:]])
    stamp = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": command}
    for spec in args.agents:
        method, seed = spec.split(":")
        agent = final_agent(method, int(seed), 100_000, args.runs, config)
        torch.manual_seed(int(seed))  # SB3's predict samples from torch's global generator
        row = {"agent": method, "seed": int(seed), "episodes": args.episodes, **stamp,
               **play(agent, env, args.episodes, games_seed(int(seed)), fire)}
        print(f"{spec}: FIRE on {row['fire_share']:.1%} of steps, median wait after a lost life {row['median_wait']}, "
              f"{row['steps_per_game']:.0f} steps per game, mean score {row['mean_score']:.2f}", file=sys.stderr)
        saved = load_result(RESULT, "serving", "rows")
        saved["rows"] = [r for r in saved["rows"] if (r["agent"], r["seed"], r["episodes"]) !=
                         (method, int(seed), args.episodes)] + [row]
        save_result(with_tables(saved), RESULT)
    for seed in args.dream_seeds:
        rows = dream_rows(seed, args.dream_steps, args.runs, fire, int(env.action_space.n))  # type: ignore[attr-defined]
        saved = load_result(RESULT, "serving", "rows")
        saved["dream"] = [r for r in saved.get("dream", []) if r["run_seed"] != seed] + [
            dict(r, **stamp) for r in rows]
        save_result(with_tables(saved), RESULT)
    for seed in args.fire_seeds:
        row = fire_row(seed, args.runs, fire, noop, args.fire_horizon, args.fire_contexts, moves)
        print(f"mbrl seed {seed}: ball in play after FIRE real {row['real_fire'][-1]:.2f}, imagined "
              f"{row['imagined_fire'][-1]:.2f}; after NOOPs imagined {row['imagined_noop'][-1]:.2f} "
              f"({args.fire_horizon} steps out)", file=sys.stderr)
        saved = load_result(RESULT, "serving", "rows")
        runs = str(args.runs)  # rows of other runs' directories are kept
        kept = [r for r in saved.get("fire", []) if (r["runs"], r["run_seed"]) != (runs, seed)]
        saved["fire"] = kept + [dict(row, runs=runs, **stamp)]
        save_result(with_tables(saved), RESULT)
    env.close()


if __name__ == "__main__":
    main()
