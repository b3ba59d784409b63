"""The dream-to-real gap: an agent trained only in a run's dream, scored in the dream and in the real game.

Trains the run's SB3 agent (its `agent` config, fresh weights) in the batched dream of the run's
world model, starting imagined episodes from the run's training episodes, and after each chunk
of dream steps plays full real games with it (`mbrl.evaluate.evaluate_agent`, the same code as
every score in this project). Reports, per chunk, the reward per imagined step (SB3's episode
returns over lengths) next to the reward per real step of the same policy, and at the end how
the policy acts in the real game: the share of each action and, for games with a ball rule in
`mbrl.eval_world_model.IN_PLAY`, the share of steps with the ball in play (a policy that never
serves stalls with the ball out of play). A dream that pays much more per step than the real
game, for actions that earn nothing there, is being exploited rather than learnt from.

With `--learn-in real` the same agent (same config, fresh weights) learns on the real game
instead, seeing it through the run's encoder (`mbrl.agents.sb3.LatentVecEnv`; episodic life and
clipped rewards, as the dream ends at a lost life and pays clipped rewards): what the latent
allows without the world model's errors, at the same number of agent steps, which then are
real steps ("train_reward_per_step" is then the real game's clipped reward per step). With
`--observe tokens` (JEPA only, real game only) it sees all of the target encoder's output tokens,
the latent's summary tokens and the 64 patch tokens, instead of the latent alone.

    python -m benchmarks.dream_gap --run runs/NAME --label NAME [--dream-steps 100000] [--learn-in real]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor
from torch import nn

from benchmarks.report import HERE, gathered, load_result, machine, save_result
from mbrl.agents.sb3 import DreamVecEnv, LatentVecEnv
from mbrl.agents.sb3_agent import LatentAgent, build_agent
from mbrl.core.memory import keep_freed_memory
from mbrl.core.replay import ReplayBuffer, split_episodes
from mbrl.core.run import RunDir
from mbrl.envs.atari import make_env, make_vector_env
from mbrl.envs.dream import DreamVectorEnv
from mbrl.envs.registration import load_world_model
from mbrl.eval_world_model import IN_PLAY, in_play
from mbrl.evaluate import eval_env_config, evaluate_agent
from mbrl.run_config import RunConfig, resolve_config
from mbrl.world_models.jepa import JEPAWorldModel
from mbrl.world_models.latent_cache import LatentCache

RESULT = HERE / "results" / "dream_gap.json"
RUN_ONLY = ("loop", "dream", "agent", "eval")  # sections taken from the defaults and --set, not from the run


def behaviour(agent: LatentAgent, config: RunConfig, steps: int, seed: int) -> dict[str, Any]:
    """Action shares (and the ball-in-play share where the game has a rule) over `steps` real steps of 4 games."""
    venv = make_vector_env(eval_env_config(config.env, config.eval), 4, 0)
    rule = IN_PLAY.get(config.env.id, {}).get("ball_y")
    counts, ball = np.zeros(agent.world_model.num_actions), []
    try:
        obs, info = venv.reset(seed=seed)
        for _ in range(steps):
            actions, _ = agent.predict(obs)
            obs, _, _, _, info = venv.step(actions)
            counts += np.bincount(actions, minlength=len(counts))
            if rule is not None:
                ball.append(in_play(np.asarray(info["ram"]), rule))
    finally:
        venv.close()
    out: dict[str, Any] = {"action_shares": (counts / counts.sum()).round(3).tolist()}
    if ball:
        out["ball_in_play"] = float(np.mean(ball))
    return out


class EncoderTokens(torch.nn.Module):
    """A JEPA world model seen as all its target encoder's output tokens for one observation: the latent (the
    standardised summary tokens) and the patch tokens, (K + P, dim). Stands in for the world model where
    `LatentVecEnv` and `LatentAgent` read it (`encode`, `latent_shape`, `num_actions`)."""

    def __init__(self, model: JEPAWorldModel) -> None:
        super().__init__()
        self.model, self.num_actions = model, model.num_actions
        self.latent_shape = (model.config.summary_tokens + model.num_patches, model.config.dim)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        tokens = self.model.target(frames.flatten(0, 1))  # (N, K + P, dim)
        k = self.model.config.summary_tokens
        return torch.cat([self.model.standardize(tokens[:, :k]), tokens[:, k:]], dim=1).unflatten(0, frames.shape[:2])


class TokenGrid(BaseFeaturesExtractor):
    """Policy features of `EncoderTokens` observations (K + P, dim) that know their layout: a small CNN over the
    P patch tokens on their square grid (as the patches lie in the frame), next to the K summary tokens.

    Args:
        space: the observation space, shape (K + P, dim).
        summary_tokens: K.
        features: output width.
    """

    def __init__(self, space: gym.spaces.Box, summary_tokens: int, features: int = 256) -> None:
        super().__init__(space, features)
        tokens, dim = space.shape
        self.k, self.side = summary_tokens, math.isqrt(tokens - summary_tokens)
        if self.side ** 2 != tokens - summary_tokens:
            raise ValueError(f"TokenGrid needs a square number of patch tokens, got {tokens - summary_tokens}")
        self.conv = nn.Sequential(nn.Conv2d(dim, 32, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        conv_out = 64 * ((self.side + 1) // 2) ** 2
        self.out = nn.Sequential(nn.Linear(conv_out + summary_tokens * dim, features), nn.ReLU())

    def grid(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, K + P, dim) -> the patch tokens as an image (B, dim, side, side), row-major as the encoder's patches."""
        return obs[:, self.k:].transpose(1, 2).unflatten(2, (self.side, self.side))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.conv(self.grid(obs)), obs[:, : self.k].flatten(1)], dim=1))


def training_env(where: str, run: RunDir, model: Any, config: RunConfig, seed: int) -> VecEnv:
    """The SB3 env the agent learns in: the run's batched dream, or as many real games seen as latents."""
    if where == "real":
        real = dataclasses.replace(config.env, episodic_life=True, clip_rewards=True)
        games = DummyVecEnv([lambda: make_env(real)] * config.loop.dream_envs)
        games.seed(seed)
        return LatentVecEnv(games, model)
    buffer = ReplayBuffer.load(run.replay_dir)
    train_ids, _ = split_episodes(buffer, config.world_model_training.holdout_every)
    dream = DreamVectorEnv(model, buffer, config.loop.dream_envs, dataclasses.replace(config.dream, device="cpu"),
                           seed=seed, episodes=train_ids, latent_cache=LatentCache(model, buffer.stacks))
    return DreamVecEnv(dream)


def with_tables(saved: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, header, notes and table, one row per label."""
    notes = [f"Torch threads {saved['torch_threads']}. A fresh agent (the default `agent` settings, PPO, unless the "
             "row's command sets others) trained only in a run's dream ('learns in' dream) or, for comparison, on "
             "the real game seen through the run's encoder ('real': episodic life and clipped rewards, as in the "
             "dream; its agent steps are real steps; 'all encoder tokens': it sees the patch tokens too), then scored "
             "on full real games (the same evaluation code as every score here); reward per step is the summed "
             "reward over the summed episode lengths (the last 100 training episodes; the real games)."]
    columns = ["row", "learns in", "dream: horizon, reward, ends on", "agent steps", "reward / step while learning",
               "real reward / step", "real score (mean +- std over games)", "real scores after each chunk",
               "action shares by id (Breakout: NOOP, FIRE, RIGHT, LEFT)", "ball in play", "date"]
    rows = []
    for row in saved["rows"]:
        last, dream = row["chunks"][-1], row["dream"]
        where = row["learn_in"] + (", all encoder tokens" if row.get("observe") == "tokens" else "")
        where += ", patch-token grid CNN" if row.get("policy") == "grid" else ""
        rows.append([row["label"], where, f"{dream['horizon']}, {dream['reward']}, {dream['terminate_on']}"
                     if row["learn_in"] == "dream" else "-", last["agent_steps"],
                     f"{last['train_reward_per_step']:.4f}", f"{last['real_reward_per_step']:.4f}",
                     f"{last['real_mean']:.2f} +- {last['real_std']:.2f}",
                     ", ".join(f"{c['real_mean']:.2f}" for c in row["chunks"]),
                     ", ".join(f"{x:.2f}" for x in row["action_shares"]),
                     f"{row['ball_in_play']:.2f}" if "ball_in_play" in row else "-", row["date"]])
    return {**saved, **gathered(saved["rows"], saved.get("unrecorded")), "title": "The dream-to-real gap",
            "notes": notes, "tables": [{"columns": columns, "rows": rows}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run with a trained world model and its replay buffer")
    parser.add_argument("--label", required=True, help="name of the result row (a row with this label is replaced)")
    parser.add_argument("--dream-steps", type=int, default=100_000, help="agent steps, in all")
    parser.add_argument("--learn-in", choices=("dream", "real"), default="dream",
                        help="where the agent learns: the run's dream, or the real game seen through the run's encoder")
    parser.add_argument("--chunks", type=int, default=4, help="real evaluations, after equal shares of the steps")
    parser.add_argument("--episodes", type=int, default=16, help="full real games per evaluation")
    parser.add_argument("--behaviour-steps", type=int, default=1500, help="real steps (x 4 games) for action shares")
    parser.add_argument("--observe", choices=("latent", "tokens"), default="latent",
                        help="what the agent sees with --learn-in real: the latent, or all the JEPA encoder's tokens")
    parser.add_argument("--policy", choices=("mlp", "grid"), default="mlp",
                        help="the agent's network: the config's MLP over the flattened observation, or with "
                             "--observe tokens a small CNN over the patch-token grid (TokenGrid) before it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the dream, agent and eval settings (defaults otherwise)")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does
    torch.set_num_threads(args.threads)

    run = RunDir(Path(args.run))
    base = {k: v for k, v in run.read_config().items() if k not in RUN_ONLY}
    config = resolve_config(None, ["eval.num_workers=0", f"eval.episodes={args.episodes}", *args.set], base)
    device = torch.device("cpu")
    model, _ = load_world_model(run, device)
    if args.observe == "tokens":
        if args.learn_in != "real" or not isinstance(model, JEPAWorldModel):
            parser.error("--observe tokens needs --learn-in real and a JEPA world model")
        summary_tokens = model.config.summary_tokens
        model = EncoderTokens(model)  # type: ignore[assignment]  # stands in for it where it is read
    if args.policy == "grid" and args.observe != "tokens":
        parser.error("--policy grid needs --observe tokens")
    features = (TokenGrid, {"summary_tokens": summary_tokens}) if args.policy == "grid" else None
    learner = build_agent(config.agent, VecMonitor(training_env(args.learn_in, run, model, config, args.seed)),
                          args.seed, device, features)
    agent = LatentAgent(learner, model, device)

    chunks, start = [], time.perf_counter()
    for k in range(1, args.chunks + 1):
        learner.learn(args.dream_steps // args.chunks, reset_num_timesteps=False, progress_bar=False)
        episodes = list(learner.ep_info_buffer or [])  # SB3 keeps the last 100 dream episodes
        real = evaluate_agent(agent, config.env, config.eval, seed=1000 + k, progress=False)
        chunks.append({
            "agent_steps": learner.num_timesteps,
            "train_reward_per_step": sum(e["r"] for e in episodes) / sum(e["l"] for e in episodes),
            "real_mean": real["mean"], "real_std": real["std"],
            "real_reward_per_step": sum(real["scores"]) / sum(real["lengths"]),
            "real_mean_length": float(np.mean(real["lengths"])),
        })
        print(json.dumps(chunks[-1]), file=sys.stderr)
    row = {"label": args.label, "run": args.run, "command": "python -m benchmarks.dream_gap " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "machine": machine(), "learn_in": args.learn_in, "observe": args.observe,
           "policy": args.policy,
           "dream": dataclasses.asdict(config.dream),
           "chunks": chunks,
           **behaviour(agent, config, args.behaviour_steps, seed=7), "minutes": (time.perf_counter() - start) / 60}
    saved = load_result(RESULT, "dream_gap", rows="rows")  # read again: other processes may have added rows
    saved.update(torch_threads=args.threads, rows=[r for r in saved["rows"] if r["label"] != args.label] + [row])
    save_result(with_tables(saved), RESULT)


if __name__ == "__main__":
    main()
