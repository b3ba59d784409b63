"""`mbrl train-agent` and `mbrl evaluate`: the Dyna loop end to end, resume after SIGKILL, agents, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor
from test_cli import assert_user_error, mbrl_cli
from test_dream import make_buffer, tiny_jepa

from mbrl.agents.sb3 import DreamVecEnv
from mbrl.agents.sb3_agent import AgentConfig, agent_tensors, build_agent, restore_agent
from mbrl.core.checkpoint import load_checkpoint, save_checkpoint
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayBuffer
from mbrl.envs.atari import AtariConfig
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.evaluate import EvalConfig, evaluate_agent
from mbrl.loop import LoopConfig
from mbrl.run_config import resolve_config

SMOKE = ["--preset", "smoke", "--quiet"]


def counters(run: Path) -> dict[str, Any]:
    progress = json.loads((run / "progress.json").read_text())
    return {k: progress[k] for k in ("iteration", "replay_steps", "dream_steps", "world_model_updates")}


# ---- the loop end to end ---------------------------------------------------------------------


@pytest.mark.slow
def test_train_agent_runs_end_to_end_and_its_agent_plays_the_real_game(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = mbrl_cli("train-agent", *SMOKE, "--run", str(run), "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    config = resolve_config("smoke", [])
    loop = config.loop
    assert loop.iterations == 2
    got = counters(run)
    assert got["iteration"] == 2 and got["world_model_updates"] == 2 * loop.world_model_updates
    assert got["dream_steps"] == 2 * loop.dream_steps  # PPO rollouts of n_steps x dream_envs = 128 divide it
    assert loop.real_steps <= got["replay_steps"] < loop.real_steps + config.collect.num_envs
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == config.eval.episodes and len(result["scores"]) == config.eval.episodes
    assert result["iteration"] == 2 and result["agent"] == "ppo" and all(n > 0 for n in result["lengths"])
    assert (run / "eval.gif").stat().st_size > 0
    assert "mean score" in proc.stdout and "eval.json" in proc.stdout

    # the dream-trained agent plays real games through `mbrl evaluate`, as does the random policy
    proc = mbrl_cli("evaluate", "--run", str(run), "--episodes", "2", "--quiet", "--out", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((tmp_path / "e.json").read_text())
    assert scores["episodes"] == 2 and scores["agent"] == "ppo" and "mean" in proc.stdout
    proc = mbrl_cli("evaluate", "--run", str(run), "--agent", "random", "--episodes", "2",
                    "--set", "eval.max_episode_frames=200")
    assert proc.returncode == 0 and (run / "eval-random.json").exists()
    random = json.loads((run / "eval-random.json").read_text())
    assert random["complete"] and random["max_episode_frames"] == 200
    lines = [line for line in proc.stderr.splitlines() if line.startswith("game ")]  # a log, not a terminal
    assert [line.split(":")[0] for line in lines] == ["game 1/2", "game 2/2"]
    assert f"mean so far {random['mean']:.2f}" in lines[-1]

    # MPC in the same world model plays too, scored by the same code
    proc = mbrl_cli("plan", "--run", str(run), "--planner", "mppi", "--horizon", "3", "--candidates", "8",
                    "--iterations", "1", "--value-from-agent", "--quiet", "--set", "eval.max_episode_frames=200")
    assert proc.returncode == 0, proc.stderr
    planned = json.loads((run / "plan-mppi.json").read_text())
    assert planned["agent"] == "mpc-mppi" and planned["horizon"] == 3 and planned["episodes"] == 1
    assert planned["compile"] is False  # --compile not given
    assert planned["lengths"][0] <= 50 and planned["complete"]  # 200 frames
    assert not any(line.startswith("game ") for line in proc.stderr.splitlines())  # --quiet
    assert_user_error(mbrl_cli("plan", "--run", str(run), "--env", "ALE/Pong-v5"), r"created with env ALE/Breakout")

    # and imagined frames follow it in the dream
    proc = mbrl_cli("dream", "--run", str(run), "--agent", "--steps", "8")
    assert proc.returncode == 0, proc.stderr
    assert (run / "dream-agent.gif").stat().st_size > 0 and "following the ppo agent" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("settings", [[], ["agent.algo=dqn", "loop.real_updates=0.5"]], ids=["ppo", "dqn-real"])
def test_resume_after_sigkill_keeps_counters_and_transitions(tmp_path: Path, settings: list[str]) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mbrl", "train-agent", *SMOKE, "--run", str(run), "--set", "loop.real_steps=400",
            *(arg for setting in settings for arg in ("--set", setting))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    agent_json = run / "checkpoints" / "agent.json"
    deadline = time.monotonic() + 300
    while not agent_json.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: after the first agent checkpoint, before the end
    proc.wait()
    assert agent_json.exists()
    before = ReplayBuffer.load(run / "replay")
    killed_at = len(before)
    meta = load_checkpoint(run / "checkpoints", "agent").metadata
    assert meta["num_timesteps"] > 0 or meta["real_updates"] > 0  # the agent had learnt before the kill

    proc2 = mbrl_cli("train-agent", "--resume", str(run), "--quiet")
    assert proc2.returncode == 0, proc2.stderr
    after = ReplayBuffer.load(run / "replay")
    assert len(after) >= killed_at  # every flushed row is still there, unchanged
    assert np.array_equal(after._rows[:killed_at], before._rows[:killed_at])
    loop = resolve_config("smoke", ["loop.real_steps=400"]).loop
    got = counters(run)
    assert got["iteration"] == loop.iterations == 4
    assert got["world_model_updates"] == loop.iterations * loop.world_model_updates
    assert got["dream_steps"] == loop.iterations * loop.dream_steps
    assert 400 <= got["replay_steps"] == after.num_steps < 400 + 2 * 2  # new streams after the resume may overshoot
    history = json.loads((run / "eval.json").read_text())
    assert history["iteration"] == loop.iterations
    real_updates = load_checkpoint(run / "checkpoints", "agent").metadata["real_updates"]
    assert real_updates == (round(0.5 * after.num_steps) if settings else 0)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["a2c", "dqn"])
def test_other_algorithms_run_the_loop(tmp_path: Path, algo: str) -> None:
    run = tmp_path / algo
    real = ["--set", "loop.real_updates=0.5"] if algo == "dqn" else []  # and DQN learns from real play too
    proc = mbrl_cli("train-agent", *SMOKE, "--run", str(run), "--algo", algo, "--real-steps", "250", *real)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "eval.json").read_text())["agent"] == algo
    got = counters(run)
    assert got["dream_steps"] >= 128
    meta = load_checkpoint(run / "checkpoints", "agent").metadata
    assert meta["real_updates"] == (round(0.5 * got["replay_steps"]) if algo == "dqn" else 0)


@pytest.mark.slow
def test_mpc_can_collect_in_the_loop_and_its_generator_is_checkpointed(tmp_path: Path) -> None:
    run = tmp_path / "mpc"
    settings = ["loop.collect_with=mpc", "mpc.search.candidates=8", "mpc.search.horizon=3", "mpc.search.iterations=1"]
    proc = mbrl_cli("train-agent", *SMOKE, "--run", str(run), *(arg for s in settings for arg in ("--set", s)))
    assert proc.returncode == 0, proc.stderr
    loop = resolve_config("smoke", []).loop
    assert counters(run)["iteration"] == loop.iterations
    assert loop.real_steps <= counters(run)["replay_steps"] < loop.real_steps + 2
    state = load_checkpoint(run / "checkpoints", "agent").tensors["rng.plan"]
    seed = int(np.random.SeedSequence([0, 0, 4]).generate_state(1)[0])  # smoke seed 0, the run's first streams
    assert not torch.equal(state, torch.Generator().manual_seed(seed).get_state()), "the planner drew actions"


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "pattern"), [
    (["--env", "NotAnEnv-v0"], r"unknown env id 'NotAnEnv-v0'"),
    (["--env", "CartPole-v1"], r"not an Atari \(ALE\) game"),
    (["--set", "agent.algo=sac"], r"AgentConfig.algo must be one of"),
    (["--set", "loop.warmup_steps=0"], r"warmup_steps must be in"),
    (["--set", "loop.collect_with=human"], r"loop.collect_with must be one of agent, mpc, got 'human'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], pattern: str) -> None:
    assert_user_error(mbrl_cli("train-agent", *SMOKE, "--run", str(tmp_path / "r"), *args), pattern)


def test_resume_errors(tmp_path: Path) -> None:
    assert_user_error(mbrl_cli("train-agent", "--resume", str(tmp_path / "missing")), r"no run at .*missing")
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("env:\n  id: ALE/Breakout-v5\n")
    assert_user_error(mbrl_cli("train-agent", "--resume", str(run), "--env", "ALE/Pong-v5"),
                      r"created with env ALE/Breakout-v5, not ALE/Pong-v5")
    assert_user_error(mbrl_cli("train-agent", *SMOKE, "--run", str(run)), r"already holds a run; .*--resume")
    assert_user_error(mbrl_cli("evaluate", "--run", str(run)), r"world_model.json|no checkpoint|missing")


def test_loop_schedule() -> None:
    loop = LoopConfig(real_steps=20_000, warmup_steps=5_000, collect_steps=5_000)
    assert loop.iterations == 3
    assert LoopConfig(real_steps=20_001, warmup_steps=5_000, collect_steps=5_000).iterations == 4
    with pytest.raises(ValueError, match="warmup_steps"):
        LoopConfig(real_steps=100, warmup_steps=200)
    with pytest.raises(UserError, match="AgentConfig.algo must be one of"):
        resolve_config(None, ["agent.algo=td3"])
    with pytest.raises(UserError, match=r"loop.real_updates needs an off-policy agent \(agent.algo=dqn\)"):
        resolve_config(None, ["loop.real_updates=1"])
    assert resolve_config(None, ["loop.real_updates=1", "agent.algo=dqn"]).loop.real_updates == 1


# ---- the agent checkpoint --------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_agent_checkpoint_round_trip(tmp_path: Path, algo: str) -> None:
    def learner() -> Any:
        venv = VecMonitor(DreamVecEnv(DreamVectorEnv(tiny_jepa(), make_buffer(), 4, DreamConfig(horizon=4), seed=0)))
        return build_agent(AgentConfig(algo=algo, hidden=16, layers=1, n_steps=8, batch_size=16, learning_starts=8,
                                       train_freq=1), venv, seed=0, device="cpu")

    trained = learner()
    trained.learn(64)
    tensors, meta = agent_tensors(trained)
    save_checkpoint(tmp_path, "agent", tensors, meta, step=trained.num_timesteps)
    fresh = learner()
    obs = np.random.default_rng(0).normal(size=(5, *fresh.observation_space.shape)).astype(np.float32)
    assert fresh.num_timesteps == 0
    ckpt = load_checkpoint(tmp_path, "agent")
    restore_agent(fresh, ckpt, ckpt.metadata)
    assert fresh.num_timesteps == trained.num_timesteps == 64
    for key, value in trained.policy.state_dict().items():
        assert torch.equal(value, fresh.policy.state_dict()[key]), key
    assert np.array_equal(trained.predict(obs, deterministic=True)[0], fresh.predict(obs, deterministic=True)[0])
    if algo == "dqn":  # a fresh DQN acts greedily until it learns; the restored one explores as the trained one
        assert trained.exploration_rate == fresh.exploration_rate == 0.05
    old, new = trained.policy.optimizer.state_dict(), fresh.policy.optimizer.state_dict()
    assert old["state"].keys() == new["state"].keys() and len(old["state"]) > 0
    for index, values in old["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(new["state"][index][name]))


@pytest.mark.parametrize(("gradient_steps", "updates"), [(1, 14), (-1, 56)])
def test_dqn_gradient_steps_set_the_replay_ratio(gradient_steps: int, updates: int) -> None:
    venv = VecMonitor(DreamVecEnv(DreamVectorEnv(tiny_jepa(), make_buffer(), 4, DreamConfig(horizon=4), seed=0)))
    learner = build_agent(AgentConfig(algo="dqn", hidden=8, layers=1, batch_size=4, learning_starts=8, train_freq=1,
                                      gradient_steps=gradient_steps), venv, seed=0, device="cpu")
    learner.learn(64)  # 16 steps of 4 envs; the first 2 (8 transitions) only fill the replay
    assert learner._n_updates == updates  # 1: one update per vector step; -1: one per transition


# ---- evaluation ------------------------------------------------------------------------------


class Recorder:
    """An agent that presses FIRE then moves right, and records the episode_start flags it is given."""

    def __init__(self) -> None:
        self.starts: list[np.ndarray] = []

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        assert observation.dtype == np.uint8 and observation.shape[1:] == (4, 64, 64)
        assert episode_start is not None
        self.starts.append(episode_start.copy())
        return np.where(np.arange(len(observation)) % 2 == 0, 1, 2).astype(np.int64), None


@pytest.mark.slow
def test_evaluate_plays_each_env_its_share_of_full_games(tmp_path: Path) -> None:
    agent = Recorder()
    config = EvalConfig(episodes=3, num_envs=2, num_workers=0, max_episode_frames=400)  # 100-step games
    partial: list[dict[str, Any]] = []
    result = evaluate_agent(agent, AtariConfig(), config, seed=0, gif_path=tmp_path / "g.gif", on_game=partial.append)
    assert [p["episodes"] for p in partial] == [1, 2, 3] and [p["complete"] for p in partial] == [False, False, True]
    assert partial[0]["scores"] == result["scores"][:1] and partial[-1] == result
    assert result["episodes"] == 3 and len(result["scores"]) == 3 and len(result["lengths"]) == 3
    assert all(0 < n <= 100 for n in result["lengths"])
    assert result["mean"] == pytest.approx(np.mean(result["scores"])) and result["max_episode_frames"] == 400
    starts = np.stack(agent.starts)  # (steps, 2)
    assert starts[0].all() and starts[1:].sum() >= 2  # every env restarted at least once after its first game
    assert (tmp_path / "g.gif").stat().st_size > 0
