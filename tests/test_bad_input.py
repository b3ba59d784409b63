"""Bad input, refused: every kind of bad option, config value, path and size, a corrupt replay buffer and a forged
checkpoint end in exit status 2 and one line on stderr that names the problem and its value, with no traceback and
nothing written to the run directory, before any large allocation.

The table runs `mbrl.cli.main` in this process (fast); the cases that must show a refusal under a small address-space
limit (RLIMIT_AS), or the absence of tracebacks from worker processes, run as subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mbrl.cli import main
from mbrl.core.checkpoint import CheckpointError, CheckpointHeader, load_checkpoint, open_checkpoint
from mbrl.core.errors import UserError
from mbrl.core.memory import memory_limit
from mbrl.core.replay import FIRST, TERMINATED, ReplayBuffer, record_dtype
from mbrl.core.run import RunDir
from mbrl.envs import registration
from mbrl.envs.registration import load_world_model
from tests.toys import make_run

GiB = 1 << 30


# ---- the table ----------------------------------------------------------------------------------------------------

# (argv, pattern the one stderr line must match). "{run}" is a run with a replay buffer and a trained world model,
# "{new}" a path where no run exists (it must still not exist after), "{file}" a plain file, "{dir}" a directory.
COLLECT = ["collect", "--steps", "10", "--run", "{new}", "--quiet"]
TRAIN_AGENT = ["train-agent", "--preset", "smoke", "--run", "{new}", "--quiet"]
TRAIN_WM = ["train-world-model", "--run", "{run}", "--quiet"]
EVALUATE = ["evaluate", "--run", "{run}", "--quiet"]
PLAN = ["plan", "--run", "{run}", "--quiet"]
DREAM = ["dream", "--run", "{run}"]
EVAL_WM = ["eval-world-model", "--run", "{run}"]
HUGE_MODEL = [arg for size in ("dim=4096", "depth=64", "jepa_predictor_depth=64", "predictor_dim=4096",
                                "predictor_depth=64", "summary_tokens=64") for arg in ("--set", f"world_model.{size}")]
"""Every size inside its range, the whole beyond a machine's memory (54 billion parameters, 862 GB to train)."""


def out_of(key: str, interval: str, value: str) -> str:
    """The one-line message of a config value outside its range."""
    return re.escape(f"config key '{key}' expects a value in {interval}, got {value}")


def argument(option: str, expected: str, value: str) -> str:
    """argparse's one-line message of a bad option value."""
    return re.escape(f"argument {option}: expected {expected}, got {value}")


CASES: list[tuple[list[str], str]] = [
    # numbers out of range, on the command line and through --set
    ([*COLLECT, "--seed", "-1"], out_of("seed", "[0, 4_294_967_295]", "-1")),
    ([*COLLECT, "--seed", "4294967296"], out_of("seed", "[0, 4_294_967_295]", "4294967296")),
    ([*COLLECT, "--set", "replay.flush_every=0"], out_of("replay.flush_every", "[1, 1_000_000]", "0")),
    ([*COLLECT, "--num-envs", "0"], argument("--num-envs", "a positive integer", "0")),
    ([*COLLECT, "--num-envs", "-3"], argument("--num-envs", "a positive integer", "-3")),
    ([*COLLECT, "--set", "collect.num_envs=0"], out_of("collect.num_envs", "[1, 256]", "0")),
    ([*COLLECT, "--set", "collect.num_envs=-4"], out_of("collect.num_envs", "[1, 256]", "-4")),
    ([*COLLECT, "--workers", "-2"], out_of("collect.num_workers", "[-1, 256]", "-2")),
    ([*COLLECT, "--set", "env.frame_size=0"], out_of("env.frame_size", "[8, 256]", "0")),
    ([*COLLECT, "--set", "env.frame_stack=0"], out_of("env.frame_stack", "[1, 16]", "0")),
    ([*COLLECT, "--set", "env.frame_skip=0"], out_of("env.frame_skip", "[1, 64]", "0")),
    ([*COLLECT, "--set", "env.frame_skip=-1"], out_of("env.frame_skip", "[1, 64]", "-1")),
    ([*COLLECT, "--set", "env.sticky_action_prob=7"], out_of("env.sticky_action_prob", "[0, 1]", "7.0")),
    ([*COLLECT, "--set", "env.sticky_action_prob=-0.1"], out_of("env.sticky_action_prob", "[0, 1]", "-0.1")),
    ([*COLLECT, "--set", "env.sticky_action_prob=nan"], out_of("env.sticky_action_prob", "[0, 1]", "nan")),
    ([*COLLECT, "--set", "env.noop_max=-1"], out_of("env.noop_max", "[0, 10_000]", "-1")),
    ([*COLLECT, "--set", "env.max_episode_frames=0"], out_of("env.max_episode_frames", "[1, 10_000_000]", "0")),
    ([*COLLECT[:2], "0", *COLLECT[3:]], argument("--steps", "an integer in [1, 1000000000]", "0")),
    ([*TRAIN_AGENT, "--seed", "-7"], out_of("seed", "[0, 4_294_967_295]", "-7")),
    ([*TRAIN_AGENT, "--real-steps", "-5"], out_of("loop.real_steps", "[1, 100_000_000]", "-5")),
    ([*TRAIN_AGENT, "--set", "loop.dream_envs=0"], out_of("loop.dream_envs", "[1, 4096]", "0")),
    ([*TRAIN_AGENT, "--set", "loop.collect_epsilon=2"], out_of("loop.collect_epsilon", "[0, 1]", "2.0")),
    ([*TRAIN_AGENT, "--set", "loop.warmup_steps=400"], re.escape("loop.warmup_steps must be in (0, real_steps = 300]")),
    ([*TRAIN_AGENT, "--set", "agent.batch_size=0"], out_of("agent.batch_size", "[1, 65_536]", "0")),
    ([*TRAIN_AGENT, "--set", "agent.hidden=0"], out_of("agent.hidden", "[1, 8192]", "0")),
    ([*TRAIN_AGENT, "--set", "agent.gamma=1.5"], out_of("agent.gamma", "[0, 1]", "1.5")),
    ([*TRAIN_AGENT, "--set", "agent.learning_rate=0"], out_of("agent.learning_rate", "(0, 1]", "0.0")),
    ([*TRAIN_AGENT, "--set", "eval.episodes=0"], out_of("eval.episodes", "[1, 100_000]", "0")),
    ([*TRAIN_AGENT, "--set", "eval.sticky_action_prob=7"], out_of("eval.sticky_action_prob", "[0, 1]", "7.0")),
    ([*TRAIN_AGENT, "--set", "dream.horizon=0"], out_of("dream.horizon", "[1, 100_000]", "0")),
    ([*TRAIN_AGENT, "--set", "dream.termination_threshold=2"],
     out_of("dream.termination_threshold", "[0, 1]", "2.0")),
    ([*TRAIN_AGENT, "--set", "mpc.search.candidates=0"], out_of("mpc.search.candidates", "[1, 4096]", "0")),
    ([*TRAIN_AGENT, "--set", "mpc.search.elite_fraction=0"], out_of("mpc.search.elite_fraction", "(0, 1]", "0.0")),
    ([*TRAIN_AGENT, "--set", "joint.replay_ratio=0"], out_of("joint.replay_ratio", "(0, 1000]", "0.0")),
    ([*TRAIN_AGENT, "--set", "joint.batch_size=0"], out_of("joint.batch_size", "[1, 4096]", "0")),
    ([*TRAIN_AGENT, "--set", "world_model.dim=0"], out_of("world_model.dim", "[8, 4096]", "0")),
    ([*TRAIN_AGENT, "--set", "world_model.depth=0"], out_of("world_model.depth", "[1, 64]", "0")),
    ([*TRAIN_AGENT, "--set", "world_model.patch=7"],
     re.escape("world_model.patch 7 must be a power of 2 that divides frame_size 64")),
    ([*TRAIN_AGENT, "--set", "world_model.patch=12"],
     re.escape("world_model.patch 12 must be a power of 2 that divides frame_size 64")),
    ([*TRAIN_AGENT, "--set", "world_model.heads=3"], re.escape("world_model.dim 32 must split into 3 heads")),
    ([*TRAIN_AGENT, "--set", "world_model.mask_ratio=1"], out_of("world_model.mask_ratio", "[0, 1)", "1.0")),
    ([*TRAIN_AGENT, "--set", "world_model.head=huge"],
     re.escape("config key 'world_model.head' was removed: the code always behaves as head='standardized' now")),
    ([*TRAIN_AGENT, "--set", "world_model_training.batch_size=0"],
     out_of("world_model_training.batch_size", "[1, 4096]", "0")),
    ([*TRAIN_AGENT, "--set", "world_model_training.family=nope"],
     re.escape("world_model_training.family must be one of jepa, jepa-value, got 'nope'")),
    ([*TRAIN_AGENT, "--set", "value_model.frame_size=20"], out_of("value_model.frame_size", "[36, 256]", "20")),
    ([*TRAIN_AGENT, "--set", "env.frame_size=48"],
     re.escape("world_model.frame_size 64 differs from env.frame_size 48: the jepa world model reads the env's")),
    ([*TRAIN_AGENT, "--set", "world_model_training.family=jepa-value", "--set", "value_model.frame_stack=2"],
     re.escape("value_model.frame_stack 2 differs from env.frame_stack 4: the jepa-value world model reads")),
    ([*TRAIN_AGENT, "--set", "value_model.channels=[8, 0, 8]"],
     out_of("value_model.channels", "[1, 1024]", "(8, 0, 8)")),
    ([*TRAIN_WM, "--set", "world_model_training.seq_len=0"], out_of("world_model_training.seq_len", "[1, 256]", "0")),
    ([*TRAIN_WM, "--set", "world_model_training.holdout_every=1"],
     out_of("world_model_training.holdout_every", "[2, 1_000_000]", "1")),
    ([*TRAIN_WM, "--set", "world_model_training.lr=-1"], out_of("world_model_training.lr", "(0, 1]", "-1.0")),
    ([*TRAIN_WM, "--set", "world_model.predictor_dim=0"], out_of("world_model.predictor_dim", "[8, 4096]", "0")),
    ([*TRAIN_WM, "--steps", "0"], argument("--steps", "an integer in [1, 1000000000]", "0")),
    ([*EVALUATE, "--episodes", "0"], argument("--episodes", "a positive integer", "0")),
    ([*EVALUATE, "--set", "eval.episodes=1000000"], out_of("eval.episodes", "[1, 100_000]", "1000000")),
    ([*EVALUATE, "--set", "eval.num_envs=0"], out_of("eval.num_envs", "[1, 256]", "0")),
    ([*EVALUATE, "--set", "eval.num_envs=100000"], out_of("eval.num_envs", "[1, 256]", "100000")),
    ([*EVALUATE, "--seed", "-1"], argument("--seed", "an integer in [0, 4294967295]", "-1")),
    ([*PLAN, "--horizon", "100"], out_of("mpc.search.horizon", "[1, 64]", "100")),
    ([*PLAN, "--candidates", "100000"], out_of("mpc.search.candidates", "[1, 4096]", "100000")),
    ([*PLAN, "--iterations", "0"], argument("--iterations", "a positive integer", "0")),
    ([*PLAN, "--set", "mpc.discount=0"], out_of("mpc.discount", "(0, 1]", "0.0")),
    ([*PLAN, "--set", "mpc.context=0"], out_of("mpc.context", "[1, 1024]", "0")),
    ([*PLAN, "--seed", "-1"], argument("--seed", "an integer in [0, 4294967295]", "-1")),
    ([*DREAM, "--seed", "-1"], argument("--seed", "an integer in [0, 4294967295]", "-1")),
    ([*DREAM, "--steps", "0"], argument("--steps", "an integer in [1, 10000]", "0")),
    ([*DREAM, "--context", "0"], argument("--context", "an integer in [1, 1024]", "0")),
    ([*EVAL_WM, "--windows", "0"], argument("--windows", "an integer in [1, 4096]", "0")),
    # valid but huge: refused up front, with the limit (and the memory estimate where the size is the work's)
    ([*COLLECT[:2], "1000000000000", *COLLECT[3:]],
     argument("--steps", "an integer in [1, 1000000000]", "1000000000000")),
    ([*COLLECT[:2], "900000000", *COLLECT[3:]],
     r"--steps 900000000: the replay buffer would need 3\.\d TB of memory; this machine allows "),
    ([*COLLECT, "--num-envs", "100000"], out_of("collect.num_envs", "[1, 256]", "100000")),
    ([*TRAIN_AGENT, "--real-steps", "1000000000000"], out_of("loop.real_steps", "[1, 100_000_000]", "1000000000000")),
    ([*TRAIN_AGENT, "--set", "loop.dream_envs=100000"], out_of("loop.dream_envs", "[1, 4096]", "100000")),
    ([*TRAIN_AGENT, "--set", "world_model.dim=10000000"], out_of("world_model.dim", "[8, 4096]", "10000000")),
    ([*TRAIN_AGENT, "--set", "agent.buffer_size=1000000000"],
     out_of("agent.buffer_size", "[1, 1_000_000]", "1000000000")),
    ([*TRAIN_AGENT, *HUGE_MODEL], r"the jepa world model \(53,886,801,035 parameters\) would need 862\.2 GB of "
                                  r"memory; this machine allows "),
    ([*TRAIN_WM, *HUGE_MODEL], r"the jepa world model \(5[\d,]+ parameters\) would need 862\.\d GB of memory"),
    ([*TRAIN_WM, "--steps", "1000000000000"], argument("--steps", "an integer in [1, 1000000000]", "1000000000000")),
    ([*EVAL_WM, "--windows", "100000000"], argument("--windows", "an integer in [1, 4096]", "100000000")),
    ([*DREAM, "--steps", "100000000"], argument("--steps", "an integer in [1, 10000]", "100000000")),
    # devices that exist in torch but cannot run, and paths
    ([*TRAIN_AGENT, "--device", "meta"], re.escape("config key 'device' expects auto, cpu, cuda, cuda:N or mps, "
                                                   "got 'meta'")),
    ([*TRAIN_WM, "--device", "meta"], re.escape("config key 'device' expects auto, cpu, cuda, cuda:N or mps")),
    ([*EVALUATE, "--device", "meta"], re.escape("got 'meta'")),
    ([*PLAN, "--device", "cuda:x"], re.escape("got 'cuda:x'")),
    ([*DREAM, "--device", "meta"], re.escape("got 'meta'")),
    ([*EVAL_WM, "--device", "meta"], re.escape("got 'meta'")),
    (["collect", "--steps", "10", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["inspect", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["train-world-model", "--run", "  "], argument("--run", "a run directory", "an empty path")),
    (["eval-world-model", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["dream", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["evaluate", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["plan", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["train-agent", "--run", ""], argument("--run", "a run directory", "an empty path")),
    (["train-agent", "--resume", ""], argument("--resume", "a run directory", "an empty path")),
    (["inspect", "--run", "{new}"], r"no run at .*new \(missing config\.yaml\)"),
    (["inspect", "--run", "{file}"], r"no run at .*plain-file \(missing config\.yaml\)"),
    (["collect", "--steps", "10", "--run", "{file}", "--quiet"],
     r"cannot create run directory .*plain-file: File exists"),
    (["collect", "--steps", "10", "--run", "{file}/run", "--quiet"],
     r"cannot create run directory .*plain-file/run: Not a directory"),
    ([*TRAIN_AGENT[:-2], "{file}", "--quiet"], r"cannot create run directory .*plain-file: File exists"),
    ([*EVALUATE, "--out", "{new}/scores.json"], r"cannot write --out .*new/scores\.json: the directory .*new does not "
                                                r"exist"),
    ([*EVALUATE, "--gif", "{file}/game.gif"], r"cannot write --gif .*plain-file/game\.gif: the directory .* is a file"),
    ([*EVALUATE, "--out", "{dir}"], r"--out '.*a-directory' is a directory; give a file path"),
    ([*PLAN, "--out", "{new}/plan.json"], r"cannot write --out .*new/plan\.json: the directory .*new does not exist"),
    ([*PLAN, "--gif", "{file}/plan.gif"], r"cannot write --gif .*plain-file/plan\.gif: the directory .* is a file"),
    ([*DREAM, "--out", "{new}/dream.gif"], r"cannot write --out .*new/dream\.gif: the directory .*new does not exist"),
    ([*DREAM, "--out", "{dir}"], r"--out '.*a-directory' is a directory"),
    # malformed options and config
    ([*COLLECT, "--set", "seed=abc"], re.escape("config key 'seed' expects int, got 'abc'")),
    ([*COLLECT, "--set", "collect.num_envs=1.5"], re.escape("config key 'collect.num_envs' expects int, got 1.5")),
    ([*COLLECT, "--set", "env.nonsense=1"], re.escape("unknown config key 'env.nonsense'")),
    ([*COLLECT, "--set", "novalue"], re.escape("override 'novalue' is not of the form key.sub=value")),
    ([*COLLECT, "--preset", "no-such-preset"], re.escape("unknown preset 'no-such-preset'")),
    ([*COLLECT, "--env", "NotAnEnv-v0"], re.escape("unknown env id 'NotAnEnv-v0'")),
    ([*TRAIN_WM, "--again"], re.escape("--again trains a trained world model more: pass --resume too")),
]


def listing(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under `path` with its size and modification time (None: `path` does not exist)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    make_run(root / "trained")
    (root / "plain-file").write_text("not a directory\n")
    (root / "a-directory").mkdir()
    return {"run": root / "trained", "new": root / "new", "file": root / "plain-file", "dir": root / "a-directory"}


def one_line_refusal(code: int | str | None, stderr: str, pattern: str) -> str:
    """Assert exit status 2 and a single stderr line (ALE's banner aside) matching `pattern`, without a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("A.L.E:", "[Powered by"))]
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "pattern"), CASES, ids=[" ".join(argv[:1] + argv[-2:]) for argv, _ in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
        argv: list[str], pattern: str, places: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [arg.format(**places) for arg in argv]
    before = {name: listing(path) for name, path in places.items()}
    try:
        code: int | str | None = main(argv)
    except SystemExit as stop:  # argparse's own one-line error
        code = stop.code
    one_line_refusal(code, capsys.readouterr().err, pattern)
    assert {name: listing(path) for name, path in places.items()} == before, "nothing written, nothing created"


def test_the_table_covers_every_subcommand_and_kind() -> None:
    from mbrl.cli import COMMANDS

    assert len(CASES) >= 60
    assert {argv[0] for argv, _ in CASES} == set(COMMANDS)


def test_a_cuda_device_where_there_is_none_is_refused(places: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = listing(places["run"])
    code = main(["train-world-model", "--run", str(places["run"]), "--device", "cuda:1", "--quiet"])
    one_line_refusal(code, capsys.readouterr().err, re.escape("device 'cuda:1' asked for, but CUDA is not available"))
    assert listing(places["run"]) == before


# ---- every range is declared and holds the defaults ------------------------------------------------------------


def test_every_numeric_config_field_has_a_range_that_holds_its_default() -> None:
    import dataclasses

    from mbrl.core.config import check_ranges
    from mbrl.run_config import RunConfig

    def sections(config: Any) -> list[Any]:
        nested = [getattr(config, f.name) for f in dataclasses.fields(config)]
        return [config, *(s for value in nested if dataclasses.is_dataclass(value) for s in sections(value))]

    for section in sections(RunConfig()):
        ranges = getattr(type(section), "ranges", {})
        values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        numbers = {name for name, value in values.items()
                   if isinstance(value, (int, float, tuple)) and not isinstance(value, bool)}
        assert numbers <= set(ranges) <= set(values), (type(section).__name__, numbers - set(ranges))
        check_ranges(section)  # the defaults lie inside


# ---- refused under a small address-space limit: before any large allocation ------------------------------------


LIMIT = 3 * GiB  # well above what importing torch, gymnasium and SB3 maps (about 0.8 GB), far below the sizes asked


def limited(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m mbrl ARGS` with its address space limited to LIMIT (an allocation beyond it fails)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mbrl", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          preexec_fn=limit, timeout=300)


@pytest.mark.slow
def test_huge_sizes_are_refused_before_they_are_allocated(tmp_path: Path) -> None:
    make_run(tmp_path / "trained")
    new = tmp_path / "new"
    proc = limited("collect", "--steps", "10", "--run", str(new), "--num-envs", "100000", cwd=tmp_path)
    one_line_refusal(proc.returncode, proc.stderr, out_of("collect.num_envs", "[1, 256]", "100000"))
    proc = limited("collect", "--steps", "1000000", "--run", str(new), cwd=tmp_path)  # 1M rows: 4.3 GB
    one_line_refusal(proc.returncode, proc.stderr, r"--steps 1000000: the replay buffer would need 4\.3 GB of memory; "
                     r"this machine allows 3\.2 GB")
    proc = limited("eval-world-model", "--run", str(tmp_path / "trained"), "--windows", "100000000", cwd=tmp_path)
    one_line_refusal(proc.returncode, proc.stderr, argument("--windows", "an integer in [1, 4096]", "100000000"))
    assert not new.exists()
    # and an ordinary command fits under the limit, so the refusals above are not the limit's doing
    proc = limited("inspect", "--run", str(tmp_path / "trained"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# ---- corrupt replay buffers -------------------------------------------------------------------------------------


def small_buffer(directory: Path, num_actions: int | None = 4) -> None:
    """A stored buffer of two 5-row episodes (8x8 frames, stack 2, no RAM), actions 0..3, rewards 0 and 1."""
    with ReplayBuffer.open(directory, (8, 8), 2, ram_size=0, num_actions=num_actions) as buffer:
        stream = buffer.new_streams(1)
        for pos in range(10):
            flags = FIRST if pos % 5 == 0 else TERMINATED if pos % 5 == 4 else 0
            buffer.append(stream, np.full((1, 8, 8), pos, np.uint8), np.array([pos % 4]), np.array([float(pos % 2)]),
                          np.array([flags], np.uint8))


def corrupt(directory: Path, row: int, **fields: Any) -> None:
    """Overwrite fields of one stored row of rows.bin in place."""
    rows = np.memmap(directory / "rows.bin", dtype=record_dtype((8, 8), 0), mode="r+")
    for name, value in fields.items():
        rows[name][row] = value
    rows.flush()


@pytest.mark.parametrize(("fields", "problem"), [
    ({"action": 9}, "row 3 has action 9, outside the action space [0, 4)"),
    ({"action": -1}, "row 3 has action -1, outside the action space [0, 4)"),
    ({"reward": np.nan}, "row 3 has reward nan, not a finite number"),
    ({"reward": -np.inf}, "row 3 has reward -inf, not a finite number"),
    ({"stream": 1 << 30}, "row 3 has stream id 1073741824"),
    ({"prev": 1 << 40}, "its rows do not link up (row 3)"),
])
def test_a_corrupt_replay_row_is_refused_on_load_naming_the_file_and_row(tmp_path: Path, fields: dict[str, Any],
                                                                         problem: str) -> None:
    small_buffer(tmp_path)
    corrupt(tmp_path, 3, **fields)
    with pytest.raises(UserError) as refused:
        ReplayBuffer.load(tmp_path)
    assert str(refused.value) == f"replay buffer {tmp_path / 'rows.bin'} is corrupted: {problem}"


def test_a_corrupt_replay_is_refused_by_every_command_that_reads_it(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(tmp_path / "run")
    run.create("seed: 0\n")
    small_buffer(run.replay_dir)
    corrupt(run.replay_dir, 6, action=17)
    before = listing(run.path)
    one_line_refusal(main(["inspect", "--run", str(run.path)]), capsys.readouterr().err,
                     re.escape(f"replay buffer {run.replay_dir / 'rows.bin'} is corrupted: row 6 has action 17"))
    one_line_refusal(main(["train-world-model", "--run", str(run.path), "--quiet"]), capsys.readouterr().err,
                     re.escape(f"{run.replay_dir / 'rows.bin'} is corrupted: row 6 has action 17"))
    assert listing(run.path) == before


def test_an_old_buffer_learns_its_action_count_and_is_checked_against_it(tmp_path: Path) -> None:
    small_buffer(tmp_path, num_actions=None)  # as written before the count was stored
    assert "num_actions" not in json.loads((tmp_path / "meta.json").read_text())
    ReplayBuffer.open(tmp_path, (8, 8), 2, ram_size=0, num_actions=4).close()
    assert json.loads((tmp_path / "meta.json").read_text())["num_actions"] == 4
    assert ReplayBuffer.load(tmp_path).num_actions == 4
    with pytest.raises(UserError, match="holds play of a game with 4 actions; this one has 3"):
        ReplayBuffer.load(tmp_path, num_actions=3)
    old = tmp_path / "old"
    small_buffer(old, num_actions=None)
    with pytest.raises(UserError, match=r"row 3 has action 3, outside the action space \[0, 3\)"):
        ReplayBuffer.open(old, (8, 8), 2, ram_size=0, num_actions=3)  # its rows are checked before it is written to
    assert "num_actions" not in json.loads((old / "meta.json").read_text())


@pytest.mark.parametrize(("actions", "rewards", "problem"), [
    ([1, 4], [0.0, 0.0],
     "the row appended to stream 1 (it would be row 4) has action 4, outside the action space [0, 4)"),
    ([-2, 0], [0.0, 0.0],
     "the row appended to stream 0 (it would be row 3) has action -2, outside the action space [0, 4)"),
    ([0, 1], [np.nan, 0.0], "the row appended to stream 0 (it would be row 3) has reward nan, not a finite number"),
    ([0, 1], [0.0, 1e39], "the row appended to stream 1 (it would be row 4) has reward 1e+39, not a finite number"),
])
def test_a_bad_row_is_refused_on_append_and_nothing_is_stored(tmp_path: Path, actions: list[int],
                                                              rewards: list[float], problem: str) -> None:
    with ReplayBuffer.open(tmp_path, (8, 8), 2, ram_size=0, num_actions=4) as buffer:
        streams = buffer.new_streams(2)
        buffer.append(streams, np.zeros((2, 8, 8), np.uint8), np.zeros(2), np.zeros(2), np.full(2, FIRST, np.uint8))
        buffer.append(streams[:1], np.zeros((1, 8, 8), np.uint8), np.array([3]), np.array([1.0]), np.zeros(1, np.uint8))
        with pytest.raises(ValueError) as refused:
            buffer.append(streams, np.zeros((2, 8, 8), np.uint8), np.array(actions), np.array(rewards),
                          np.zeros(2, np.uint8))
        assert str(refused.value) == f"replay buffer {tmp_path / 'rows.bin'}: {problem}"
        assert len(buffer) == 3
    assert len(ReplayBuffer.load(tmp_path)) == 3


def test_corrupt_replay_metadata_sizes_nothing(tmp_path: Path) -> None:
    small_buffer(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    for bad in ({"frame_shape": [1 << 20, 1 << 20]}, {"frame_stack": 0}, {"num_actions": 0}, {"ram_size": "many"}):
        (tmp_path / "meta.json").write_text(json.dumps({**meta, **bad}))
        with pytest.raises(UserError, match=re.escape(f"replay buffer metadata {tmp_path / 'meta.json'} is corrupted")):
            ReplayBuffer.load(tmp_path)


# ---- forged checkpoints: the JSON edited and its hash recomputed ------------------------------------------------


def forge(json_path: Path, edit: Any) -> None:
    """Edit a checkpoint JSON's body in place (`edit(body)`) and recompute its sha256, as a forger would."""
    import hashlib

    document = json.loads(json_path.read_text())
    edit(document["body"])
    document["body_sha256"] = hashlib.sha256(json.dumps(document["body"], sort_keys=True).encode()).hexdigest()
    json_path.write_text(json.dumps(document))


@pytest.fixture
def no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a forged checkpoint gets as far as reading its tensors or building a real model."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("read or allocated beyond the checkpoint's header")

    monkeypatch.setattr(CheckpointHeader, "load", forbidden)
    monkeypatch.setattr(registration, "build", forbidden)


def metadata(**entries: Any) -> Any:
    return lambda body: body["metadata"].update(entries)


def model_config(**fields: Any) -> Any:
    return lambda body: body["metadata"]["config"].update(fields)


def body(**entries: Any) -> Any:
    return lambda body: body.update(entries)


@pytest.mark.parametrize(("edit", "problem"), [
    (metadata(family="nope"), "names world-model family 'nope'; known: jepa, jepa-value"),
    (metadata(family=None), "names world-model family None"),
    (model_config(dim=10_000_000), "is corrupted: config key 'dim' expects a value in [8, 4096], got 10000000"),
    (model_config(depth=-1), "is corrupted: config key 'depth' expects a value in [1, 64], got -1"),
    (model_config(surprise=1), "is corrupted: unknown config key 'surprise'"),
    (model_config(patch=5), "is corrupted: patch 5 must be a power of 2"),
    (metadata(config="big"), "has no world-model config"),
    (model_config(dim=64), "does not match the model: 'model."),  # in range, but not the saved tensors' model
    (body(tensor_file="../../outside.safetensors"),
     "is corrupted: its tensor file '../../outside.safetensors' is not a plain file name inside"),
    (body(tensor_file="/etc/passwd"), "its tensor file '/etc/passwd' is not a plain file name"),
    (body(tensor_file=".."), "its tensor file '..' is not a plain file name"),
    (body(step="soon"), "is corrupted: its 'step' is str, not int"),
    (body(metadata=None), "is corrupted: its 'metadata' is NoneType, not dict"),
])
def test_a_forged_world_model_checkpoint_is_refused_before_anything_is_allocated(
        tmp_path: Path, edit: Any, problem: str, no_allocation: None) -> None:
    make_run(tmp_path / "run")
    (tmp_path / "outside.safetensors").write_bytes(b"not for reading")
    run = RunDir(tmp_path / "run")
    json_path = run.checkpoint_dir / "world_model.json"
    forge(json_path, edit)
    with pytest.raises(CheckpointError) as refused:
        load_world_model(run, torch.device("cpu"))
    message = str(refused.value)
    assert str(json_path) in message and problem in message and "\n" not in message, message


def test_a_tensor_file_linked_from_outside_the_checkpoint_directory_is_refused(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    checkpoints = RunDir(tmp_path / "run").checkpoint_dir
    tensor_file = json.loads((checkpoints / "world_model.json").read_text())["body"]["tensor_file"]
    (checkpoints / tensor_file).rename(tmp_path / "elsewhere.safetensors")
    (checkpoints / tensor_file).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="is not a plain file name inside"):
        open_checkpoint(checkpoints, "world_model")


def test_a_forged_checkpoint_is_refused_by_the_commands_in_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "run")
    json_path = tmp_path / "run" / "checkpoints" / "world_model.json"
    forge(json_path, metadata(family="nope"))
    before = listing(tmp_path / "run")
    for argv in (EVAL_WM, DREAM, PLAN):
        code = main([arg.format(run=tmp_path / "run") for arg in argv])
        one_line_refusal(code, capsys.readouterr().err, re.escape(f"checkpoint {json_path} names world-model family "
                                                                  "'nope'"))
    assert listing(tmp_path / "run") == before


def test_the_shapes_a_checkpoint_holds_are_checked_against_its_model_on_the_meta_device(tmp_path: Path) -> None:
    """An honest checkpoint loads through the same checks; a model built from its metadata on the meta device
    holds no storage."""
    from mbrl.envs.registration import world_model_spec
    from mbrl.world_models.registry import skeleton

    saved = make_run(tmp_path)
    run = RunDir(tmp_path)
    header = open_checkpoint(run.checkpoint_dir, "world_model")
    family, config = world_model_spec(header)
    model = skeleton(family, config)
    assert all(p.is_meta for p in model.parameters())
    assert header.shapes == load_checkpoint(run.checkpoint_dir, "world_model").shapes
    loaded, _ = load_world_model(run, torch.device("cpu"))
    for (name, value), (_, expected) in zip(loaded.state_dict().items(), saved.state_dict().items()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_a_forged_huge_model_is_refused_under_a_small_memory_limit(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    json_path = tmp_path / "run" / "checkpoints" / "world_model.json"
    forge(json_path, model_config(dim=4096, depth=64, predictor_dim=4096))
    proc = limited("eval-world-model", "--run", str(tmp_path / "run"), cwd=tmp_path)  # in range, and tens of GB
    one_line_refusal(proc.returncode, proc.stderr, re.escape(f"checkpoint {json_path} does not match the model: "))


# ---- resuming after kill -9 -------------------------------------------------------------------------------------


WORKERS = """
import os, sys, time
from mbrl.envs.atari import AtariConfig, make_vector_env

if __name__ == "__main__":
    env = make_vector_env(AtariConfig(), 2, 2)
    env.reset(seed=0)
    print(" ".join(str(p.pid) for p in env._procs), flush=True)
    for step in range(10**9):
        env.step([0, 0])
        if step == 20:
            print("stepping", flush=True)
"""


@pytest.mark.slow
def test_workers_of_a_killed_process_exit_without_a_traceback(tmp_path: Path) -> None:
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) == 2, proc.stderr.read()
    assert proc.stdout.readline().strip() == "stepping", proc.stderr.read()  # the workers are mid-step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the workers share the killed process's stderr: it reaches its end once the last of them has exited (a worker
    # that outlived its parent would keep this read waiting)
    stderr = proc.stderr.read()
    assert not any(_running(pid) for pid in workers), "the workers exit when their parent is gone"
    assert proc.returncode == -signal.SIGKILL
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an exited orphan nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_resume_that_collects_nothing_adds_no_stream(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def mbrl(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "mbrl", *args], capture_output=True, text=True, env=env,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr

    mbrl("train-agent", "--preset", "smoke", "--run", str(run), "--quiet")
    finished = ReplayBuffer.load(run / "replay")
    for _ in range(2):  # the budget is spent: nothing is collected, so no env is reset and no stream opened
        mbrl("train-agent", "--resume", str(run), "--quiet")
        resumed = ReplayBuffer.load(run / "replay")
        assert (resumed.num_streams, len(resumed)) == (finished.num_streams, len(finished))


def test_memory_limit_follows_the_address_space_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    assert memory_limit() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if soft == resource.RLIM_INFINITY:
        assert memory_limit() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
