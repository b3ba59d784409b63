"""`mbrl evaluate`: full real games with a run's agent or the random policy; `play_and_save` serves `mbrl plan` too."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mbrl.commands.options import (
    GAMES_QUIET_HELP,
    add_device_option,
    add_quiet_option,
    add_set_option,
    positive_int,
    run_path,
    seed_int,
)

if TYPE_CHECKING:
    from mbrl.envs.atari import AtariConfig
    from mbrl.evaluate import EvalConfig

NAME = "evaluate"
HELP = "score a run's agent (or the random policy) on full real games"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        NAME, help=HELP,
        description="Play full games of the run's game (no episodic life, sticky actions, the 108k-frame cap, raw "
        "score) with the agent of a train-agent run, or with the random policy; print mean, median, std and "
        "per-game scores; write them as JSON (rewritten after every finished game, so a killed evaluation keeps its "
        "finished games) and to tensorboard (eval/*).")
    parser.add_argument("--run", type=run_path, required=True, help="run directory")
    parser.add_argument("--episodes", type=positive_int, help="games to play (config eval.episodes)")
    parser.add_argument("--agent", choices=("trained", "random"), default="trained",
                        help="the run's trained agent, or the uniformly random policy (default: trained)")
    parser.add_argument("--deterministic", action="store_true",
                        help="greedy actions instead of sampled ones (config eval.deterministic)")
    parser.add_argument("--gif", type=Path, help="write the first game as a GIF here")
    parser.add_argument("--out", type=Path,
                        help="JSON result path (default: runs/NAME/eval.json, eval-random.json for --agent random)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the games (default 0)")
    add_device_option(parser)
    add_set_option(parser, "eval.sticky_action_prob=0")
    add_quiet_option(parser, GAMES_QUIET_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from mbrl.collect import RandomPolicy
    from mbrl.envs.atari import make_env
    from mbrl.loop import load_trained_agent
    from mbrl.session import config_for_run, existing_run, resolve_device, with_num_actions

    run_dir = existing_run(args.run)  # a one-line error when there is no run there
    flags = {"eval.episodes": args.episodes, "eval.deterministic": True if args.deterministic else None,
             "device": args.device}
    config = config_for_run(run_dir, None, args.set, flags)
    check_outputs(args)
    agent: Any
    if args.agent == "random":
        agent = RandomPolicy(make_env(config.env).action_space, seed=args.seed)
    else:
        agent = load_trained_agent(run_dir, with_num_actions(config), resolve_device(config.device))
    out = Path(args.out or (run_dir.eval_path if args.agent == "trained" else run_dir.path / "eval-random.json"))
    name = args.agent if args.agent == "random" else config.agent.algo
    result = play_and_save(NAME, agent, config.env, config.eval, args.seed, out, {"agent": name}, args.gif,
                           args.quiet)
    with SummaryWriter(str(run_dir.tb_dir)) as writer:
        for key in ("mean", "median", "std"):
            writer.add_scalar(f"eval/{args.agent}/{key}", result[key], run_dir.read_progress().get("replay_steps", 0))
    print(format_scores(result))
    print(f"written to {out}" + (f"; GIF {args.gif}" if args.gif else ""))


def check_outputs(args: argparse.Namespace) -> None:
    """Before any game is played: the --out and --gif files can be written (their directories exist)."""
    from mbrl.core.atomic import check_output_path

    for option in ("out", "gif"):
        if getattr(args, option) is not None:
            check_output_path(getattr(args, option), f"--{option}")


def play_and_save(command: str, agent: Any, env: AtariConfig, config: EvalConfig, seed: int, out: Path,
                  extra: dict[str, Any], gif: Path | None, quiet: bool) -> dict[str, Any]:
    """`evaluate_agent` that rewrites `out` (JSON: the result so far plus `extra`) after every finished game,
    so a killed evaluation keeps its finished games (`complete` says whether all were played), and, when stderr
    is not a terminal (a log file: no progress bar there) unless `quiet`, prints a line per game and progress
    lines of `command` (mbrl.progress)."""
    import json

    from mbrl.core.atomic import write_atomic
    from mbrl.evaluate import evaluate_agent
    from mbrl.progress import Progress

    log = Progress.beside_bar(command, False if quiet else None)

    def save(result: dict[str, Any]) -> None:
        result.update(extra)
        write_atomic(out, json.dumps(result, indent=1).encode())
        log.write(f"game {result['episodes']}/{config.episodes}: score {result['scores'][-1]:g} in "
                  f"{result['lengths'][-1]} steps; mean so far {result['mean']:.2f}")

    log.phase("playing", total=config.episodes, unit="games")
    result = evaluate_agent(agent, env, config, seed, gif_path=gif, progress=False if quiet else None, on_game=save,
                            log=log)
    result.update(extra)
    return result


def format_scores(result: dict[str, Any]) -> str:
    """One line of an evaluation: mean, median, std and the per-game scores."""
    scores = ", ".join(f"{s:g}" for s in result["scores"])
    return (f"{result['env']} [{result['agent']}]: mean {result['mean']:.2f}, median {result['median']:.1f}, "
            f"std {result['std']:.2f} over {result['episodes']} games ({scores})")
