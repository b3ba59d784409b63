"""A copy of a run whose world model has also seen good play: is the dream short of data or of model?

Copies the run directory (config, checkpoints, replay buffer; not its tensorboard logs) to `--out`,
lets a teacher that plays from pixels (the 100k benchmark's SB3 PPO CNN, as in latent_distill)
add `--teacher-steps` real steps to the copy's replay buffer (sampled actions, a random one with
probability `--epsilon`; the run's env settings, as the loop collects), then
gives the copy's world model `--updates` more stage-2 updates (predictor, heads, decoder; the encoder
and so the latent stay as they were) on the grown buffer, as a Dyna iteration does. With
`--teacher-steps 0` it is the control: the same updates on the run's own data.

Then `python -m benchmarks.studies.latent_distill.latent_distill --run OUT --dream-steps N` shows whether
the dream now tells a good player from a random one. The run's own data comes from the random policy
and weak agents, whose paddles seldom meet the ball; a world model that ranks policies once it has seen
good play is short of data (exploration), one that still does not is short of model.

    python -m benchmarks.studies.latent_distill.teacher_data --run runs/NAME --teacher runs/bench/ppo-s0 \
        --out runs/NAME_teacher
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.utils.tensorboard import SummaryWriter

from benchmarks.breakout_100k import ppo_baseline
from mbrl.collect import Collector
from mbrl.core.checkpoint import load_checkpoint
from mbrl.core.memory import keep_freed_memory
from mbrl.core.replay import ReplayBuffer
from mbrl.core.run import RunDir
from mbrl.envs.atari import RAM_SIZE, make_env, make_vector_env
from mbrl.run_config import resolve_config
from mbrl.train_world_model import CHECKPOINT, Trainer
from mbrl.world_models.registry import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a run with a trained world model")
    parser.add_argument("--teacher", required=True, type=Path,
                        help="checkpoint directory of benchmarks.breakout_100k's PPO (runs/bench/ppo-sSEED)")
    parser.add_argument("--out", required=True, type=Path, help="the new run directory (must not exist)")
    parser.add_argument("--teacher-steps", type=int, default=20_000, help="real steps the teacher adds (0: control)")
    parser.add_argument("--updates", type=int, default=900, help="stage-2 updates on the grown buffer")
    parser.add_argument("--epsilon", type=float, default=0.05, help="probability of a random action while playing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if not (args.run / "checkpoints" / f"{CHECKPOINT}.json").exists():
        parser.error(f"{args.run} has no world-model checkpoint")
    if not (args.teacher / "ppo.json").exists():
        parser.error(f"no PPO checkpoint in {args.teacher} (expected {args.teacher / 'ppo.json'})")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new directory")

    start = time.perf_counter()
    shutil.copytree(args.run, args.out, ignore=shutil.ignore_patterns("tb"))  # a real copy: the buffer grows
    run = RunDir(args.out)
    config = resolve_config(None, [], run.read_config())
    size = config.env.frame_size
    with ReplayBuffer.open(run.replay_dir, (size, size), config.env.frame_stack, RAM_SIZE) as buffer:
        before = buffer.num_steps
        played: list[float] = []
        if args.teacher_steps:
            teacher = ppo_baseline(DummyVecEnv([lambda: make_env(config.env)]), args.seed, args.teacher)
            rng = np.random.default_rng(args.seed)
            num_actions = int(teacher.action_space.n)  # type: ignore[attr-defined]

            def play(obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
                actions = np.asarray(teacher.predict(obs, deterministic=False)[0])
                explore = rng.random(len(actions)) < args.epsilon
                return np.where(explore, rng.integers(0, num_actions, len(actions)), actions)

            collector = Collector(make_vector_env(config.env, config.collect.num_envs, 0), buffer, seed=args.seed)
            try:
                stats = collector.run(args.teacher_steps, play, config.replay.flush_every)
                played = [float(score) for score in stats.episode_returns]
            finally:
                collector.close()
        added = buffer.num_steps - before

        model = build(config.world_model_training.family, config.world_model)
        trainer = Trainer(run, model, buffer, config.world_model_training, torch.device("cpu"), args.seed)
        trainer.restore(load_checkpoint(run.checkpoint_dir, CHECKPOINT))
        trainer.refresh_split()
        with SummaryWriter(str(run.tb_dir)) as writer:
            losses = trainer.run_updates("dynamics", args.updates, writer)
        trainer.save()
    summary = {"run": str(args.run), "teacher": str(args.teacher), "out": str(args.out),
               "command": "python -m benchmarks.studies.latent_distill.teacher_data " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "steps_before": before, "teacher_steps": added,
               "teacher_episode_returns": played, "updates": args.updates, "epsilon": args.epsilon,
               "last_losses": losses, "minutes": (time.perf_counter() - start) / 60}
    (args.out / "teacher_data.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
