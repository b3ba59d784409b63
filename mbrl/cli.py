"""The `mbrl` console script: one subcommand per user task, each a module of mbrl/commands/.

User errors (bad option, unknown env id, unreadable path, corrupt file) print one line and
exit with status 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import NoReturn

import mbrl
from mbrl.commands import collect, dream, eval_world_model, evaluate, inspect, plan, train_agent, train_world_model
from mbrl.core.errors import UserError
from mbrl.core.memory import keep_freed_memory
from mbrl.progress import interval

COMMANDS: dict[str, ModuleType] = {module.NAME: module for module in (
    collect, train_world_model, eval_world_model, dream, inspect, train_agent, evaluate, plan)}
"""The subcommands in the order `mbrl --help` lists them: name -> module with NAME, HELP, add_parser, run."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: `mbrl --help` and `mbrl SUBCOMMAND --help` document every option.

    Args:
        command: build only this subcommand's options (the others are listed with their help line), as `main`
            does: some options read a registry (planners, SB3 algorithms, training stages) whose module imports
            torch or SB3, which only the command that uses it should wait for. None: every subcommand's.
    """
    parser = _Parser(prog="mbrl", description="Model-based RL for Atari: collect real play, learn world models, "
                     "train agents in the dream.")
    parser.add_argument("--version", action="version", version=f"mbrl {mbrl.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if command is None or name == command:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `mbrl` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    named = next((arg for arg in argv if not arg.startswith("-")), None)  # `mbrl` itself takes no option values
    parser = build_parser(named if named in COMMANDS else "")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        interval()  # a bad MBRL_PROGRESS_SECONDS is refused before any work
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
