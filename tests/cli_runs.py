"""The `mbrl` command line run as a user runs it: a subprocess, and the one-line user error it must print."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any


def mbrl_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mbrl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not _ale_banner(line)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def _ale_banner(line: str) -> bool:
    return line.startswith("A.L.E:") or line.startswith("[Powered by Stella]")


_KILL_ITSELF = """
import json, os, signal, sys

import mbrl.core.checkpoint as checkpoint
from mbrl.core.replay import ReplayBuffer

name, nth, match = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
seen = 0


def matches(metadata):
    for key, value in match.items():
        found = metadata
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found != value:
            return False
    return True


def count():
    global seen
    seen += 1
    if seen == nth:
        os.kill(os.getpid(), signal.SIGKILL)


if name == "replay":
    flush = ReplayBuffer.flush

    def flush_then_count(self):
        flush(self)
        count()

    ReplayBuffer.flush = flush_then_count
else:
    write = checkpoint.write_atomic

    def write_then_count(path, data):
        write(path, data)
        if path.name == name + ".json" and matches(json.loads(data)["body"]["metadata"]):
            count()

    checkpoint.write_atomic = write_then_count

from mbrl.cli import main

sys.exit(main(sys.argv[4:]))
"""


def mbrl_cli_killed(checkpoint: str, *args: str, nth: int = 1, match: dict[str, Any] | None = None
                    ) -> subprocess.CompletedProcess:
    """`mbrl *args` in a process that SIGKILLs itself right after a chosen point of its progress is on disk: the
    `nth` write of checkpoint `checkpoint` whose metadata holds `match` (dotted keys, e.g. {"progress.step": 3}),
    or with checkpoint "replay" the `nth` replay buffer flush. Its return code is -9 if it got there."""
    code = [sys.executable, "-c", _KILL_ITSELF, checkpoint, str(nth), json.dumps(match or {}), *args]
    return subprocess.run(code, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
