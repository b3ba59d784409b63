"""`mbrl train-agent` and `mbrl evaluate`: the Dyna loop end to end, resume after SIGKILL, agents, bad input."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor

from mbrl.agents.sb3 import DreamVecEnv
from mbrl.agents.sb3_agent import AgentConfig, LatentAgent, agent_tensors, build_agent, restore_agent
from mbrl.core.checkpoint import load_checkpoint, save_checkpoint
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayBuffer
from mbrl.envs.atari import AtariConfig
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.evaluate import EvalConfig, evaluate_agent
from mbrl.run_config import LoopConfig, resolve_config
from tests.cli_runs import assert_user_error, mbrl_cli, mbrl_cli_killed
from tests.toys import make_buffer, tiny_jepa

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


# ---- resume after SIGKILL -------------------------------------------------------------------

ONE_ITERATION = ("loop.real_steps=250",)  # warm-up to 200 real steps, then one iteration collecting to 250
TWO_ITERATIONS = ("loop.real_steps=300",)
DQN = ("agent.algo=dqn",)
ADAM_STEP = 0.1 / np.sqrt(1e-3 * (1 - 0.81 / 0.999))
"""The most one Adam step (betas 0.9, 0.999) moves a weight, in learning rates: (1 - b1) / sqrt((1 - b2)(1 - b1^2 /
b2)) = 7.27, by Cauchy-Schwarz over the gradients' history (the bias corrections only shrink it)."""


def train_agent_args(run: Path, settings: tuple[str, ...]) -> list[str]:
    return ["train-agent", *SMOKE, "--run", str(run), *(arg for setting in settings for arg in ("--set", setting))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[tuple[str, ...]], Path]:
    """The smoke run with `settings` and no kill, trained once per module for the tests that compare with it."""
    runs: dict[tuple[str, ...], Path] = {}

    def run_of(settings: tuple[str, ...]) -> Path:
        if settings not in runs:
            run = tmp_path_factory.mktemp("uninterrupted") / "run"
            proc = mbrl_cli(*train_agent_args(run, settings))
            assert proc.returncode == 0, proc.stderr
            runs[settings] = run
        return runs[settings]

    return run_of


class Killed(NamedTuple):
    """What a killed run had on disk when it died."""

    progress: dict[str, Any]
    agent: dict[str, Any] | None  # the agent checkpoint's metadata, if it had one
    rows: np.ndarray  # the replay buffer's rows


def kill_and_resume(run: Path, settings: tuple[str, ...], checkpoint: str, match: dict[str, Any] | None = None,
                    nth: int = 1) -> Killed:
    """Train with `settings`, SIGKILLed right after the chosen point (see `mbrl_cli_killed`), then resume to the
    end; returns what the kill left."""
    killed = mbrl_cli_killed(checkpoint, *train_agent_args(run, settings), nth=nth, match=match)
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # the kill, not the end of the run, stopped it
    agent = run / "checkpoints" / "agent.json"
    left = Killed(json.loads((run / "progress.json").read_text()),
                  load_checkpoint(run / "checkpoints", "agent").metadata if agent.exists() else None, stored_rows(run))
    proc = mbrl_cli("train-agent", "--resume", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return left


def stored_rows(run: Path) -> np.ndarray:
    buffer = ReplayBuffer.load(run / "replay")
    return buffer._rows[: len(buffer)].copy()


def largest_differences(a: Path, b: Path, name: str) -> dict[str, float]:
    """The largest absolute difference of each tensor of checkpoint `name` between runs `a` and `b`."""
    first, second = load_checkpoint(a / "checkpoints", name), load_checkpoint(b / "checkpoints", name)
    assert first.tensors.keys() == second.tensors.keys()
    return {key: float((value.double() - second.tensors[key].double()).abs().max()) if value.numel() else 0.0
            for key, value in first.tensors.items()}


def scores(run: Path) -> tuple[list[float], list[int]]:
    result = json.loads((run / "eval.json").read_text())
    return result["scores"], result["lengths"]


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "match"), [
    (ONE_ITERATION, {"progress.dyna_updates": 3}),
    (TWO_ITERATIONS, {"progress.dyna_updates": 6}),
    (TWO_ITERATIONS + DQN, {"progress.dyna_updates": 6}),
], ids=["ppo-before-the-first-agent-checkpoint", "ppo-after-it", "dqn-after-it"])
def test_a_run_killed_after_its_last_collection_resumes_as_the_uninterrupted_run(
        tmp_path: Path, uninterrupted: Callable[[tuple[str, ...]], Path], settings: tuple[str, ...],
        match: dict[str, Any]) -> None:
    """Killed right after the world model's checkpoint of the last iteration's refit (all real play stored), the
    resumed run redoes the agent's phases from its last checkpoint (a fresh agent before it had one). Same seed:
    the same replay, world model, counters, agent and evaluation as the run never killed. One documented
    difference: a DQN's replay of dream transitions is not checkpointed (AgentConfig.buffer_size), so one
    resumed in its second iteration learns in the dream from an empty replay; its weights then differ by no more
    than that phase's Adam steps can move them, and its games may differ."""
    run = tmp_path / "run"
    killed = kill_and_resume(run, settings, "world_model", match)
    reference = uninterrupted(settings)
    config = resolve_config("smoke", list(settings))
    assert killed.progress.get("iteration", 0) == config.loop.iterations - 1  # killed in the last iteration
    assert (killed.agent is None) == (config.loop.iterations == 1)  # ... before or after the agent's checkpoint

    assert counters(run) == counters(reference)
    assert np.array_equal(stored_rows(run), stored_rows(reference))
    assert max(largest_differences(run, reference, "world_model").values()) == 0.0
    resumed, expected = (load_checkpoint(path / "checkpoints", "agent").metadata for path in (run, reference))
    dqn = "agent.algo=dqn" in settings
    for key in ("num_timesteps", "n_updates", *(() if dqn else ("evals",))):
        assert resumed[key] == expected[key], key
    agent = largest_differences(run, reference, "agent")
    if not dqn:
        assert max(agent.values()) == 0.0, {k: v for k, v in agent.items() if v}
        assert scores(run) == scores(reference)
    else:
        assert killed.agent is not None
        steps = expected["n_updates"] - killed.agent["n_updates"]  # the dream phase's gradient steps, redone
        bound = 2 * steps * ADAM_STEP * config.agent.learning_rate
        assert 0 < steps and max(value for key, value in agent.items() if key.startswith("policy.")) <= bound


STAGE_2 = ("model.dynamics.", "model.reward_head.", "model.end_head.", "model.decoder.", "model.event_shift")
"""What the world model's refits train (and its event calibration, which follows the data); the rest is the
encoder's, fitted once in the warm-up."""


@pytest.mark.slow
@pytest.mark.parametrize(("checkpoint", "match", "nth"), [
    ("replay", None, 3),
    ("world_model", {"progress.stage": "encoder", "progress.step": 3}, 1),
], ids=["during-collection", "during-the-world-models-first-fit"])
def test_a_run_killed_before_its_first_agent_checkpoint_keeps_what_it_stored(
        tmp_path: Path, uninterrupted: Callable[[tuple[str, ...]], Path], checkpoint: str,
        match: dict[str, Any] | None, nth: int) -> None:
    """Killed in the warm-up (after its third replay flush, or at the first checkpoint of the world model's first
    fit), the resumed run keeps every row stored before the kill, which are the uninterrupted run's first rows,
    and ends at the same milestones. From the next collection on the runs part, as documented: a resumed run
    plays new streams (its real envs restart; an emulator's state is not saved), so the data, the world model's
    refits and the agent differ. The encoder, fitted in the warm-up alone on the warm-up's data, is the same."""
    run = tmp_path / "run"
    killed = kill_and_resume(run, ONE_ITERATION, checkpoint, match, nth)
    reference = uninterrupted(ONE_ITERATION)
    config = resolve_config("smoke", list(ONE_ITERATION))
    assert killed.agent is None and "iteration" not in killed.progress
    assert killed.progress["replay_steps"] < config.loop.warmup_steps if checkpoint == "replay" else (
        killed.progress["replay_steps"] == config.loop.warmup_steps)

    rows, expected = stored_rows(run), stored_rows(reference)
    assert np.array_equal(rows[: len(killed.rows)], killed.rows)  # nothing stored before the kill changed
    assert np.array_equal(killed.rows, expected[: len(killed.rows)])  # and it is how the uninterrupted run began
    assert ReplayBuffer.load(run / "replay").num_streams == 2 * config.collect.num_envs  # the resumed sitting's
    got, want = counters(run), counters(reference)
    for key in ("iteration", "dream_steps", "world_model_updates"):
        assert got[key] == want[key], key
    for steps in (got["replay_steps"], want["replay_steps"]):  # a milestone is reached with every env's last step
        assert config.loop.real_steps <= steps < config.loop.real_steps + config.collect.num_envs
    if checkpoint == "world_model":
        encoder = {key: value for key, value in largest_differences(run, reference, "world_model").items()
                   if key.startswith("model.") and not key.startswith(STAGE_2)}
        assert any(key.startswith("model.online.") for key in encoder)
        assert max(encoder.values()) == 0.0, {k: v for k, v in encoder.items() if v}


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["a2c", "dqn"])
def test_other_algorithms_run_the_loop(tmp_path: Path, algo: str) -> None:
    run = tmp_path / algo
    proc = mbrl_cli("train-agent", *SMOKE, "--run", str(run), "--algo", algo, "--real-steps", "250")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "eval.json").read_text())["agent"] == algo
    assert counters(run)["dream_steps"] >= 128


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
    (["--set", "agent.algo=sac"], r"agent.algo must be one of"),
    (["--set", "loop.warmup_steps=0"], r"config key 'loop.warmup_steps' expects a value in \[1, "),
    (["--set", "loop.collect_with=human"], r"loop.collect_with must be one of agent, mpc, got 'human'"),
    (["--set", "loop.real_updates=1"], r"config key 'loop.real_updates' was removed"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], pattern: str) -> None:
    assert_user_error(mbrl_cli("train-agent", *SMOKE, "--run", str(tmp_path / "r"), *args), pattern)


def test_resume_errors(tmp_path: Path) -> None:
    """Each refusal names its own cause: no run, another game, a run already there, no trained world model."""
    missing = tmp_path / "missing"
    assert_user_error(mbrl_cli("train-agent", "--resume", str(missing)),
                      rf"^mbrl train-agent: error: no run at {re.escape(str(missing))} \(missing config.yaml\)$")
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("env:\n  id: ALE/Breakout-v5\n")
    assert_user_error(mbrl_cli("train-agent", "--resume", str(run), "--env", "ALE/Pong-v5"),
                      rf"^mbrl train-agent: error: run {re.escape(str(run))} was created with env ALE/Breakout-v5, "
                      r"not ALE/Pong-v5$")
    assert_user_error(mbrl_cli("train-agent", *SMOKE, "--run", str(run)),
                      rf"^mbrl train-agent: error: {re.escape(str(run))} already holds a run; continue it with "
                      rf"--resume {re.escape(str(run))} or choose another --run$")
    assert_user_error(mbrl_cli("evaluate", "--run", str(run)),
                      rf"^mbrl evaluate: error: checkpoint not found: {re.escape(str(run))}/checkpoints/"
                      r"world_model\.json$")


def test_loop_schedule() -> None:
    loop = LoopConfig(real_steps=20_000, warmup_steps=5_000, collect_steps=5_000)
    assert loop.iterations == 3
    assert LoopConfig(real_steps=20_001, warmup_steps=5_000, collect_steps=5_000).iterations == 4
    with pytest.raises(ValueError, match="warmup_steps"):
        LoopConfig(real_steps=100, warmup_steps=200)
    with pytest.raises(UserError, match="agent.algo must be one of"):
        resolve_config(None, ["agent.algo=td3"])


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


@pytest.mark.slow
def test_evaluation_is_reproducible_under_its_seed() -> None:
    """The same seed plays the same games, whatever the caller's generators did before; another seed others. The
    agent samples its actions (as `mbrl evaluate` asks by default) from torch's global generator."""
    venv = VecMonitor(DreamVecEnv(DreamVectorEnv(tiny_jepa(), make_buffer(), 2, DreamConfig(), seed=0)))
    learner = build_agent(AgentConfig(hidden=16, layers=1, n_steps=8, batch_size=16), venv, seed=0, device="cpu")
    agent = LatentAgent(learner, tiny_jepa(), torch.device("cpu"))
    config = EvalConfig(episodes=2, num_envs=2, num_workers=0, max_episode_frames=2000)

    def games(seed: int) -> tuple[list[float], list[int]]:
        result = evaluate_agent(agent, AtariConfig(), config, seed=seed)
        return result["scores"], result["lengths"]

    first = games(0)
    torch.rand(5)  # the caller's draws in between change nothing
    assert games(0) == first
    assert games(1) != first
