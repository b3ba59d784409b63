"""`mbrl train-agent`: the Dyna loop (mbrl/loop.py) or, for the value-aware JEPA, the joint loop (mbrl/joint.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mbrl.commands.options import QUIET_HELP, add_config_options, add_device_option, add_quiet_option, run_path

NAME = "train-agent"
HELP = "the Dyna loop: real play, world model, agent trained in the dream, real score"


def add_parser(sub: Any) -> None:
    from mbrl.agents.sb3_agent import ALGOS

    parser = sub.add_parser(
        NAME, help=HELP,
        description="Alternate real play (random at first, then the agent), world-model fitting and agent "
        "training in the batched dream until the real-step budget is spent, scoring the agent on full real games "
        "every few iterations. Writes runs/NAME/eval.json (scores), eval.gif (one game of the final agent), "
        "tb/ (tensorboard) and checkpoints/; a killed run continues with --resume.")
    parser.add_argument("--env", help="ALE game id, e.g. ALE/Breakout-v5 (default: the preset's)")
    parser.add_argument("--algo", choices=tuple(ALGOS), help="SB3 algorithm trained in the dream (config agent.algo)")
    add_config_options(parser, preset="quick")
    parser.add_argument("--real-steps", type=int,
                        help="budget of real agent steps, warm-up included (config loop.real_steps); the replay "
                        "buffer holds them all in memory, so a budget whose rows would not fit is refused")
    parser.add_argument("--run", type=run_path, help="new run directory (default: runs/GAME-PRESET-DATE-TIME)")
    parser.add_argument("--resume", type=run_path, metavar="RUN",
                        help="continue the run in this directory from its last checkpoints (its saved config is "
                        "used; --real-steps and --set still apply)")
    parser.add_argument("--seed", type=int, help="random seed (config seed)")
    add_device_option(parser)
    add_quiet_option(parser, QUIET_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import time

    from mbrl.core.config import dump_yaml
    from mbrl.core.errors import UserError
    from mbrl.core.memory import check_fits
    from mbrl.core.replay import replay_bytes
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import RAM_SIZE, check_env_id
    from mbrl.joint import FAMILY as JOINT_FAMILY
    from mbrl.joint import train_joint
    from mbrl.loop import train_agent
    from mbrl.session import check_world_model_fits, config_for_run, existing_run, resolve_device, with_num_actions

    flags = {"env.id": args.env, "agent.algo": args.algo, "loop.real_steps": args.real_steps, "seed": args.seed,
             "device": args.device}
    if args.resume is not None:
        if args.run is not None and Path(args.run) != Path(args.resume):
            raise UserError("give either --run (a new run) or --resume (an existing one), not both")
        run_dir = existing_run(args.resume)  # a one-line error when there is no run there
    else:
        game = (args.env or "ALE/Breakout-v5").split("/")[-1].split("-")[0].lower()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = RunDir(args.run or Path("runs") / f"{game}-{Path(args.preset).stem}-{stamp}")
        if run_dir.exists():
            raise UserError(f"{run_dir.path} already holds a run; continue it with --resume {run_dir.path} "
                            f"or choose another --run")
    config = config_for_run(run_dir, args.preset, args.set, flags)
    check_env_id(config.env.id)
    size, budget = config.env.frame_size, config.loop.real_steps
    check_fits(f"loop.real_steps {budget}: the replay buffer",
               replay_bytes(run_dir.replay_dir, (size, size), RAM_SIZE, budget + config.collect.num_envs))
    config = with_num_actions(config)
    check_world_model_fits(config)
    run_dir.create(dump_yaml(config))
    print(f"run directory: {run_dir.path} (continue it after an interruption with: mbrl train-agent --resume "
          f"{run_dir.path})", flush=True)
    train = train_joint if config.world_model_training.family == JOINT_FAMILY else train_agent
    result = train(run_dir, config, resolve_device(config.device), resume=args.resume is not None,
                   show_progress=False if args.quiet else None)
    learnt = (f"{result['updates']} joint updates" if train is train_joint else f"{result['dream_steps']} dream steps")
    print(f"{config.env.id}: mean score {result['mean']:.2f} +- {result['std']:.2f} over {result['episodes']} "
          f"games after {result['real_steps']} real steps and {learnt}")
    print(f"scores: {run_dir.eval_path}; one game of the agent: {run_dir.path / 'eval.gif'}; "
          f"tensorboard: tensorboard --logdir {run_dir.tb_dir}")
