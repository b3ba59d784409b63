"""Command-line options several subcommands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

QUIET_HELP = ("no progress bar on a terminal and no progress lines in a log (when stderr is not a terminal: a line "
              "at each phase and every 30 s; MBRL_PROGRESS_SECONDS sets the seconds)")
GAMES_QUIET_HELP = ("no progress bar on a terminal and no progress lines in a log (when stderr is not a terminal: a "
                    "line per finished game and every 30 s; MBRL_PROGRESS_SECONDS sets the seconds)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (a bad one is argparse's one-line error naming the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got '{text}'") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value

    return parse


seed_int = int_in(0, 2**32 - 1)
"""A seed option's type: numpy's legacy seeding (SB3's) takes [0, 2^32)."""


def run_path(text: str) -> Path:
    """An argparse type for a run directory: a path, not an empty string (which would mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a run directory, got an empty path")
    return Path(text)


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


def add_quiet_option(parser: argparse.ArgumentParser, help: str = QUIET_HELP) -> None:
    parser.add_argument("--quiet", action="store_true", help=help)
