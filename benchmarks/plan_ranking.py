"""Does a run's planning objective rank action sequences as the real game does?

MPC can only beat the random policy if the world model's imagined returns put the sequences
that really earn points and keep lives above the others. This script measures that directly,
in minutes instead of hours of games, against the truth:

1. The run's agent (acting as in evaluation: DQN with its final epsilon, PPO sampled; the random
   policy with `--behaviour random` or when the run has no agent) plays real games; every
   `--every` steps, once the world model's context holds real frames only, the emulator state
   and that context are kept, until there are `--states` of them.
2. At each kept state, `--candidates` action sequences of max(`--horizons`) steps, drawn
   uniformly, are scored twice: by the planning objective of `mbrl plan` (the run's world model,
   the run's `mpc` discount and life-loss penalty, `mbrl.agents.planners.world_model_objective`) on
   each horizon's prefixes, and by the real game replayed from the kept state without sticky
   actions (`mbrl.envs.emulator`), counting the same discounted clipped reward minus the same
   life-loss penalty.
   A world model with a value head (family jepa-value) is also scored with its value added at the
   horizon ('imagination + value', as `mbrl plan` plans with it), against the real return of the
   H steps plus what the run's greedy agent really earns after them (`--continue-steps` steps,
   until it loses a life: what the value estimates), 'real + agent' (`mbrl.envs.emulator.Emulator.continued`).
3. Per horizon H, over the states where the real H-step returns differ at all ('informative'):
   'spearman': mean rank correlation of imagined and real returns; 'gain': mean of (real return
   of the imagined best - mean real return) / (best real - mean real): 1 when the objective picks
   the best sequence, 0 on average for a random pick. 'real best - mean' is the mean room to gain.

    python -m benchmarks.plan_ranking --runs runs/bench100k/Breakout-published-s0 --states 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import HERE, gathered, load_result, machine, save_result
from mbrl.core.memory import keep_freed_memory

RESULT = HERE / "results" / "plan_ranking.json"


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0 .. n-1 of x (n,), ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, tie = np.unique(x, return_inverse=True)
    return (np.bincount(tie, ranks) / np.bincount(tie))[tie]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of a and b (n,); 0 when either is constant."""
    ra, rb = average_ranks(a) - (len(a) - 1) / 2, average_ranks(b) - (len(b) - 1) / 2
    scale = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / scale) if scale > 0 else 0.0


def ranking_scores(imagined: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """How imagined returns (S, N) rank real ones (S, N) over the S states where the real returns differ."""
    informative = real.max(1) > real.min(1)
    if not informative.any():
        return {"informative": 0.0, "spearman": float("nan"), "gain": float("nan"), "room": 0.0}
    imagined, real = imagined[informative], real[informative]
    picked = real[np.arange(len(real)), imagined.argmax(1)]
    mean, best = real.mean(1), real.max(1)
    return {"informative": float(informative.mean()),
            "spearman": float(np.mean([spearman(i, r) for i, r in zip(imagined, real)])),
            "gain": float(np.mean((picked - mean) / (best - mean))), "room": float(np.mean(best - mean))}


def kept_states(env: Any, policy: Any, world_model: Any, states: int, every: int, seed: int) -> list[dict[str, Any]]:
    """Play real games in `env` with `policy` (SB3's `predict`); every `every` steps, once the world model's
    context holds real frames only, keep the emulator state and that context: latents (context,
    *latent_shape) and the actions between them (context - 1,)."""
    from mbrl.envs.emulator import snapshot

    context = int(getattr(world_model.config, "context", 1) or 1)
    torch.manual_seed(seed)  # SB3's predict samples from torch's global generator
    kept: list[dict[str, Any]] = []
    obs, _ = env.reset(seed=seed)
    latents: list[torch.Tensor] = []
    actions: list[int] = []
    step = 0  # of the game
    while len(kept) < states:
        with torch.no_grad():
            latents = [*latents, world_model.encode(torch.as_tensor(obs)[None, None])[0, 0]][-context:]
        if step + 1 >= context and (step + 1 - context) % every == 0:
            kept.append({"state": snapshot(env), "obs": obs.copy(), "latents": torch.stack(latents),
                         "actions": torch.tensor(actions, dtype=torch.long)})
        action = int(np.asarray(policy.predict(obs[None], deterministic=False)[0]).reshape(-1)[0])
        actions = [*actions, action][1 - context:] if context > 1 else []
        obs, _, terminated, truncated, _ = env.step(action)
        step += 1
        if terminated or truncated:
            obs, _ = env.reset()
            latents, actions, step = [], [], 0
    return kept


def heads_on_real_future(world_model: Any, obs: np.ndarray, outcomes: Any, discount: float,
                         life_loss_penalty: float) -> np.ndarray:
    """The objective's returns (N, H) with the world model's heads read on the encoded real futures of N
    sequences (`outcomes` with frames) from the frame stack `obs` (S, size, size), instead of on imagined latents."""
    from mbrl.envs.emulator import Outcomes, real_returns

    n, horizon = outcomes.reward.shape
    stack = obs.shape[0]
    frames = np.concatenate([np.broadcast_to(obs[1:], (n, stack - 1, *obs.shape[1:])), outcomes.frames], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(frames, stack, axis=1)  # (N, H, size, size, S)
    stacks = np.concatenate([np.broadcast_to(obs, (n, 1, *obs.shape)), np.moveaxis(windows, -1, 2)], axis=1)
    with torch.no_grad():
        z = torch.cat([world_model.encode(torch.as_tensor(np.ascontiguousarray(part)))
                       for part in np.array_split(stacks, max(1, n // 16))])  # (N, H + 1, *latent_shape)
        heads = world_model.read_events(z[:, :-1].flatten(0, 1), z[:, 1:].flatten(0, 1))
        if heads is None:
            raise SystemExit(f"{type(world_model).__name__} cannot read its heads on given latents: "
                             "pass --real-latent-states 0")
        reward, cont, life_loss = (x.view(n, horizon).numpy() for x in heads)
    alive = np.concatenate([np.ones((n, 1)), np.cumprod(cont, axis=1)[:, :-1]], axis=1)
    return real_returns(Outcomes(reward, life_loss, alive), discount, life_loss_penalty)


def imagined_returns(world_model: Any, objective: Any, kept: list[dict[str, Any]], candidates: torch.Tensor,
                     horizons: list[int], batch: int) -> np.ndarray:
    """float (S, N, max(horizons)): column h - 1 holds the objective's returns of the candidates' first h steps
    (int64 (S, N, H)) at each kept state, for h in `horizons` (other columns 0); `batch` states imagined at once."""
    out = np.zeros((*candidates.shape[:2], max(horizons)))
    for first in range(0, len(kept), batch):
        rows = slice(first, first + batch)
        with torch.no_grad():
            state = world_model.observe(torch.stack([k["latents"] for k in kept[rows]]),
                                        torch.stack([k["actions"] for k in kept[rows]]))
            for h in horizons:
                out[rows, :, h - 1] = objective(state, candidates[rows, :, :h]).numpy()
    return out


def value_rankings(world_model: Any, kept: list[dict[str, Any]], sequences: np.ndarray, real: np.ndarray, emulator: Any,
                   args: argparse.Namespace, discount: float, life_loss_penalty: float) -> list[dict[str, Any]]:
    """Rankings of the objective with the world model's value at the horizon (and of the objective without it)
    against 'real + agent': each sequence's real H-step return (S, N, H) plus discount^H x what the greedy agent
    of the world model really earns after it (`Emulator.continued`), for every horizon of `args.horizons`."""
    from mbrl.agents.planners import world_model_objective
    from mbrl.agents.value_agent import ValueAgent

    greedy = ValueAgent(world_model, torch.device("cpu"))
    objective = world_model_objective(world_model, discount, world_model.value, life_loss_penalty)
    candidates = torch.as_tensor(sequences)
    rows = []
    for h in args.horizons:
        truth = np.stack([real[i, :, h - 1] + discount**h * emulator.continued(
            k["state"], sequences[i, :, :h], k["obs"], lambda stack: int(greedy.greedy(stack[None])[0]),
            args.continue_steps, discount) for i, k in enumerate(kept)])  # (S, N)
        with_value = imagined_returns(world_model, objective, kept, candidates, [h], args.batch)[:, :, h - 1]
        rows.append({"scored_by": "imagination + value", "against": "real + agent", "horizon": h,
                     "states": len(kept), **ranking_scores(with_value, truth)})
        rows.append({"scored_by": "real H steps alone", "against": "real + agent", "horizon": h,
                     "states": len(kept), **ranking_scores(real[:, :, h - 1], truth)})
        print(f"H={h} value rankings done", file=sys.stderr, flush=True)
    return rows


def score_run(run_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Imagined and real returns of the same candidates at the kept states of one run; the ranking scores."""
    from mbrl.agents.planners import world_model_objective
    from mbrl.collect import RandomPolicy
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import make_env
    from mbrl.envs.emulator import Emulator, real_returns
    from mbrl.envs.registration import load_world_model
    from mbrl.joint import FAMILY as VALUE_FAMILY
    from mbrl.loop import AGENT, load_trained_agent
    from mbrl.session import config_for_run, with_num_actions

    run = RunDir(run_path)
    config = with_num_actions(config_for_run(run, None, args.set, {"device": "cpu"}))
    device = torch.device("cpu")
    start = time.perf_counter()
    env = make_env(config.env)
    has_agent = (config.world_model_training.family == VALUE_FAMILY or (run.checkpoint_dir / f"{AGENT}.json").exists())
    agent = load_trained_agent(run, config, device) if args.behaviour == "agent" and has_agent else None
    world_model = (agent.world_model if agent else load_world_model(run, device)[0]).eval()
    behaviour = "agent" if agent else "random"
    policy = agent or RandomPolicy(env.action_space, seed=args.seed)
    kept = kept_states(env, policy, world_model, args.states, args.every, args.seed)
    env.close()
    mpc = config.mpc
    objective = world_model_objective(world_model, mpc.discount, None, mpc.life_loss_penalty)
    horizon = max(args.horizons)
    rng = np.random.default_rng(args.seed)
    sequences = rng.integers(0, world_model.num_actions, size=(len(kept), args.candidates, horizon))
    emulator = Emulator(config.env)
    outcomes = [emulator.outcomes(k["state"], s) for k, s in zip(kept, sequences)]
    real = np.stack([real_returns(o, mpc.discount, mpc.life_loss_penalty) for o in outcomes])  # (S, N, H)
    imagined = imagined_returns(world_model, objective, kept, torch.as_tensor(sequences), args.horizons, args.batch)
    rankings = [{"scored_by": "imagination", "horizon": h, "states": len(kept),
                 **ranking_scores(imagined[:, :, h - 1], real[:, :, h - 1])} for h in args.horizons]
    if world_model.has_value:
        rankings += value_rankings(world_model, kept, sequences, real, emulator, args, mpc.discount,
                                   mpc.life_loss_penalty)
    if args.real_latent_states:
        # the heads on the latents of the real futures: what better dynamics could give at best
        subset = np.flatnonzero(real[:, :, -1].max(1) > real[:, :, -1].min(1))[:args.real_latent_states]
        heads = np.stack([heads_on_real_future(world_model, kept[i]["obs"], emulator.outcomes(
            kept[i]["state"], sequences[i], frames=True), mpc.discount, mpc.life_loss_penalty) for i in subset]
                         or [np.zeros(real.shape[1:])])[: len(subset)]  # no informative state: no rows
        for name, scores in (("imagination", imagined[subset]), ("heads on real futures", heads)):
            rankings += [{"scored_by": name, "horizon": h, "states": len(subset),
                          **ranking_scores(scores[:, :, h - 1], real[subset, :, h - 1])} for h in args.horizons]
    emulator.close()
    for row in rankings:
        print(f"{run_path} {row['scored_by']} vs {row.get('against', 'real')} ({row['states']} states) "
              f"H={row['horizon']}: informative "
              f"{row['informative']:.2f}, spearman {row['spearman']:.3f}, gain {row['gain']:.3f}, real best - mean "
              f"{row['room']:.3f}", file=sys.stderr, flush=True)
    return {"run": str(run_path), "behaviour": behaviour, "states": len(kept), "every": args.every,
            "candidates": args.candidates, "seed": args.seed, "discount": mpc.discount,
            "life_loss_penalty": mpc.life_loss_penalty, "overrides": args.set, "rankings": rankings,
            "continue_steps": args.continue_steps,
            "seconds": time.perf_counter() - start}


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table: one row per run and ranking."""
    notes = ["Per run: states from real games of the run's agent (as in evaluation) or the random policy ('played "
             "by'), one every few steps; at each, the same uniformly drawn action sequences scored by `mbrl plan`'s "
             "objective (the run's world model, its `mpc` discount and life-loss penalty, no terminal value) and by "
             "the real game replayed from the saved emulator state without sticky actions (`envs/emulator.py`), on "
             "the first H steps. Informative: the share of states where the real returns of the sequences differ at "
             "all; the other columns are means over those states. Spearman: rank correlation of imagined and real "
             "returns. Gain: (real return of the imagined best - mean real return) / (best real - mean real): 1 = "
             "the objective picks the best sequence, 0 = no better than a random pick (what the random policy gets). "
             "Room: best real - mean real. 'heads on real futures': the same heads read on the encoded frames of "
             "each sequence's real future instead of on imagined latents (what better dynamics could give at most), "
             "at the first states where the longest horizon's real returns differ, shown with imagination on the "
             "same states. A world model with a value head (family jepa-value) is also scored with its value added "
             "at the horizon ('imagination + value', as `mbrl plan` plans with it) against 'real + agent': the real "
             "H-step return plus what the run's greedy agent really earns after the sequence (discounted, until it "
             "loses a life or `continue_steps` pass); 'real H steps alone' against the same truth shows how much of "
             "it lies past the horizon."]
    columns = ["run", "played by", "scored by", "states (every)", "candidates", "H", "informative", "spearman", "gain",
               "room", "seed", "date, machine"]

    def number(x: float) -> str:
        return "-" if x != x else f"{x:.3f}"  # nan: no state to rank at

    rows = [[e["run"], e["behaviour"], h["scored_by"] + (f" vs {h['against']}" if "against" in h else ""),
             f"{h['states']} ({e['every']})", e["candidates"], h["horizon"], f"{h['informative']:.3f}",
             number(h["spearman"]), number(h["gain"]), f"{h['room']:.3f}", e["seed"], f"{e['date']}, {e['machine']}"]
            for e in saved["runs"] for h in e["rankings"]]  # rankings without `against` are against the real H steps
    return {**saved, **gathered(saved["runs"]), "notes": notes, "tables": [{"columns": columns, "rows": rows}],
            "title": "Does the planning objective rank action sequences as the real game does?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True,
                        help="train-agent runs whose world models to judge")
    parser.add_argument("--states", type=int, default=200, help="real states to rank candidates at (default 200)")
    parser.add_argument("--every", type=int, default=5, help="real steps between kept states (default 5)")
    parser.add_argument("--candidates", type=int, default=64, help="action sequences per state (default 64)")
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 4, 8, 12],
                        help="horizons to rank at, each scored on the first H steps of the same sequences")
    parser.add_argument("--behaviour", choices=["agent", "random"], default="agent",
                        help="who plays the real games the states come from (default: the run's agent)")
    parser.add_argument("--real-latent-states", type=int, default=100,
                        help="also score the candidates with the heads read on the encoded real futures, at up to this "
                             "many states where the longest horizon's real returns differ (JEPA; 0: not)")
    parser.add_argument("--continue-steps", type=int, default=30,
                        help="with a value head: real agent steps after each sequence that 'real + agent' counts "
                             "(default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the games, the behaviour and the candidates")
    parser.add_argument("--batch", type=int, default=16, help="states imagined together (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every run, e.g. --set mpc.life_loss_penalty=3 (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULT, help="results file (default results/plan_ranking.json)")
    args = parser.parse_args()
    if min(args.horizons) < 1 or args.states < 1 or args.every < 1 or args.candidates < 2:
        parser.error("--horizons and --states, --every must be >= 1 and --candidates >= 2")
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(args.threads)
    command = " ".join(["python", "-m", "benchmarks.plan_ranking", *sys.argv[1:]])
    for run in args.runs:
        entry = dict(score_run(run, args), command=command, date=time.strftime("%Y-%m-%d"), machine=machine())
        saved = load_result(args.out, "plan_ranking")
        keys = ("run", "behaviour", "states", "every", "candidates", "seed", "overrides")
        saved["runs"] = [r for r in saved["runs"] if any(r.get(k) != entry[k] for k in keys)] + [entry]
        save_result(with_tables(saved), args.out)


if __name__ == "__main__":
    main()
