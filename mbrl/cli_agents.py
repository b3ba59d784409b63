"""The `mbrl` subcommands that train, score and plan with agents: train-agent, evaluate, plan."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mbrl.cli import add_config_options, add_device_option, add_set_option, config_for_run, positive_int
from mbrl.core.errors import UserError

if TYPE_CHECKING:
    import torch

    from mbrl.agents.mpc import MPCAgent
    from mbrl.agents.sb3_agent import LatentAgent
    from mbrl.agents.value_agent import ValueAgent
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import AtariConfig
    from mbrl.evaluate import EvalConfig
    from mbrl.run_config import RunConfig

ALGO_NAMES = ("ppo", "a2c", "dqn")
PLANNER_NAMES = ("cem", "mppi", "shooting", "tree")  # mbrl.agents.planners.PLANNERS' keys (a test checks), without torch
QUIET_HELP = "no progress bar (on a terminal) or line per finished game (in a log)"


def add_agent_commands(sub: Any) -> None:
    """Add train-agent, evaluate and plan to the `mbrl` subcommand parsers."""
    train = sub.add_parser(
        "train-agent", help="the Dyna loop: real play, world model, agent trained in the dream, real score",
        description="Alternate real play (random at first, then the agent), world-model fitting and agent "
        "training in the batched dream until the real-step budget is spent, scoring the agent on full real games "
        "every few iterations. Writes runs/NAME/eval.json (scores), eval.gif (one game of the final agent), "
        "tb/ (tensorboard) and checkpoints/; a killed run continues with --resume.")
    train.add_argument("--env", help="ALE game id, e.g. ALE/Breakout-v5 (default: the preset's)")
    train.add_argument("--algo", choices=ALGO_NAMES, help="SB3 algorithm trained in the dream (config agent.algo)")
    add_config_options(train, preset="quick")
    train.add_argument("--real-steps", type=positive_int,
                       help="budget of real agent steps, warm-up included (config loop.real_steps)")
    train.add_argument("--run", type=Path, help="new run directory (default: runs/GAME-PRESET-DATE-TIME)")
    train.add_argument("--resume", type=Path, metavar="RUN",
                       help="continue the run in this directory from its last checkpoints (its saved config is used; "
                       "--real-steps and --set still apply)")
    train.add_argument("--seed", type=int, help="random seed (config seed)")
    add_device_option(train)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train_agent)

    evaluate = sub.add_parser(
        "evaluate", help="score a run's agent (or the random policy) on full real games",
        description="Play full games of the run's game (no episodic life, sticky actions, the 108k-frame cap, raw "
        "score) with the agent of a train-agent run, or with the random policy; print mean, median, std and "
        "per-game scores; write them as JSON (rewritten after every finished game, so a killed evaluation keeps its "
        "finished games) and to tensorboard (eval/*).")
    evaluate.add_argument("--run", type=Path, required=True, help="run directory")
    evaluate.add_argument("--episodes", type=positive_int, help="games to play (config eval.episodes)")
    evaluate.add_argument("--agent", choices=("trained", "random"), default="trained",
                          help="the run's trained agent, or the uniformly random policy (default: trained)")
    evaluate.add_argument("--deterministic", action="store_true",
                          help="greedy actions instead of sampled ones (config eval.deterministic)")
    evaluate.add_argument("--gif", type=Path, help="write the first game as a GIF here")
    evaluate.add_argument("--out", type=Path,
                          help="JSON result path (default: runs/NAME/eval.json, eval-random.json for --agent random)")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the games (default 0)")
    add_device_option(evaluate)
    add_set_option(evaluate, "eval.sticky_action_prob=0")
    evaluate.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    evaluate.set_defaults(func=cmd_evaluate)

    plan = sub.add_parser(
        "plan", help="play the real game with model-predictive control in the run's world model",
        description="At every real step, encode the recent frames with the run's world model, search action "
        "sequences in imagination (CEM, MPPI, random shooting, or every sequence of the horizon with tree; all "
        "candidates in one batch; a world model with a value head adds its value at the horizon), act its first "
        "action (drawn from the plan's distribution for the first step; with --set eval.deterministic=true the best "
        "sequence's first action) and keep the shifted plan as the next warm start. Scored with the same code as "
        "mbrl evaluate; writes runs/NAME/plan-PLANNER.json (rewritten after every finished game). Settings live in "
        "the config's mpc section; the options below override them.")
    plan.add_argument("--run", type=Path, required=True, help="run directory with a trained world model")
    plan.add_argument("--planner", choices=PLANNER_NAMES,
                      help="search method (config mpc.planner); tree scores all A^H sequences (H <= 6 for 4 actions)")
    plan.add_argument("--env", help="ALE game id; must be the run's (default: the run's)")
    plan.add_argument("--episodes", type=positive_int, help="full games to play (config eval.episodes)")
    plan.add_argument("--horizon", type=positive_int, help="imagined steps per candidate (config mpc.search.horizon)")
    plan.add_argument("--candidates", type=positive_int,
                      help="candidate sequences per round (config mpc.search.candidates)")
    plan.add_argument("--iterations", type=positive_int, help="search rounds (config mpc.search.iterations)")
    plan.add_argument("--value-from-agent", action="store_true",
                      help="add the run's trained SB3 agent's value of the last imagined latent (sees past the "
                      "horizon); a world model with its own value head (family jepa-value) always adds that one")
    plan.add_argument("--compile", action="store_true",
                      help="compile the world model's imagination (config mpc.compile): a few minutes once on 2 CPU "
                      "cores, then faster plans; for large budgets (e.g. --candidates 512 --horizon 12 --iterations 4)")
    plan.add_argument("--gif", type=Path, help="write the first game as a GIF here")
    plan.add_argument("--out", type=Path, help="JSON result path (default: runs/NAME/plan-PLANNER.json)")
    plan.add_argument("--seed", type=int, default=0, help="seeds the games and the planner (default 0)")
    add_device_option(plan)
    add_set_option(plan, "mpc.life_loss_penalty=0")
    plan.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    plan.set_defaults(func=cmd_plan)


def cmd_train_agent(args: argparse.Namespace) -> None:
    """`mbrl train-agent`: the Dyna loop, new or resumed."""
    from mbrl.core.config import dump_yaml
    from mbrl.core.run import RunDir
    from mbrl.envs.atari import check_env_id
    from mbrl.joint import FAMILY as JOINT_FAMILY
    from mbrl.joint import train_joint
    from mbrl.loop import train_agent, with_num_actions
    from mbrl.run_config import resolve_device

    flags = {"env.id": args.env, "agent.algo": args.algo, "loop.real_steps": args.real_steps, "seed": args.seed,
             "device": args.device}
    if args.resume is not None:
        if args.run is not None and Path(args.run) != Path(args.resume):
            raise UserError("give either --run (a new run) or --resume (an existing one), not both")
        run = RunDir(args.resume)
        run.read_config()  # a one-line error when there is no run there
    else:
        game = (args.env or "ALE/Breakout-v5").split("/")[-1].split("-")[0].lower()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = RunDir(args.run or Path("runs") / f"{game}-{Path(args.preset).stem}-{stamp}")
        if run.exists():
            raise UserError(f"{run.path} already holds a run; continue it with --resume {run.path} "
                            f"or choose another --run")
    config = config_for_run(run, args.preset, args.set, flags)
    check_env_id(config.env.id)
    config = with_num_actions(config)
    run.create(dump_yaml(config))
    print(f"run directory: {run.path} (continue it after an interruption with: mbrl train-agent --resume {run.path})",
          flush=True)
    train = train_joint if config.world_model_training.family == JOINT_FAMILY else train_agent
    result = train(run, config, resolve_device(config.device), resume=args.resume is not None,
                   show_progress=False if args.quiet else None)
    learnt = (f"{result['updates']} joint updates" if train is train_joint else f"{result['dream_steps']} dream steps")
    print(f"{config.env.id}: mean score {result['mean']:.2f} +- {result['std']:.2f} over {result['episodes']} "
          f"games after {result['real_steps']} real steps and {learnt}")
    print(f"scores: {run.eval_path}; one game of the agent: {run.path / 'eval.gif'}; "
          f"tensorboard: tensorboard --logdir {run.tb_dir}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """`mbrl evaluate`: full real games with the run's agent or the random policy."""
    from torch.utils.tensorboard import SummaryWriter

    from mbrl.collect import RandomPolicy
    from mbrl.core.run import RunDir
    from mbrl.loop import load_trained_agent, with_num_actions
    from mbrl.run_config import resolve_device

    run = RunDir(args.run)
    run.read_config()  # a one-line error when there is no run there
    flags = {"eval.episodes": args.episodes, "eval.deterministic": True if args.deterministic else None,
             "device": args.device}
    config = config_for_run(run, None, args.set, flags)
    agent: Any
    if args.agent == "random":
        from mbrl.envs.atari import make_env

        agent = RandomPolicy(make_env(config.env).action_space, seed=args.seed)
    else:
        agent = load_trained_agent(run, with_num_actions(config), resolve_device(config.device))
    out = Path(args.out or (run.eval_path if args.agent == "trained" else run.path / "eval-random.json"))
    name = args.agent if args.agent == "random" else config.agent.algo
    result = play_and_save(agent, config.env, config.eval, args.seed, out, {"agent": name}, args.gif, args.quiet)
    with SummaryWriter(str(run.tb_dir)) as writer:
        for key in ("mean", "median", "std"):
            writer.add_scalar(f"eval/{args.agent}/{key}", result[key], run.read_progress().get("replay_steps", 0))
    print(format_scores(result))
    print(f"written to {out}" + (f"; GIF {args.gif}" if args.gif else ""))


def play_and_save(agent: Any, env: AtariConfig, config: EvalConfig, seed: int, out: Path, extra: dict[str, Any],
                  gif: Path | None, quiet: bool) -> dict[str, Any]:
    """`evaluate_agent` that rewrites `out` (JSON: the result so far plus `extra`) after every finished game,
    so a killed evaluation keeps its finished games (`complete` says whether all were played), and prints a
    line per game when stderr is not a terminal (a log file: no progress bar there) unless `quiet`."""
    from mbrl.core.atomic import write_atomic
    from mbrl.evaluate import evaluate_agent

    def save(result: dict[str, Any]) -> None:
        result.update(extra)
        write_atomic(out, json.dumps(result, indent=1).encode())
        if not quiet and not sys.stderr.isatty():
            print(f"game {result['episodes']}/{config.episodes}: score {result['scores'][-1]:g} in "
                  f"{result['lengths'][-1]} steps; mean so far {result['mean']:.2f}", file=sys.stderr, flush=True)

    result = evaluate_agent(agent, env, config, seed, gif_path=gif, progress=False if quiet else None, on_game=save)
    result.update(extra)
    return result


def format_scores(result: dict[str, Any]) -> str:
    """One line of an evaluation: mean, median, std and the per-game scores."""
    scores = ", ".join(f"{s:g}" for s in result["scores"])
    return (f"{result['env']} [{result['agent']}]: mean {result['mean']:.2f}, median {result['median']:.1f}, "
            f"std {result['std']:.2f} over {result['episodes']} games ({scores})")


def cmd_plan(args: argparse.Namespace) -> None:
    """`mbrl plan`: MPC with the run's world model on full real games."""
    from mbrl.core.run import RunDir
    from mbrl.loop import load_trained_agent, with_num_actions
    from mbrl.run_config import resolve_device

    run = RunDir(args.run)
    run.read_config()  # a one-line error when there is no run there
    flags = {"env.id": args.env, "mpc.planner": args.planner, "mpc.search.horizon": args.horizon,
             "mpc.search.candidates": args.candidates, "mpc.search.iterations": args.iterations,
             "eval.episodes": args.episodes, "device": args.device, "mpc.compile": args.compile or None}
    config = config_for_run(run, None, args.set, flags)
    device = resolve_device(config.device)
    trained = load_trained_agent(run, with_num_actions(config), device) if args.value_from_agent else None
    agent = mpc_for_run(run, config, device, args.seed, critic_of=trained)
    search = config.mpc.search
    settings = {"agent": f"mpc-{config.mpc.planner}", "horizon": search.horizon, "candidates": search.candidates,
                "iterations": search.iterations, "value_from_agent": args.value_from_agent,
                "compile": config.mpc.compile}
    out = Path(args.out or run.path / f"plan-{config.mpc.planner}.json")
    result = play_and_save(agent, config.env, config.eval, args.seed, out, settings, args.gif, args.quiet)
    print(format_scores(result))
    print(f"written to {out}" + (f"; GIF {args.gif}" if args.gif else ""))


def mpc_for_run(run: RunDir, config: RunConfig, device: torch.device, seed: int,
                critic_of: LatentAgent | ValueAgent | None = None) -> MPCAgent:
    """`mbrl plan`'s MPC agent: the run's world model and `config.mpc`; given the run's trained agent
    (`load_trained_agent`), its world model (the same checkpoint) and its critic as terminal value."""
    from mbrl.agents.mpc import MPCAgent
    from mbrl.agents.sb3_agent import LatentAgent, value_function
    from mbrl.envs.registration import load_world_model

    if critic_of is None:
        model = load_world_model(run, device)[0]
        return MPCAgent(model, config.mpc, device, seed=seed, value_fn=model.value if model.has_value else None)
    if not isinstance(critic_of, LatentAgent):
        raise UserError("--value-from-agent needs an SB3 agent; a jepa-value run's planner uses its own value already")
    return MPCAgent(critic_of.world_model, config.mpc, device, seed=seed, value_fn=value_function(critic_of.model))
