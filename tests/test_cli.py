"""The `mbrl` command line: help, one-line user errors with exit 2, collect -> inspect end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import mbrl
from tests.cli_runs import assert_user_error, mbrl_cli


def test_help_and_version() -> None:
    proc = mbrl_cli("--help")
    assert proc.returncode == 0 and "collect" in proc.stdout and "inspect" in proc.stdout
    proc = mbrl_cli("collect", "--help")
    for option in ("--env", "--steps", "--run", "--num-envs", "--workers", "--seed", "--preset", "--set", "--quiet"):
        assert option in proc.stdout
    proc = mbrl_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"mbrl {mbrl.__version__}"


def test_no_command_prints_help_and_exits_2() -> None:
    proc = mbrl_cli()
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["collect", "--steps", "0", "--run", "x"], r"argument --steps: expected an integer in \[1, \d+\], got 0"),
        (["collect", "--run", "x"], "required: --steps"),
        (["collect", "--steps", "5", "--run", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_command_lines(args: list[str], pattern: str, tmp_path: Path) -> None:
    assert_user_error(mbrl_cli(*args, cwd=tmp_path), pattern)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert_user_error(mbrl_cli("collect", "--env", "NotAnEnv-v0", "--steps", "5", "--run", str(run)),
                      "unknown env id 'NotAnEnv-v0'")
    assert not run.exists(), "a failed command leaves no run directory behind"
    assert_user_error(mbrl_cli("collect", "--env", "CartPole-v1", "--steps", "5", "--run", str(run)), "not an Atari")
    assert_user_error(mbrl_cli("collect", "--steps", "5", "--run", str(run), "--set", "env.nope=1"),
                      r"unknown config key 'env.nope'; valid keys: .*env.frame_size")
    assert_user_error(mbrl_cli("collect", "--steps", "5", "--run", str(run), "--preset", "nosuch"), "unknown preset")
    assert_user_error(mbrl_cli("inspect", "--run", str(tmp_path / "missing")), "no run at")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_user_error(mbrl_cli("collect", "--steps", "5", "--run", str(a_file / "sub")), "cannot create run directory")


@pytest.mark.slow
def test_collect_then_inspect_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    proc = mbrl_cli("collect", "--env", "ALE/Breakout-v5", "--steps", "300", "--run", str(run), "--preset", "smoke",
                    "--set", "env.max_episode_frames=400", "--quiet")
    assert proc.returncode == 0, proc.stderr
    steps, episodes = map(int, re.search(r"collected (\d+) steps, (\d+) episodes", proc.stdout).groups())
    assert 300 <= steps < 302 and episodes >= 2
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["env"]["max_episode_frames"] == 400 and config["collect"]["num_envs"] == 2
    assert list((run / "tb").iterdir()), "tensorboard events were written"
    summary = json.loads(mbrl_cli("inspect", "--run", str(run), "--json").stdout)
    assert (summary["replay_steps"], summary["replay_episodes"]) == (steps, episodes)
    assert summary["bytes_per_frame_pixel"] <= 1.1

    # a second collect appends new streams; another env is refused
    proc = mbrl_cli("collect", "--steps", "100", "--run", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(mbrl_cli("inspect", "--run", str(run), "--json").stdout)
    assert summary["replay_steps"] >= steps + 100 and summary["replay_streams"] == 4
    assert_user_error(mbrl_cli("collect", "--env", "ALE/Pong-v5", "--steps", "5", "--run", str(run)),
                      "was created with env ALE/Breakout-v5")
