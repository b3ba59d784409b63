"""Progress lines for a log: what a long command is doing, when its stderr is not a terminal.

On a terminal the tqdm bars show progress. In a log file (`2> log`, nohup, CI) there is no bar, so a
long command prints a line at every phase change and then one every 30 seconds: the phase, done/total
and unit, the rate since the previous line, then the facts the command noted, e.g. (from
`mbrl train-agent --preset smoke` with MBRL_PROGRESS_SECONDS=0)

    mbrl train-agent [0:00:03] iteration 1/2: agent in the dream: 16/128 dream steps, 3,371 dream steps/s;
        real steps 251/300

(one line in the log). `--quiet` turns the lines off with the bars. The environment variable
MBRL_PROGRESS_SECONDS sets the interval in seconds (0: a line at every update).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from mbrl.core.errors import UserError

SECONDS_VARIABLE = "MBRL_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


class Progress:
    """Progress lines of one command on `stream` (stderr), when enabled.

    The caller names each phase (`phase`), reports how far it got (`update` / `advance`, cheap enough
    for every step: a line is only written once the interval has passed) and notes facts shown on
    the phase's lines (`note`, e.g. the latest loss) or on every line until changed (`keep`, e.g. the
    latest evaluation score).

    Args:
        command: the subcommand, first on every line (e.g. "train-agent").
        enabled: write lines (None: when `stream` is not a terminal).
        seconds: the interval between lines within a phase (None: $MBRL_PROGRESS_SECONDS, else 30).
        stream: where lines go (None: sys.stderr).

    Raises:
        UserError: MBRL_PROGRESS_SECONDS is not a number >= 0.
    """

    def __init__(self, command: str, enabled: bool | None = None, seconds: float | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.command = command
        self.enabled = not self.stream.isatty() if enabled is None else enabled
        self.seconds = interval() if seconds is None else seconds
        self.name, self.unit, self.done = "", "steps", 0
        self.total: int | None = None
        self.facts: dict[str, str] = {}  # the phase's
        self.kept: dict[str, str] = {}  # every phase's
        self._started = self._last_time = time.monotonic()
        self._last_done = 0

    @classmethod
    def beside_bar(cls, command: str, show_progress: bool | None) -> Progress:
        """The lines that go with a tqdm bar shown when `show_progress` (None: on a terminal): on where the bar
        is not (stderr not a terminal), off when the bar is off by choice (False: `--quiet`) or forced on (True)."""
        return cls(command, enabled=None if show_progress is None else False)

    def phase(self, name: str, total: int | None = None, unit: str = "steps", done: int = 0) -> None:
        """A new phase, `done` of `total` `unit` already done: its line now."""
        self.name, self.total, self.unit, self.done = name, total, unit, done
        self.facts.clear()
        self._line(rate=None)

    def update(self, done: int) -> None:
        """The phase has `done` units done; a line if the interval has passed since the last one."""
        self.done = done
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._last_time
        if elapsed >= self.seconds:
            self._line(rate=(done - self._last_done) / elapsed if elapsed > 0 else None)

    def advance(self, units: int = 1) -> None:
        """`units` more done (see `update`)."""
        self.update(self.done + units)

    def note(self, **facts: str | float | None) -> None:
        """Facts shown on the lines of this phase (underscores in names become spaces; floats get 3 significant
        digits; None drops a fact)."""
        _merge(self.facts, facts)

    def keep(self, **facts: str | float | None) -> None:
        """Facts shown on every line, this phase's and the next ones', until changed (as `note`)."""
        _merge(self.kept, facts)

    def write(self, message: str) -> None:
        """One line as it is (e.g. a finished game), when enabled."""
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def _line(self, rate: float | None) -> None:
        self._last_time, self._last_done = time.monotonic(), self.done
        if not self.enabled:
            return
        seconds = int(self._last_time - self._started)
        parts = [f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "") + f" {self.unit}"]
        if rate is not None:
            parts.append(_rate(rate, self.unit))
        line = f"mbrl {self.command} [{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}] {self.name}: "
        line += ", ".join(parts)
        facts = {**self.kept, **self.facts}
        if facts:
            line += "; " + ", ".join(f"{key} {value}" for key, value in facts.items())
        print(line, file=self.stream, flush=True)


def interval() -> float:
    """Seconds between progress lines: $MBRL_PROGRESS_SECONDS, else 30.

    Raises:
        UserError: the variable is set to something other than a number >= 0.
    """
    text = os.environ.get(SECONDS_VARIABLE)
    if text is None:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UserError(f"{SECONDS_VARIABLE} must be a number of seconds >= 0, got '{text}'")
    return seconds


def _merge(facts: dict[str, str], new: dict[str, str | float | None]) -> None:
    for key, value in new.items():
        name = key.replace("_", " ")
        if value is None:
            facts.pop(name, None)
        else:
            facts[name] = _number(value) if isinstance(value, float) else str(value)


def _rate(per_second: float, unit: str) -> str:
    """A rate, per minute when below one per second."""
    if per_second >= 1 or per_second == 0:
        return f"{_number(per_second)} {unit}/s"
    return f"{_number(per_second * 60)} {unit}/min"


def _number(value: float) -> str:
    """3 significant digits, whole numbers from 100 up (1,234 rather than 1.23e+03)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
