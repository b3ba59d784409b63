"""`mbrl collect`: random-policy real play into a run's replay buffer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mbrl.commands.options import QUIET_HELP, add_config_options, add_quiet_option, int_in, positive_int, run_path

NAME = "collect"
HELP = "play the real game with a random policy into a run's replay buffer"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(NAME, help=HELP,
                            description="Play the real game with a random policy and append every step to the "
                            "replay buffer of a run directory (created if missing, appended to if it exists).")
    parser.add_argument("--env", help="ALE game id, e.g. ALE/Breakout-v5 or ALE/Pong-v5 (default: the preset's, "
                        "or the existing run's)")
    parser.add_argument("--steps", type=int_in(1, 1_000_000_000), required=True,
                        help="transitions to collect (all envs together; may overshoot by < num-envs); the replay "
                        "buffer holds them all in memory, so a number whose rows would not fit is refused")
    parser.add_argument("--run", type=run_path, required=True, help="run directory, e.g. runs/demo")
    parser.add_argument("--num-envs", type=positive_int,
                        help="environments stepped together (config collect.num_envs)")
    parser.add_argument("--workers", type=int, help="processes stepping them: -1 one per core, 0 in this process "
                        "(config collect.num_workers)")
    parser.add_argument("--seed", type=int, help="random seed (config seed)")
    add_config_options(parser)
    add_quiet_option(parser, QUIET_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from mbrl.collect import RandomPolicy
    from mbrl.core.config import dump_yaml
    from mbrl.core.memory import check_fits
    from mbrl.core.replay import replay_bytes
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import RAM_SIZE, check_env_id
    from mbrl.progress import Progress
    from mbrl.session import config_for_run, open_replay, real_play

    run_dir = RunDir(args.run)
    flags = {"env.id": args.env, "collect.num_envs": args.num_envs, "collect.num_workers": args.workers,
             "seed": args.seed}
    config = config_for_run(run_dir, args.preset, args.set, flags)
    check_env_id(config.env.id)
    size = config.env.frame_size
    check_fits(f"--steps {args.steps}: the replay buffer",
               replay_bytes(run_dir.replay_dir, (size, size), RAM_SIZE, args.steps + config.collect.num_envs))
    run_dir.create(dump_yaml(config))

    buffer = open_replay(run_dir, config)
    collector, seeds = real_play(config, buffer)  # a later collect into the same run plays new episodes
    policy = RandomPolicy(collector.env.single_action_space, seed=seeds.random_policy())

    def save_progress() -> None:
        run_dir.update_progress(replay_steps=buffer.num_steps, replay_episodes=buffer.num_episodes)

    log = Progress.beside_bar(NAME, False if args.quiet else None)
    log.phase("random play", total=args.steps)
    try:
        stats = collector.run(args.steps, policy, config.replay.flush_every, save_progress,
                              progress=False if args.quiet else None, log=log)
    finally:
        collector.close()
        buffer.close()
    _log_episodes(run_dir.tb_dir, stats, buffer.num_steps)
    score = f", mean score {np.mean(stats.episode_returns):.2f}" if stats.episode_returns else ""
    print(f"collected {stats.steps} steps, {len(stats.episode_returns)} episodes{score} in {stats.seconds:.1f} s "
          f"({stats.steps / max(stats.seconds, 1e-9):.0f} steps/s); {run_dir.replay_dir} holds {buffer.num_steps} "
          f"steps, {buffer.num_episodes} episodes")


def _log_episodes(tb_dir: Path, stats: Any, last_step: int) -> None:
    """Per-episode scores and collection speed to tensorboard (`collect/*`)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as writer:
        step = last_step - stats.steps
        for score, length in zip(stats.episode_returns, stats.episode_lengths):
            step += length
            writer.add_scalar("collect/episode_score", score, step)
            writer.add_scalar("collect/episode_length", length, step)
        writer.add_scalar("collect/steps_per_second", stats.steps / max(stats.seconds, 1e-9), last_step)
