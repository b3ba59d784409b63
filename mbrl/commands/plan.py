"""`mbrl plan`: model-predictive control in a run's world model, scored on full real games."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mbrl.commands.options import (
    GAMES_QUIET_HELP,
    add_device_option,
    add_quiet_option,
    add_set_option,
    positive_int,
    run_path,
    seed_int,
)

NAME = "plan"
HELP = "play the real game with model-predictive control in the run's world model"


def add_parser(sub: Any) -> None:
    from mbrl.agents.planners import PLANNERS

    parser = sub.add_parser(
        NAME, help=HELP,
        description="At every real step, encode the recent frames with the run's world model, search action "
        "sequences in imagination (CEM, MPPI, random shooting, or every sequence of the horizon with tree; all "
        "candidates in one batch; a world model with a value head adds its value at the horizon), act its first "
        "action (drawn from the plan's distribution for the first step; with --set eval.deterministic=true the best "
        "sequence's first action) and keep the shifted plan as the next warm start. Scored with the same code as "
        "mbrl evaluate; writes runs/NAME/plan-PLANNER.json (rewritten after every finished game). Settings live in "
        "the config's mpc section; the options below override them.")
    parser.add_argument("--run", type=run_path, required=True, help="run directory with a trained world model")
    parser.add_argument("--planner", choices=tuple(PLANNERS),
                        help="search method (config mpc.planner); tree scores all A^H sequences (H <= 6 for 4 "
                        "actions)")
    parser.add_argument("--env", help="ALE game id; must be the run's (default: the run's)")
    parser.add_argument("--episodes", type=positive_int, help="full games to play (config eval.episodes)")
    parser.add_argument("--horizon", type=positive_int,
                        help="imagined steps per candidate (config mpc.search.horizon)")
    parser.add_argument("--candidates", type=positive_int,
                        help="candidate sequences per round (config mpc.search.candidates)")
    parser.add_argument("--iterations", type=positive_int, help="search rounds (config mpc.search.iterations)")
    parser.add_argument("--value-from-agent", action="store_true",
                        help="add the run's trained SB3 agent's value of the last imagined latent (sees past the "
                        "horizon); a world model with its own value head (family jepa-value) always adds that one")
    parser.add_argument("--compile", action="store_true",
                        help="compile the world model's imagination (config mpc.compile): a few minutes once on 2 "
                        "CPU cores, then faster plans; for large budgets (e.g. --candidates 512 --horizon 12 "
                        "--iterations 4)")
    parser.add_argument("--gif", type=Path, help="write the first game as a GIF here")
    parser.add_argument("--out", type=Path, help="JSON result path (default: runs/NAME/plan-PLANNER.json)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the games and the planner (default 0)")
    add_device_option(parser)
    add_set_option(parser, "mpc.life_loss_penalty=0")
    add_quiet_option(parser, GAMES_QUIET_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from mbrl.commands.evaluate import check_outputs, format_scores, play_and_save
    from mbrl.loop import load_trained_agent
    from mbrl.session import config_for_run, existing_run, mpc_for_run, resolve_device, with_num_actions

    run_dir = existing_run(args.run)  # a one-line error when there is no run there
    flags = {"env.id": args.env, "mpc.planner": args.planner, "mpc.search.horizon": args.horizon,
             "mpc.search.candidates": args.candidates, "mpc.search.iterations": args.iterations,
             "eval.episodes": args.episodes, "device": args.device, "mpc.compile": args.compile or None}
    config = config_for_run(run_dir, None, args.set, flags)
    check_outputs(args)
    device = resolve_device(config.device)
    trained = load_trained_agent(run_dir, with_num_actions(config), device) if args.value_from_agent else None
    agent = mpc_for_run(run_dir, config, device, args.seed, critic_of=trained)
    search = config.mpc.search
    settings = {"agent": f"mpc-{config.mpc.planner}", "horizon": search.horizon, "candidates": search.candidates,
                "iterations": search.iterations, "value_from_agent": args.value_from_agent,
                "compile": config.mpc.compile}
    out = Path(args.out or run_dir.path / f"plan-{config.mpc.planner}.json")
    result = play_and_save(NAME, agent, config.env, config.eval, args.seed, out, settings, args.gif, args.quiet)
    print(format_scores(result))
    print(f"written to {out}" + (f"; GIF {args.gif}" if args.gif else ""))
