"""The `mbrl` console script: one subcommand per user task.

User errors (bad option, unknown env id, unreadable path, corrupt file) print one line and
exit with status 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np

import mbrl
from mbrl.core.errors import UserError
from mbrl.core.memory import keep_freed_memory


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


STAGE_NAMES = ("1", "2", "3", "all")


def positive_int(text: str) -> int:
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
    collect.add_argument("--steps", type=positive_int, required=True,
                         help="transitions to collect (all envs together; may overshoot by < num-envs)")
    collect.add_argument("--run", type=Path, required=True, help="run directory, e.g. runs/demo")
    collect.add_argument("--num-envs", type=positive_int,
                         help="environments stepped together (config collect.num_envs)")
    collect.add_argument("--workers", type=int, help="processes stepping them: -1 one per core, 0 in this process "
                         "(config collect.num_workers)")
    collect.add_argument("--seed", type=int, help="random seed (config seed)")
    add_config_options(collect)
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    collect.set_defaults(func=cmd_collect)

    train_wm = sub.add_parser("train-world-model", help="train the world model on a run's replay buffer",
                              description="Train the run's world model on its replay buffer: stage 1 (self-supervised "
                              "encoder), stage 2 (predictor, reward and termination heads, decoder; encoder frozen), "
                              "stage 3 (everything together, if world_model_training.finetune_steps > 0). Validation "
                              "on held-out episodes, early stopping, tensorboard, checkpoints in the run.")
    train_wm.add_argument("--run", type=Path, required=True, help="run directory with a replay buffer")
    train_wm.add_argument("--stage", choices=sorted(STAGE_NAMES), default="all",
                          help="1 encoder, 2 dynamics, 3 finetune, or all in order (default: all); family "
                          "jepa-value has one joint stage (all)")
    train_wm.add_argument("--steps", type=positive_int,
                          help="updates per stage (default: from the config; jepa-value: the total of joint updates, "
                          "default joint.replay_ratio per stored step past joint.warmup_steps)")
    train_wm.add_argument("--resume", action="store_true",
                          help="continue from the run's world-model checkpoint instead of starting anew")
    train_wm.add_argument("--again", action="store_true",
                          help="with --resume: train the --stage stages again from the checkpoint's weights, those "
                               "it finished too, with a new optimizer (e.g. more dynamics updates under other --set "
                               "values); an interrupted --again run continues with --resume and the same --stage and "
                               "--steps")
    add_device_option(train_wm)
    add_set_option(train_wm, "world_model_training.lr=1e-3")
    train_wm.add_argument("--quiet", action="store_true", help="no progress bar")
    train_wm.set_defaults(func=cmd_train_world_model)

    eval_wm = sub.add_parser("eval-world-model", help="measure the run's world model on held-out episodes",
                             description="RAM probes, open-loop latent error, reward and life-loss detection and "
                             "decoder PSNR of the run's world model on episodes never trained on; prints them and "
                             "writes runs/NAME/world_model_eval.json.")
    eval_wm.add_argument("--run", type=Path, required=True, help="run directory with a trained world model")
    eval_wm.add_argument("--windows", type=positive_int, default=1024, help="held-out windows to score (default 1024)")
    add_device_option(eval_wm)
    eval_wm.set_defaults(func=cmd_eval_world_model)

    dream = sub.add_parser("dream", help="GIF of the world model's imagination next to the real game",
                           description="Pick a held-out window of real play, give the world model its first "
                           "observations, let it imagine the rest under the actions really taken, and write a GIF: "
                           "real frames | decoded imagined frames. Also logged to tensorboard.")
    dream.add_argument("--run", type=Path, required=True, help="run directory with a trained world model")
    dream.add_argument("--steps", type=positive_int, default=60, help="imagined steps (default 60)")
    dream.add_argument("--context", type=positive_int, default=4, help="real observations given first (default 4)")
    dream.add_argument("--out", type=Path, help="GIF path (default: runs/NAME/dream.gif)")
    dream.add_argument("--seed", type=int, default=0, help="picks the window (default 0)")
    dream.add_argument("--agent", action="store_true",
                       help="instead: imagined frames that follow the run's trained agent (from mbrl train-agent), "
                       "acting on imagined latents, restarting from held-out real contexts when an episode ends")
    add_device_option(dream)
    dream.set_defaults(func=cmd_dream)

    inspect = sub.add_parser("inspect", help="summarise a run: config, replay buffer, checkpoints",
                             description="Load a run's replay buffer and print what it holds.")
    inspect.add_argument("--run", type=Path, required=True, help="run directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(func=cmd_inspect)

    from mbrl.cli_agents import add_agent_commands  # the commands that train, score and plan with agents

    add_agent_commands(sub)
    return parser


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N (config device)")


def add_config_options(parser: argparse.ArgumentParser, preset: str = "breakout") -> None:
    parser.add_argument("--preset", default=preset,
                        help=f"config preset: a name from configs/ (e.g. {preset}, smoke) or a YAML path; "
                        f"ignored when the run exists (its saved config is used) (default: {preset})")
    add_set_option(parser, "env.sticky_action_prob=0.0")


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {example} (repeatable)")


def config_for_run(run: Any, preset: str | None, overrides: list[str], flags: dict[str, Any]) -> Any:
    """An existing run's saved config, or the preset's for a new run, with `--set` overrides and flags applied.

    `flags` maps config keys to command-line values (None: not given).

    Raises:
        UserError: a bad preset, key or value, or an env id other than the one the run was created with.
    """
    from mbrl.run_config import resolve_config

    overrides = overrides + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if not run.exists():
        return resolve_config(preset, overrides)
    saved = run.read_config()
    config = resolve_config(None, overrides, base=saved)
    saved_id = saved.get("env", {}).get("id")
    if saved_id and config.env.id != saved_id:
        raise UserError(f"run {run.path} was created with env {saved_id}, not {config.env.id}")
    return config


def cmd_collect(args: argparse.Namespace) -> None:
    """`mbrl collect`: random-policy real play into runs/NAME/replay."""
    from mbrl.collect import Collector, RandomPolicy
    from mbrl.core.config import dump_yaml
    from mbrl.core.replay import ReplayBuffer
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import RAM_SIZE, check_env_id, make_vector_env

    run = RunDir(args.run)
    flags = {"env.id": args.env, "collect.num_envs": args.num_envs, "collect.num_workers": args.workers,
             "seed": args.seed}
    config = config_for_run(run, args.preset, args.set, flags)
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


def cmd_train_world_model(args: argparse.Namespace) -> None:
    """`mbrl train-world-model`: stages of world-model training on the run's buffer."""
    from torch.utils.tensorboard import SummaryWriter

    from mbrl.core.checkpoint import load_checkpoint
    from mbrl.core.config import dump_yaml
    from mbrl.core.replay import ReplayBuffer
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import make_env
    from mbrl.run_config import resolve_config, resolve_device
    from mbrl.train_world_model import CHECKPOINT, STAGES, Trainer, model_config
    from mbrl.world_models.registry import build

    if args.again and not args.resume:  # before the run's config is rewritten or its buffer loaded
        raise UserError("--again trains a trained world model more: pass --resume too")
    run = RunDir(args.run)
    overrides = args.set + ([f"device={args.device}"] if args.device else [])
    config = resolve_config(None, overrides, base=run.read_config())
    device = resolve_device(config.device)
    from mbrl.joint import FAMILY as JOINT_FAMILY

    if config.world_model_training.family == JOINT_FAMILY:
        _train_value_model(run, config, device, args)
        return
    buffer = ReplayBuffer.load(run.replay_dir)
    num_actions = int(make_env(config.env).action_space.n)  # type: ignore[attr-defined]
    config = dataclasses.replace(config, world_model=model_config(config.world_model, num_actions))
    run.create(dump_yaml(config))
    model = build(config.world_model_training.family, config.world_model)
    trainer = Trainer(run, model, buffer, config.world_model_training, device, config.seed)
    if args.resume:
        trainer.restore(load_checkpoint(run.checkpoint_dir, CHECKPOINT))
        if args.again:
            again = STAGES[args.stage]
            trainer.progress.update(done=[d for d in trainer.progress["done"] if d not in again], stage=None, step=0)
    elif (run.checkpoint_dir / f"{CHECKPOINT}.json").exists():
        raise UserError(f"{run.checkpoint_dir} already holds a world model; pass --resume to continue it")
    with SummaryWriter(str(run.tb_dir)) as writer:
        trainer.train(STAGES[args.stage], args.steps, writer, show_progress=False if args.quiet else None)
    val = {stage: trainer.validate(stage)["total"] for stage in trainer.progress["done"]}
    print(f"world model trained ({', '.join(trainer.progress['done'])}) on {len(trainer.train_ids)} episodes; "
          f"held-out loss: {', '.join(f'{k} {v:.4f}' for k, v in val.items())}; "
          f"checkpoint {run.checkpoint_dir / CHECKPOINT}.json")


def _train_value_model(run: Any, config: Any, device: Any, args: argparse.Namespace) -> None:
    """`mbrl train-world-model` for the value-aware JEPA: one joint stage on the stored replay (no acting)."""
    from mbrl.core.config import dump_yaml
    from mbrl.joint import FAMILY, train_offline
    from mbrl.loop import with_num_actions
    from mbrl.train_world_model import CHECKPOINT

    if args.stage != "all":
        raise UserError(f"family {FAMILY} trains in one joint stage; use --stage all (got --stage {args.stage})")
    if not args.resume and (run.checkpoint_dir / f"{CHECKPOINT}.json").exists():
        raise UserError(f"{run.checkpoint_dir} already holds a world model; pass --resume to continue it")
    config = with_num_actions(config)
    run.create(dump_yaml(config))
    updates = train_offline(run, config, device, args.steps, args.resume, show_progress=False if args.quiet else None)
    print(f"world model trained (joint, {updates} updates); checkpoint {run.checkpoint_dir / CHECKPOINT}.json")


def cmd_eval_world_model(args: argparse.Namespace) -> None:
    """`mbrl eval-world-model`: metrics of the trained world model on held-out episodes."""
    from mbrl.core.atomic import write_atomic
    from mbrl.eval_world_model import evaluate

    t = _trained_run(args)
    try:
        result = evaluate(t.model, t.buffer, t.train_ids, t.held_out, t.config.env.id, t.device, windows=args.windows)
    except ValueError as exc:  # held-out episodes too short for the windows
        raise UserError(f"cannot evaluate on {t.run.replay_dir}: {exc}") from None
    out = t.run.path / "world_model_eval.json"
    write_atomic(out, json.dumps(result, indent=1).encode())
    print(format_eval(result))
    print(f"written to {out}")


def format_eval(result: dict[str, Any]) -> str:
    """The eval JSON as a few readable lines."""
    lines = [f"held-out: {result['held_out_episodes']} episodes, {result['windows']} windows, "
             f"context {result['context']} steps"]
    for where, scores in result.get("probes", {}).items():
        lines.append(f"probe R^2 [{where}]: " + ", ".join(f"{k} {v['r2']:.3f}" for k, v in scores.items()))
    for h, d in result["dynamics"].items():
        extra = f", R^2 {d['r2']:.3f}, L1 / copying the last latent {d['l1_vs_copy']:.3f}" if "r2" in d else ""
        lines.append(f"latent [{h}]: L1 {d['l1']:.4f}, cosine {d['cosine']:.3f}{extra}")
    for head in ("reward", "life_loss"):
        lines.append(f"{head}: " + ", ".join(
            f"{h} F1 {d['f1']:.3f} P {d['precision']:.2f} R {d['recall']:.2f} AP {d['average_precision']:.3f} "
            f"({d['positives']} positives; "
            f"mean predicted {d['mean_predicted']:.4f} vs rate {d['actual_rate']:.4f})"
            for h, d in result[head].items()))
    repeated = result["repeated_action"]
    lines.append(f"over {repeated['steps']} imagined steps, reward / life losses: " + ", ".join(
        f"{k} {v['reward']:.3f} / {v['life_loss']:.3f}" for k, v in repeated.items() if k != "steps"))
    lines.append("decoder PSNR dB: " + ", ".join(f"{k} {v:.1f}" for k, v in result["decoder_psnr"].items()))
    return "\n".join(lines)


def cmd_dream(args: argparse.Namespace) -> None:
    """`mbrl dream`: open-loop imagination vs the real game, as a GIF."""
    from torch.utils.tensorboard import SummaryWriter

    from mbrl.dream_video import open_loop
    from mbrl.video import save_gif, side_by_side

    t = _trained_run(args)
    run = t.run
    out = args.out or run.path / ("dream-agent.gif" if args.agent else "dream.gif")
    if args.agent:
        from mbrl.dream_video import agent_dream
        from mbrl.loop import load_trained_agent, with_num_actions

        agent = load_trained_agent(run, with_num_actions(t.config), t.device)
        frames, rewards = agent_dream(t.model, t.buffer, t.held_out, agent.model, args.steps,
                                      dataclasses.replace(t.config.dream, device=str(t.device)), args.seed)
        save_gif(frames, out)
        with SummaryWriter(str(run.tb_dir)) as writer:
            writer.add_images("dream/agent", frames[:: max(1, len(frames) // 8), None], t.checkpoint.step,
                              dataformats="NCHW")
        name = "value" if t.model.has_value else t.config.agent.algo  # a value-aware model's agent is its value head
        print(f"wrote {out}: {len(frames)} imagined frames following the {name} agent; "
              f"dream reward {rewards.sum():g}")
        return
    try:
        real, imagined = open_loop(t.model, t.buffer, t.held_out, args.steps, args.context,
                                   np.random.default_rng(args.seed), t.device)
    except ValueError as exc:
        raise UserError(f"no held-out episode in {run.replay_dir} is long enough: {exc}") from None
    video = side_by_side(real, imagined)
    save_gif(video, out)
    with SummaryWriter(str(run.tb_dir)) as writer:
        writer.add_images("dream/real_vs_imagined", video[:: max(1, len(video) // 8), None], t.checkpoint.step,
                          dataformats="NCHW")
    error = np.abs(real.astype(np.float32) - imagined.astype(np.float32)).mean(axis=(1, 2)) / 255
    print(f"wrote {out}: {len(video)} frames, real | imagined; mean pixel error {error[0]:.3f} at step 1, "
          f"{error[-1]:.3f} at step {len(error)}")


class _TrainedRun(NamedTuple):
    run: Any
    config: Any
    device: Any
    model: Any
    checkpoint: Any
    buffer: Any
    train_ids: np.ndarray
    held_out: np.ndarray


def _trained_run(args: argparse.Namespace) -> _TrainedRun:
    """A run with its trained world model, replay buffer and episode split, for the commands that use them."""
    from mbrl.core.replay import ReplayBuffer, split_episodes
    from mbrl.core.run import RunDir
    from mbrl.envs.registration import load_world_model
    from mbrl.run_config import resolve_config, resolve_device

    run = RunDir(args.run)
    config = resolve_config(None, [f"device={args.device}"] if args.device else [], base=run.read_config())
    device = resolve_device(config.device)
    model, checkpoint = load_world_model(run, device)
    buffer = ReplayBuffer.load(run.replay_dir)
    train_ids, held_out = split_episodes(buffer, config.world_model_training.holdout_every)
    if len(train_ids) == 0 or len(held_out) == 0:
        raise UserError(f"{run.replay_dir} has too few episodes for a held-out split; collect more first")
    return _TrainedRun(run, config, device, model, checkpoint, buffer, train_ids, held_out)


def cmd_inspect(args: argparse.Namespace) -> None:
    """`mbrl inspect`: what a run holds."""
    from mbrl.core.replay import ReplayBuffer
    from mbrl.core.run import RunDir

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
    keep_freed_memory()
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
