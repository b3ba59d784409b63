"""Progress lines in a log (mbrl.progress): what a line says, when one is written, and `mbrl train-agent` with its
stderr in a file writing them from its first phase on."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mbrl.core.errors import UserError
from mbrl.progress import Progress, interval

LINE = re.compile(r"^mbrl (?P<command>[\w-]+) \[\d+:\d\d:\d\d\] (?P<phase>.+?): "
                  r"(?P<done>[\d,]+)(?:/(?P<total>[\d,]+))? (?P<unit>[a-z ]+?)"
                  r"(?:, (?P<rate>[\d.,]+ [a-z ]+/(?:s|min)))?(?:; (?P<facts>.*))?$")


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_phase_writes_its_line_at_once_and_updates_wait_for_the_interval() -> None:
    out = io.StringIO()
    log = Progress("collect", seconds=3600, stream=out)
    assert log.enabled  # a StringIO is not a terminal
    log.phase("random play", total=1200)
    log.advance(500)
    log.update(900)
    assert lines(out) == ["mbrl collect [0:00:00] random play: 0/1,200 steps"]  # the updates came too soon
    log.phase("world model: encoder", total=3000, unit="updates", done=40)
    assert lines(out)[-1] == "mbrl collect [0:00:00] world model: encoder: 40/3,000 updates"


def test_with_no_interval_every_update_writes_a_line_with_its_rate_and_facts() -> None:
    out = io.StringIO()
    log = Progress("train-agent", seconds=0, stream=out)
    log.keep(real_steps="5,000/100,000")
    log.phase("iteration 1/19: agent in the dream", total=150_000, unit="dream steps")
    log.note(world_model_loss=0.012345, eval_score=None)
    log.update(64)
    match = LINE.match(lines(out)[-1])
    assert match, lines(out)[-1]
    assert (match["command"], match["phase"], match["done"], match["total"], match["unit"]) == (
        "train-agent", "iteration 1/19: agent in the dream", "64", "150,000", "dream steps")
    assert match["rate"] and match["rate"].endswith("dream steps/s")
    assert match["facts"] == "real steps 5,000/100,000, world model loss 0.0123"
    log.phase("iteration 1/19: evaluating", total=10, unit="games")  # a phase's notes end with it, kept facts stay
    assert lines(out)[-1].endswith("evaluating: 0/10 games; real steps 5,000/100,000")


def test_quiet_or_a_terminal_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    log = Progress("plan", enabled=False, seconds=0, stream=out)
    log.phase("playing", total=3, unit="games")
    log.update(1)
    log.write("game 1/3: score 2 in 400 steps; mean so far 2.00")
    assert out.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not Progress.beside_bar("plan", None).enabled  # the bar shows progress there
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert Progress.beside_bar("plan", None).enabled
    assert not Progress.beside_bar("plan", False).enabled  # --quiet


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MBRL_PROGRESS_SECONDS", raising=False)
    assert interval() == 30.0
    monkeypatch.setenv("MBRL_PROGRESS_SECONDS", "0.5")
    assert interval() == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("MBRL_PROGRESS_SECONDS", bad)
        with pytest.raises(UserError, match="MBRL_PROGRESS_SECONDS must be a number of seconds >= 0"):
            interval()


@pytest.mark.slow
def test_train_agent_with_stderr_in_a_file_writes_progress_lines_from_its_first_phase(tmp_path: Path) -> None:
    run, log_path = tmp_path / "run", tmp_path / "log"
    with log_path.open("w") as log:  # stderr is a file, not a terminal: no bar, progress lines instead
        proc = subprocess.run([sys.executable, "-m", "mbrl", "train-agent", "--preset", "smoke", "--run", str(run)],
                              stdout=subprocess.PIPE, stderr=log, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "MBRL_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, log_path.read_text()
    progress = [LINE.match(line) for line in log_path.read_text().splitlines() if line.startswith("mbrl ")]
    assert progress and all(progress), log_path.read_text()
    first = progress[0]
    assert (first["command"], first["phase"], first["done"], first["total"], first["unit"]) == (
        "train-agent", "warm-up: random play", "0", "200", "real steps")
    # lines while the warm-up collects, not only at its end: the log shows the run alive from its first phase
    warm_up = [int(m["done"]) for m in progress if m["phase"] == "warm-up: random play"]
    assert len(warm_up) > 10 and warm_up == sorted(warm_up) and 0 < warm_up[1] < 200 <= warm_up[-1]
    phases = list(dict.fromkeys(m["phase"] for m in progress))
    assert phases == ["warm-up: random play", "world model: encoder", "world model: dynamics",
                      "iteration 1/2: agent plays", "iteration 1/2: world model", "iteration 1/2: agent in the dream",
                      "iteration 1/2: evaluating", "iteration 2/2: agent plays", "iteration 2/2: world model",
                      "iteration 2/2: agent in the dream", "iteration 2/2: evaluating"]
    dream = [m for m in progress if m["phase"] == "iteration 2/2: agent in the dream"]
    assert [dream[0]["done"], dream[-1]["done"], dream[-1]["total"]] == ["128", "256", "256"]
    assert "eval score" in (dream[-1]["facts"] or "")  # iteration 1's score, kept on the later lines
    assert "mean score" in proc.stdout
