"""The `mbrl` console script: one subcommand per user task.

User errors (bad option, unknown env id, unreadable path, corrupt file) print one line and
exit with status 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

import mbrl
from mbrl.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full command line: `mbrl --help` and `mbrl SUBCOMMAND --help` document every option."""
    parser = _Parser(prog="mbrl", description="Model-based RL for Atari: collect real play, learn world models, "
                     "train agents in the dream.")
    parser.add_argument("--version", action="version", version=f"mbrl {mbrl.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    collect = sub.add_parser("collect", help="play the real game with a random policy into a run's replay buffer",
                             description="Play the real game with a random policy and append every step to the "
                             "replay buffer of a run directory (created if missing, appended to if it exists).")
    collect.add_argument("--env", help="ALE game id, e.g. ALE/Breakout-v5 or ALE/Pong-v5 (default: the preset's, "
                         "or the existing run's)")
    collect.add_argument("--steps", type=_positive_int, required=True,
                         help="transitions to collect (all envs together; may overshoot by < num-envs)")
    collect.add_argument("--run", type=Path, required=True, help="run directory, e.g. runs/demo")
    collect.add_argument("--num-envs", type=_positive_int,
                         help="environments stepped together (config collect.num_envs)")
    collect.add_argument("--workers", type=int, help="processes stepping them: -1 one per core, 0 in this process "
                         "(config collect.num_workers)")
    collect.add_argument("--seed", type=int, help="random seed (config seed)")
    _add_config_options(collect)
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    collect.set_defaults(func=cmd_collect)

    inspect = sub.add_parser("inspect", help="summarise a run: config, replay buffer, checkpoints",
                             description="Load a run's replay buffer and print what it holds.")
    inspect.add_argument("--run", type=Path, required=True, help="run directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="breakout",
                        help="config preset: a name from configs/ (e.g. breakout, smoke) or a YAML path; "
                        "ignored when the run exists (its saved config is used)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set env.sticky_action_prob=0.0 (repeatable)")


def cmd_collect(args: argparse.Namespace) -> None:
    """`mbrl collect`: random-policy real play into runs/NAME/replay."""
    from envs.atari import RAM_SIZE, check_env_id, make_vector_env
    from mbrl.collect import Collector, RandomPolicy
    from mbrl.config import dump_yaml
    from mbrl.replay import ReplayBuffer
    from mbrl.run import RunDir
    from mbrl.run_config import resolve_config

    run = RunDir(args.run)
    flags = {"env.id": args.env, "collect.num_envs": args.num_envs, "collect.num_workers": args.workers,
             "seed": args.seed}
    overrides = args.set + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if run.exists():
        saved = run.read_config()
        config = resolve_config(None, overrides, base=saved)
        saved_id = saved.get("env", {}).get("id")
        if saved_id and config.env.id != saved_id:
            raise UserError(f"run {run.path} was created with env {saved_id}, not {config.env.id}")
    else:
        config = resolve_config(args.preset, overrides)
    check_env_id(config.env.id)
    run.create(dump_yaml(config))

    size = config.env.frame_size
    buffer = ReplayBuffer.open(run.replay_dir, (size, size), config.env.frame_stack, RAM_SIZE)
    workers = None if config.collect.num_workers < 0 else config.collect.num_workers
    first_stream = buffer.num_streams  # a later collect into the same run plays new episodes
    env = make_vector_env(config.env, config.collect.num_envs, workers)
    env_seed = int(np.random.SeedSequence([config.seed, first_stream]).generate_state(1)[0])
    collector = Collector(env, buffer, seed=env_seed)
    policy = RandomPolicy(env.single_action_space, seed=[config.seed, first_stream])

    def save_progress() -> None:
        run.update_progress(replay_steps=buffer.num_steps, replay_episodes=buffer.num_episodes)

    try:
        stats = collector.run(args.steps, policy, config.replay.flush_every, save_progress,
                              progress=False if args.quiet else None)
    finally:
        collector.close()
        buffer.close()
    _log_episodes(run.tb_dir, stats, buffer.num_steps)
    score = f", mean score {np.mean(stats.episode_returns):.2f}" if stats.episode_returns else ""
    print(f"collected {stats.steps} steps, {len(stats.episode_returns)} episodes{score} in {stats.seconds:.1f} s "
          f"({stats.steps / max(stats.seconds, 1e-9):.0f} steps/s); {run.replay_dir} holds {buffer.num_steps} steps, "
          f"{buffer.num_episodes} episodes")


def cmd_inspect(args: argparse.Namespace) -> None:
    """`mbrl inspect`: what a run holds."""
    from mbrl.replay import ReplayBuffer
    from mbrl.run import RunDir

    run = RunDir(args.run)
    config = run.read_config()
    buffer = ReplayBuffer.load(run.replay_dir)
    frames = max(len(buffer), 1)
    summary: dict[str, Any] = {
        "run": str(run.path),
        "env": config.get("env", {}).get("id"),
        "replay_steps": buffer.num_steps,
        "replay_episodes": buffer.num_episodes,
        "replay_rows": len(buffer),
        "replay_streams": buffer.num_streams,
        "bytes_per_frame_pixel": buffer.nbytes / frames / (buffer.frame_shape[0] * buffer.frame_shape[1]),
        "checkpoints": sorted(p.stem for p in run.checkpoint_dir.glob("*.json")),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")


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


def main(argv: list[str] | None = None) -> int:
    """Run the `mbrl` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        args.func(args)
    except UserError as exc:
        print(f"mbrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mbrl {args.command}: interrupted; everything flushed so far is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
