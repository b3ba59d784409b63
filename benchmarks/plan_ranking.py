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
   the run's `mpc` discount and life-loss penalty, `agents.planners.world_model_objective`) on
   each horizon's prefixes, and by the real game replayed from the kept state without sticky
   actions (`envs.emulator`), counting the same discounted clipped reward minus the same
   life-loss penalty.
3. Per horizon H, over the states where the real H-step returns differ at all ('informative'):
   'spearman': mean rank correlation of imagined and real returns; 'gain': mean of (real return
   of the imagined best - mean real return) / (best real - mean real): 1 when the objective picks
   the best sequence, 0 on average for a random pick. 'real best - mean' is the mean room to gain.

    python benchmarks/plan_ranking.py --runs runs/bench/mbrl-dqn-s0 --states 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbrl.memory import keep_freed_memory
from report import HERE, load_result, machine, save_result

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
    from envs.emulator import snapshot

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
    from envs.emulator import Outcomes, real_returns

    n, horizon = outcomes.reward.shape
    stack = obs.shape[0]
    frames = np.concatenate([np.broadcast_to(obs[1:], (n, stack - 1, *obs.shape[1:])), outcomes.frames], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(frames, stack, axis=1)  # (N, H, size, size, S)
    stacks = np.concatenate([np.broadcast_to(obs, (n, 1, *obs.shape)), np.moveaxis(windows, -1, 2)], axis=1)
    with torch.no_grad():
        z = torch.cat([world_model.encode(torch.as_tensor(np.ascontiguousarray(part)))
                       for part in np.array_split(stacks, max(1, n // 16))])  # (N, H + 1, *latent_shape)
        reward, cont, life_loss = (x.view(n, horizon).numpy() for x in
                                   world_model.transition(z[:, :-1].flatten(0, 1), z[:, 1:].flatten(0, 1)))
    alive = np.concatenate([np.ones((n, 1)), np.cumprod(cont, axis=1)[:, :-1]], axis=1)
    return real_returns(Outcomes(reward, life_loss, alive), discount, life_loss_penalty)


def score_run(run_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Imagined and real returns of the same candidates at the kept states of one run; the ranking scores."""
    from agents.planners import world_model_objective
    from envs.atari import make_env
    from envs.emulator import Emulator, real_returns
    from envs.registration import load_world_model
    from mbrl.cli import config_for_run
    from mbrl.collect import RandomPolicy
    from mbrl.loop import AGENT, load_trained_agent, with_num_actions
    from mbrl.run import RunDir

    run = RunDir(run_path)
    config = with_num_actions(config_for_run(run, None, args.set, {"device": "cpu"}))
    device = torch.device("cpu")
    start = time.perf_counter()
    env = make_env(config.env)
    agent = (load_trained_agent(run, config, device)
             if args.behaviour == "agent" and (run.checkpoint_dir / f"{AGENT}.json").exists() else None)
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
    imagined = np.zeros_like(real)
    candidates = torch.as_tensor(sequences)
    for first in range(0, len(kept), args.batch):
        rows = slice(first, first + args.batch)
        with torch.no_grad():
            state = world_model.observe(torch.stack([k["latents"] for k in kept[rows]]),
                                        torch.stack([k["actions"] for k in kept[rows]]))
            for h in args.horizons:
                imagined[rows, :, h - 1] = objective(state, candidates[rows, :, :h]).numpy()
    rankings = [{"scored_by": "imagination", "horizon": h, "states": len(kept),
                 **ranking_scores(imagined[:, :, h - 1], real[:, :, h - 1])} for h in args.horizons]
    if args.real_latent_states and hasattr(world_model, "transition"):
        # the heads on the latents of the real futures: what better dynamics could give at best
        subset = np.flatnonzero(real[:, :, -1].max(1) > real[:, :, -1].min(1))[:args.real_latent_states]
        heads = np.stack([heads_on_real_future(world_model, kept[i]["obs"], emulator.outcomes(
            kept[i]["state"], sequences[i], frames=True), mpc.discount, mpc.life_loss_penalty) for i in subset])
        for name, scores in (("imagination", imagined[subset]), ("heads on real futures", heads)):
            rankings += [{"scored_by": name, "horizon": h, "states": len(subset),
                          **ranking_scores(scores[:, :, h - 1], real[subset, :, h - 1])} for h in args.horizons]
    emulator.close()
    for row in rankings:
        print(f"{run_path} {row['scored_by']} ({row['states']} states) H={row['horizon']}: informative "
              f"{row['informative']:.2f}, spearman {row['spearman']:.3f}, gain {row['gain']:.3f}, real best - mean "
              f"{row['room']:.3f}", file=sys.stderr, flush=True)
    return {"run": str(run_path), "behaviour": behaviour, "states": len(kept), "every": args.every,
            "candidates": args.candidates, "seed": args.seed, "discount": mpc.discount,
            "life_loss_penalty": mpc.life_loss_penalty, "overrides": args.set, "rankings": rankings,
            "seconds": time.perf_counter() - start}


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
    parser.add_argument("--seed", type=int, default=0, help="seeds the games, the behaviour and the candidates")
    parser.add_argument("--batch", type=int, default=16, help="states imagined together (default 16)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every run, e.g. --set mpc.life_loss_penalty=3 (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULT, help="results file (default results/plan_ranking.json)")
    args = parser.parse_args()
    if min(args.horizons) < 1 or args.states < 1 or args.every < 1 or args.candidates < 2:
        parser.error("--horizons and --states, --every must be >= 1 and --candidates >= 2")
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(2)
    command = " ".join(["python", "benchmarks/plan_ranking.py", *sys.argv[1:]])
    for run in args.runs:
        entry = dict(score_run(run, args), command=command, date=time.strftime("%Y-%m-%d"), machine=machine())
        saved = load_result(args.out, "plan_ranking")
        keys = ("run", "behaviour", "states", "every", "candidates", "seed", "overrides")
        saved["runs"] = [r for r in saved["runs"] if any(r.get(k) != entry[k] for k in keys)] + [entry]
        save_result(saved, args.out)


if __name__ == "__main__":
    main()
