"""What the latent carries: a policy that plays Breakout from pixels, distilled into the dream agent's network.

A teacher that plays well from pixels (the 100k benchmark's SB3 PPO CNN, e.g. trained for 400k real
steps: 9-12 points a game) plays `--steps` real steps of full games (evaluation rules, sampled
actions; the play is kept in the teacher's directory for later runs), and its action probabilities
on every observation become the targets of students that see the same observations in other forms:

  latent  the default agent's network (the `agent` config's MLP) on the run's latents
  tokens  the same MLP on all the JEPA target encoder's output tokens (summary and patch tokens)
  grid    the tokens through `benchmarks.dream_gap.TokenGrid` (a small CNN over the patch-token grid), then the MLP
  pixels  the teacher's architecture on the pixels, from scratch: what cloning alone achieves

Each student learns by cross-entropy to the teacher's probabilities (behaviour cloning: no reward,
no RL) on the first 90% of the steps, and is scored on the last 10% (agreement with the teacher's most
likely action; cross-entropy) and on full real games (`mbrl.evaluate.evaluate_agent`; the same games
for every student and for the teacher). A latent student that plays about as well as the pixel student
says the latent carries what play needs, so an RL agent that learns nothing from it is short of
samples or signal, not of information; one that plays like the random policy says the latent lacks it.

With `--dream-steps N`, the latent student and the random policy also act for N steps in the run's
dream (the `dream` settings, e.g. `--set dream.reward=expected dream.terminate_on=life_loss
dream.termination=sample` as in the presets): their imagined reward and episode ends per step beside
the real game's points and lost lives per step. A dream that pays the cloned player no more than the
random one cannot teach an agent what the cloned player does, whatever the latent carries.

    python -m benchmarks.studies.latent_distill.latent_distill --run runs/NAME --teacher runs/bench/ppo-s0 \
        --label NAME [--steps 50000]
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
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

from benchmarks.breakout_100k import ppo_baseline
from benchmarks.dream_gap import RUN_ONLY, EncoderTokens, TokenGrid, training_env
from benchmarks.report import gathered, load_result, machine, save_result
from mbrl.agents.sb3 import LatentVecEnv
from mbrl.agents.sb3_agent import LatentAgent, build_agent
from mbrl.collect import RandomPolicy
from mbrl.core.memory import keep_freed_memory
from mbrl.core.run import RunDir
from mbrl.envs.atari import make_env, make_vector_env
from mbrl.envs.registration import load_world_model
from mbrl.envs.wrappers import encode_observations
from mbrl.evaluate import eval_env_config, evaluate_agent
from mbrl.run_config import RunConfig, resolve_config
from mbrl.world_models.jepa import JEPAWorldModel

RESULT = Path(__file__).resolve().parent / "results" / "latent_distill.json"
STUDENTS = ("latent", "tokens", "grid", "pixels")
PLAY_ENVS = 8  # games the teacher plays at once


@torch.no_grad()
def teacher_play(teacher: BaseAlgorithm, config: RunConfig, steps: int, seed: int) -> dict[str, Any]:
    """`steps` real steps of full games in 8 envs, the teacher sampling its actions: observations (T, S, H, W)
    uint8 in time order (env-major within a step), its probabilities (T, A) and the scores of finished games."""
    num_envs = PLAY_ENVS
    venv = make_vector_env(eval_env_config(config.env, config.eval), num_envs)
    generator = torch.Generator().manual_seed(seed)
    observations, probabilities, scores = [], [], []
    returns = np.zeros(num_envs)
    try:
        obs, _ = venv.reset(seed=seed)
        for _ in tqdm(range(steps // num_envs), desc="teacher plays", unit="step", disable=None):
            tensor = teacher.policy.obs_to_tensor(obs)[0]
            probs = teacher.policy.get_distribution(tensor).distribution.probs.float()  # type: ignore[operator]
            actions = torch.multinomial(probs, 1, generator=generator)[:, 0].numpy()
            observations.append(obs.copy())
            probabilities.append(probs.numpy())
            obs, _, terminated, truncated, info = venv.step(actions)
            returns += np.asarray(info["raw_reward"])
            for i in np.flatnonzero(terminated | truncated):
                scores.append(float(returns[i]))
                returns[i] = 0.0
    finally:
        venv.close()
    return {"observations": np.concatenate(observations), "probabilities": np.concatenate(probabilities),
            "scores": scores}


def encode_all(encoder: Any, observations: np.ndarray, batch: int = 256) -> torch.Tensor:
    """What a student sees of every observation: `encode_observations` in batches, (T, *shape) float32."""
    cpu = torch.device("cpu")
    return torch.cat([torch.as_tensor(encode_observations(encoder, observations[start:start + batch], cpu))
                      for start in tqdm(range(0, len(observations), batch), desc="encode", unit="batch",
                                        disable=None)])


def clone(policy: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, split: int, epochs: int,
          lr: float, seed: int, name: str) -> dict[str, float]:
    """Behaviour cloning: cross-entropy of `policy`'s action distribution to `targets` on rows [0, split),
    in minibatches of 256 for `epochs` epochs; scored on rows [split, T)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)

    def log_probs(x: torch.Tensor) -> torch.Tensor:
        return policy.get_distribution(x).distribution.logits  # type: ignore[operator]  # SB3's Categorical: normalised log-probabilities

    policy.train()
    for _ in tqdm(range(epochs), desc=f"clone {name}", unit="epoch", disable=None):
        for rows in torch.randperm(split, generator=generator).split(256):
            loss = -(targets[rows] * log_probs(inputs[rows])).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.eval()
    with torch.no_grad():
        def score(rows: torch.Tensor) -> tuple[float, float]:
            lp = torch.cat([log_probs(inputs[r]) for r in rows.split(1024)])
            cross_entropy = float(-(targets[rows] * lp).sum(-1).mean())
            return cross_entropy, float((lp.argmax(-1) == targets[rows].argmax(-1)).float().mean())
        train_ce, train_agree = score(torch.arange(split))
        val_ce, val_agree = score(torch.arange(split, len(inputs)))
    return {"train_cross_entropy": train_ce, "train_agreement": train_agree,
            "val_cross_entropy": val_ce, "val_agreement": val_agree}


@torch.no_grad()
def dream_rates(policy: Any, env: Any, steps: int) -> dict[str, Any]:
    """`policy` (SB3's `predict` over latents, sampling) for `steps` steps (all envs together) in the SB3
    VecEnv `env` of a dream: reward and ends (episodes the model terminated, not cut at the horizon) per
    step, overall and by imagined step t = 1, 2, ... of the episodes (`*_by_step[t - 1]`: per episode alive
    at that step)."""
    obs, depth = env.reset(), np.zeros(env.num_envs, int)
    reward, ends, alive = np.zeros(0), np.zeros(0), np.zeros(0)
    while alive.sum() < steps:
        obs, rewards, dones, infos = env.step(policy.predict(obs)[0])
        ended = [bool(d) and not info.get("TimeLimit.truncated", False) for d, info in zip(dones, infos)]
        if depth.max() >= len(alive):
            reward, ends, alive = (np.pad(a, (0, depth.max() + 1 - len(alive))) for a in (reward, ends, alive))
        np.add.at(reward, depth, rewards)
        np.add.at(ends, depth, ended)
        np.add.at(alive, depth, 1)
        depth = np.where(dones, 0, depth + 1)
    return {"dream_reward_per_step": reward.sum() / alive.sum(), "dream_ends_per_step": ends.sum() / alive.sum(),
            "dream_steps": int(alive.sum()), "dream_reward_by_step": (reward / alive).tolist(),
            "dream_ends_by_step": (ends / alive).tolist()}


@torch.no_grad()
def heads_on_play(model: JEPAWorldModel, latents: torch.Tensor, num_envs: int, batch: int = 4096) -> dict[str, float]:
    """The world model's heads on the real transitions of recorded play: `latents` (T * num_envs, K, dim) in
    time order, env-major within a step. Mean expected reward and life-loss probability per transition (the
    few pairs that straddle a game's end and the next game's start are counted too)."""
    z = latents.view(-1, num_envs, *latents.shape[1:])
    z, z_next = z[:-1].flatten(0, 1), z[1:].flatten(0, 1)
    reward, life_loss = 0.0, 0.0
    for start in range(0, len(z), batch):
        r, _, lost = model.transition(z[start:start + batch], z_next[start:start + batch])
        reward, life_loss = reward + float(r.sum()), life_loss + float(lost.sum())
    return {"heads_reward_per_step": reward / len(z), "heads_life_loss_per_step": life_loss / len(z)}


def real_rates(result: dict[str, Any], lives: int) -> dict[str, float]:
    """Points and lost lives per step of full real games (`lives` per game; a game cut at the frame cap
    counts as if all were lost)."""
    steps = sum(result["lengths"])
    return {"real_points_per_step": sum(result["scores"]) / steps,
            "real_lives_lost_per_step": lives * len(result["lengths"]) / steps}


def majority_agreement(targets: torch.Tensor, split: int) -> float:
    """Agreement on rows [split, T) of always choosing the teacher's most frequent action on rows [0, split)."""
    majority = targets[:split].argmax(-1).bincount().argmax()
    return float((targets[split:].argmax(-1) == majority).float().mean())


def student(name: str, config: RunConfig, model: JEPAWorldModel, seed: int) -> tuple[BaseAlgorithm, Any]:
    """A fresh student learner and what it sees through (an encoder, or None for pixels)."""
    env = DummyVecEnv([lambda: make_env(config.env)])
    if name == "pixels":
        return ppo_baseline(env, seed), None
    encoder: Any = model if name == "latent" else EncoderTokens(model)
    features = (TokenGrid, {"summary_tokens": model.config.summary_tokens}) if name == "grid" else None
    return build_agent(config.agent, LatentVecEnv(env, encoder), seed, "cpu", features), encoder


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and tables: each student's fit and real score per result, and
    with `--dream-steps` the dream's rates beside the real game's."""
    results = saved["results"]
    notes = [f"Torch threads {saved['torch_threads']}. A teacher that plays from pixels (the 100k benchmark's SB3 PPO "
             "CNN) plays full real games; students learn its action probabilities (cross-entropy, no reward) on the "
             "first 90% of its steps: 'latent' the default agent's MLP on the run's latents, 'tokens' the same MLP on "
             "all the encoder's output tokens, 'grid' those tokens through a small CNN over the patch-token grid "
             "first, 'pixels' the teacher's own architecture from scratch on the pixels. Agreement: the student's "
             "most likely action is the teacher's, on the held-out last 10% (on the teacher's row: always choosing "
             "the action the teacher chose most often). Real scores: full games (evaluation rules), the same games "
             "for every policy."]
    rows = []
    for res in results:
        for row in res["rows"]:
            if row["student"] == "teacher":
                majority = res.get("val_majority_agreement")
                fit = ["-" if majority is None else f"{majority:.3f} (its most frequent action)",
                       f"- ({res['val_teacher_entropy']:.3f})", "-"]
            elif "val_agreement" not in row:  # the random policy, for the dream's table
                fit = ["-", "-", "-"]
            else:
                fit = [f"{row[key]:.3f}" for key in ("val_agreement", "val_cross_entropy", "train_agreement")]
            rows.append([res["label"], row["student"], *fit, f"{row['mean']:.2f} +- {row['std']:.2f}",
                         len(row["scores"]), f"{row['clone_minutes']:.1f}" if "clone_minutes" in row else "-"])
    runs = [f"{res['label']} ({res['date']}; {res['steps']} teacher steps, {res['teacher_play']['games']} games at "
            f"{res['teacher_play']['mean']:.1f}; {res['epochs']} epochs)" for res in results]
    tables = [{"columns": ["result", "policy", "held-out agreement", "held-out cross-entropy (teacher's entropy)",
                           "train agreement", "real score (mean +- std over games)", "games", "minutes cloning"],
               "rows": rows, "notes": ["Results: " + "; ".join(runs) + "."]}]
    dreamt = [(res, row) for res in results for row in res["rows"] if "dream_reward_per_step" in row]
    if dreamt:
        def by_step(values: list[float]) -> str:
            return ", ".join(f"{values[t - 1]:.4f}" for t in (1, 5, 10) if t <= len(values))

        rows = [[res["label"], row["student"], f"{row['mean']:.2f}", f"{row['real_points_per_step']:.4f}",
                 f"{row['real_lives_lost_per_step']:.4f}",
                 f"{row['dream_reward_per_step']:.4f} ({by_step(row['dream_reward_by_step'])})",
                 f"{row['dream_ends_per_step']:.4f} ({by_step(row['dream_ends_by_step'])})", row["dream_steps"]]
                for res, row in dreamt]
        rows += [[res["label"], "teacher, heads on its real play", f"{row['mean']:.2f}",
                  f"{row['real_points_per_step']:.4f}", f"{row['real_lives_lost_per_step']:.4f}",
                  f"{row['heads_reward_per_step']:.4f} (heads on real transitions)",
                  f"{row['heads_life_loss_per_step']:.4f} (heads)", "-"]
                 for res in results for row in res["rows"] if "heads_reward_per_step" in row]
        settings = [f"{res['label']} dream: horizon {res['dream']['horizon']}, reward {res['dream']['reward']}, ends "
                    f"on {res['dream']['terminate_on']} ({res['dream']['termination']})"
                    for res in results if res.get("dream")]
        tables.append({"title": "Does the dream tell the cloned player from the random one? With `--dream-steps`, the "
                                "latent student and the random policy also act in the run's dream (settings per result "
                                "below; imagined episodes start from the run's training episodes). Real points per "
                                "step: raw score over steps of the real games above (the lowest bricks pay 1, higher "
                                "ones 4 and 7, so above the clipped rate); real lives lost per step: 5 per game over "
                                "its steps. Dream: the model's (expected) reward per imagined step, and its episode "
                                "ends (life losses or game overs, as the dream ends) per step.",
                       "columns": ["result", "policy", "real score", "real points / step", "real lives lost / step",
                                   "dream reward / step (at imagined steps 1, 5, 10)",
                                   "dream ends / step (at 1, 5, 10)", "imagined steps"],
                       "rows": rows, "notes": ["; ".join(settings) + "."]})
    return {**saved, **gathered(results, saved.get("unrecorded")), "notes": notes, "tables": tables,
            "title": "What the latent carries: a pixel policy cloned onto it"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a run with a trained JEPA world model")
    parser.add_argument("--teacher", required=True, type=Path,
                        help="checkpoint directory of benchmarks.breakout_100k's PPO (runs/bench/ppo-sSEED)")
    parser.add_argument("--label", required=True, help="name of the result (a result with this label is replaced)")
    parser.add_argument("--steps", type=int, default=50_000, help="real steps the teacher plays (90%% to learn from)")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training steps per student")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam step size of the students")
    parser.add_argument("--episodes", type=int, default=16, help="full real games per policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dream-steps", type=int, default=0,
                        help="imagined steps of the latent student and of the random policy in the run's dream "
                             "(0: no dream)")
    parser.add_argument("--lives", type=int, default=5, help="lives per game, for the real lost lives per step")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the dream, agent and eval settings (defaults otherwise)")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if not (args.teacher / "ppo.json").exists():
        parser.error(f"no PPO checkpoint in {args.teacher} (expected {args.teacher / 'ppo.json'})")

    run = RunDir(args.run)
    base = {k: v for k, v in run.read_config().items() if k not in RUN_ONLY}
    config = resolve_config(None, ["eval.num_workers=0", f"eval.episodes={args.episodes}", *args.set], base)
    model, _ = load_world_model(run, torch.device("cpu"))
    if not isinstance(model, JEPAWorldModel):
        parser.error(f"{args.run} has no JEPA world model")
    teacher = ppo_baseline(DummyVecEnv([lambda: make_env(config.env)]), args.seed, args.teacher)
    start = time.perf_counter()
    cache = args.teacher / f"play-{args.steps}-seed{args.seed}.npz"  # the teacher's play, kept for the next students
    if cache.exists():
        with np.load(cache) as saved:
            data = {key: saved[key] for key in saved.files}
        data["scores"] = data["scores"].tolist()
    else:
        data = teacher_play(teacher, config, args.steps, args.seed)
        np.savez(cache.with_suffix(".tmp.npz"), **data)
        cache.with_suffix(".tmp.npz").replace(cache)
    observations, targets = data["observations"], torch.as_tensor(data["probabilities"])
    split = int(0.9 * len(observations))

    def play(agent: Any) -> dict[str, Any]:
        result = evaluate_agent(agent, config.env, config.eval, seed=args.seed + 1000, progress=None)
        return {**{key: result[key] for key in ("mean", "std", "scores")}, **real_rates(result, args.lives)}

    def dream(policy: Any) -> dict[str, float]:
        return dream_rates(policy, training_env("dream", run, model, config, args.seed), args.dream_steps)

    rows: list[dict[str, Any]] = [{"student": "teacher", **play(teacher)}]
    print(json.dumps(rows[-1]), file=sys.stderr)
    if args.dream_steps:
        space = make_env(config.env).action_space
        rows.append({"student": "random policy", **play(RandomPolicy(space, seed=args.seed)),
                     **dream(RandomPolicy(space, seed=args.seed))})
        print(json.dumps(rows[-1]), file=sys.stderr)
    for name in args.students:
        learner, encoder = student(name, config, model, args.seed)
        inputs = torch.as_tensor(observations) if encoder is None else encode_all(encoder, observations)
        began = time.perf_counter()
        fit = clone(learner.policy, inputs, targets, split, args.epochs, args.lr, args.seed, name)
        agent: Any = learner if encoder is None else LatentAgent(learner, encoder, torch.device("cpu"))
        in_dream: dict[str, Any] = {}
        if args.dream_steps and name == "latent":  # also: what the heads make of the teacher's real play
            in_dream = dream(learner)
            rows[0].update(heads_on_play(model, inputs, PLAY_ENVS))
        rows.append({"student": name, **fit, "clone_minutes": (time.perf_counter() - began) / 60, **play(agent),
                     **in_dream})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "scores"}), file=sys.stderr)
        del inputs
    held_out = targets[split:]
    result = {"label": args.label, "run": str(args.run), "teacher": str(args.teacher),
              "command": "python -m benchmarks.studies.latent_distill.latent_distill " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(), "steps": len(observations),
              "epochs": args.epochs, "lr": args.lr,
              "teacher_play": {"games": len(data["scores"]), "mean": float(np.mean(data["scores"] or [0.0]))},
              "val_teacher_entropy": float(-(held_out * held_out.clamp_min(1e-12).log()).sum(-1).mean()),
              "val_majority_agreement": majority_agreement(targets, split),
              "dream": dataclasses.asdict(config.dream) if args.dream_steps else None,
              "rows": rows, "minutes": (time.perf_counter() - start) / 60}
    saved = load_result(RESULT, "latent_distill", rows="results")  # read again: others may have added results
    kept = [r for r in saved["results"] if r["label"] != args.label]
    saved.update(torch_threads=args.threads, results=[*kept, result])
    save_result(with_tables(saved), RESULT)


if __name__ == "__main__":
    main()
