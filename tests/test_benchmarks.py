"""The benchmarks' own bookkeeping and tables (the benchmarks themselves run outside the test suite)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from benchmarks import atari_100k, breakout_100k, plan_ranking, planning, planning_score, report
from benchmarks.breakout_100k import SittingClock, current
from benchmarks.dream_gap import TokenGrid
from benchmarks.paired import paired_t, t_quantile, t_within
from benchmarks.plan_ranking import average_ranks, ranking_scores, spearman
from benchmarks.planning import summarise
from benchmarks.planning_score import same_entry
from benchmarks.report import save_result, section, write_results_md
from benchmarks.studies.breakout_100k_games import breakout_100k_games
from benchmarks.studies.emulator_planning import emulator_planning
from benchmarks.studies.latent_distill.latent_distill import clone, dream_rates, heads_on_play, real_rates
from benchmarks.studies.predictor_cost.predictor_cost import macs_per_rollout_step
from benchmarks.studies.serving import serving
from benchmarks.studies.serving.serving import WAIT, UniformOver, serve_waits, waiting
from mbrl.agents.mpc import MPCConfig
from mbrl.agents.planners import PlannerConfig
from mbrl.agents.sb3_agent import AgentConfig, build_agent
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel


def rendered(result: dict[str, Any]) -> str:
    """A result's RESULTS.md section, as one string."""
    return "\n".join(section(result))


def test_sitting_clock_sums_the_sittings_of_a_resumed_run_and_writes_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "mbrl-s0.seconds"
    path.write_text("100.0")  # earlier sittings took 100 s
    now = [0.0]
    clock = SittingClock(path, every=0.01, now=lambda: now[0])  # this sitting starts at 0 on `now`
    now[0] = 5.0  # before the clock's thread starts: every write it makes sees 5 s of this sitting
    with clock:
        clock.ticked.wait()  # set by the thread's first periodic write
        assert float(path.read_text()) == 105.0  # a kill now keeps this sitting
        now[0] = 7.0
    assert clock.seconds() == 107.0 and float(path.read_text()) == 107.0
    now[0] = 50.0
    assert clock.seconds() == 107.0  # frozen at the sitting's end
    with SittingClock(path) as again:  # the next sitting starts from what the file holds
        assert again.before == float(path.read_text())


def test_superseded_runs_neither_count_as_done_nor_mix_into_the_current_rows() -> None:
    run = {"method": "ppo", "seed": 0, "real_steps": 100, "hours": 1.0, "mean": 1.0, "std": 0.0, "machine": "m",
           "date": "d", "command": "c"}
    runs = [dict(run, superseded="a bug"), dict(run, mean=3.0), dict(run, seed=1, mean=5.0)]
    assert current(runs) == runs[1:]  # seed 0 of the current code is done, the superseded seed 0 is not counted
    table = rendered(breakout_100k.with_tables({"runs": runs, "episodes": 8, "references": {}}))
    assert "| ppo | 100 | 2 | 4.00 +- 1.00 |" in table
    assert "| ppo (superseded: a bug) | 100 | 1 | 1.00 +- 0.00 |" in table
    assert "removed preset" not in table


def test_rows_of_the_removed_preset_stay_as_history_labelled_so() -> None:
    run = {"method": "ppo", "seed": 0, "real_steps": 100, "hours": 1.0, "mean": 1.0, "std": 0.0, "machine": "m",
           "date": "d", "command": "c"}
    runs = [run, dict(run, method="mbrl-dqn", mean=3.0), dict(run, method="mbrl", mean=2.0, superseded="a bug")]
    table = rendered(breakout_100k.with_tables({"runs": runs, "episodes": 8, "references": {}}))
    assert "| ppo | 100 | 1 | 1.00 +- 0.00 |" in table
    assert "| mbrl-dqn (removed preset atari100k) | 100 | 1 | 3.00 +- 0.00 |" in table
    assert "| mbrl (removed preset atari100k; superseded: a bug) | 100 | 1 | 2.00 +- 0.00 |" in table
    assert "Rows marked 'removed preset atari100k' are history" in table
    # the saved results render so too, every removed method's row labelled
    saved = json.loads(breakout_100k.RESULT.read_text())
    labels = [row[0] for row in breakout_100k.with_tables(saved)["tables"][0]["rows"]]
    assert {label.split(" ")[0] for label in labels} == {*breakout_100k.REMOVED, *breakout_100k.METHODS}
    assert all(("removed preset" in label) == (label.split(" ")[0] in breakout_100k.REMOVED) for label in labels)
    assert breakout_100k.baseline_config().eval.episodes == saved["episodes"]


def test_results_md_names_a_result_it_has_no_table_for_instead_of_failing(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "future.json").write_text(json.dumps({"benchmark": "not_yet_known", "rows": []}))
    text = write_results_md(tmp_path)[0].read_text()
    assert "## results/future.json" in text and "'not_yet_known'" in text


def test_results_md_renders_every_result_from_its_own_title_header_notes_and_tables(tmp_path: Path) -> None:
    def result(title: str, command: str | list[str]) -> dict[str, Any]:
        return {"benchmark": "b", "title": title, "machine": "m", "date": "2026-12-07", "command": command,
                "notes": ["How it is measured."], "history": ["Earlier: 3."],
                "tables": [{"columns": ["x", "y"], "rows": [[1, "2.00"], [None, "-"]], "notes": ["After."]},
                           {"title": "Second", "columns": ["z"], "rows": [["a"]]}]}

    for folder in ("results", "studies/s/results"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "results" / "b.json").write_text(json.dumps(result("Bench", "python -m benchmarks.b --n 1")))
    (tmp_path / "studies" / "s" / "results" / "s.json").write_text(json.dumps(result("Study", ["c1", "c2"])))
    main, studies = (path.read_text() for path in write_results_md(tmp_path))
    assert ("## Bench\n\nMachine: m. Date: 2026-12-07. Command: `python -m benchmarks.b --n 1`.\n\nHow it is "
            "measured.\n\nEarlier: 3.\n\n| x | y |\n| --- | --- |\n| 1 | 2.00 |\n| - | - |\n\nAfter.\n\n"
            "Second\n\n| z |\n| --- |\n| a |\n") in main
    assert "## Study" not in main and "Commands:\n\n- `c1`\n- `c2`\n" in studies


def test_a_saved_result_keeps_the_history_of_the_one_it_replaces_and_needs_its_header(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "write_results_md", lambda: [])  # the repository's RESULTS.md stays as it is
    out = tmp_path / "results" / "b.json"
    first = {"benchmark": "b", "title": "B", "command": "c", "tables": [], "history": ["Before: 1."]}
    save_result(first, out)
    save_result({k: v for k, v in first.items() if k != "history"}, out)  # its next run: no history of its own
    saved = json.loads(out.read_text())
    assert saved["history"] == ["Before: 1."] and saved["machine"] == report.machine() and len(saved["date"]) == 10
    with pytest.raises(ValueError, match="lacks title, tables"):
        save_result({"benchmark": "b", "command": "c", "rows": []}, out)


def test_predictor_cost_counts_the_multiply_adds_the_linear_path_rank_and_head_width_save() -> None:
    tiny = JEPAConfig(dim=32, depth=1, heads=2, patch=16, summary_tokens=2, jepa_predictor_depth=1, predictor_dim=32,
                      predictor_depth=1, context=4, decoder_dim=16)
    d, w = tiny.summary_tokens * tiny.dim, tiny.predictor_dim  # latent features, predictor width

    def macs(**changes: object) -> float:
        return macs_per_rollout_step(JEPAWorldModel(dataclasses.replace(tiny, **changes)).eval())

    def reads_and_heads(rank: int, hidden: int) -> int:
        """A step's carried reads (world_models/jepa_reads.py): rows for the input layer, the linear path's two
        reads and both heads' reads of z_t and z_t+1 (2 x 2 x hidden), times the change's predictor_dim + rank + 1
        columns; the latent's update (d rows); the two heads' output layers run as one block-diagonal 2 hidden -> 5."""
        columns = w + rank + 1
        return (w + 2 * rank + 4 * hidden + d) * columns + 2 * hidden * 5

    assert macs(skip_rank=16, head_hidden=64) - macs(skip_rank=8, head_hidden=16) == (
        reads_and_heads(16, 64) - reads_and_heads(8, 16))


def test_token_grid_lays_patch_tokens_out_as_the_encoder_patches_and_serves_as_an_agents_features() -> None:
    k, side, dim = 2, 3, 5
    space = gym.spaces.Box(-np.inf, np.inf, (k + side * side, dim), np.float32)
    grid = TokenGrid(space, summary_tokens=k, features=16)
    obs = torch.randn(4, k + side * side, dim)
    image = grid.grid(obs)
    assert image.shape == (4, dim, side, side)
    for row in range(side):
        for col in range(side):  # row-major, as world_models.blocks.grid_positions
            assert torch.equal(image[:, :, row, col], obs[:, k + row * side + col])
    assert grid(obs).shape == (4, 16)
    moved = obs.clone()
    moved[:, [k, k + 1]] = obs[:, [k + 1, k]]  # two patch tokens trade places: a different picture
    assert not torch.allclose(grid(moved), grid(obs))

    class Tokens(gym.Env):
        observation_space, action_space = space, gym.spaces.Discrete(3)

    learner = build_agent(AgentConfig(hidden=8, layers=1), DummyVecEnv([Tokens]), seed=0, device="cpu",
                          features=(TokenGrid, {"summary_tokens": k, "features": 16}))
    assert isinstance(learner.policy.features_extractor, TokenGrid)
    assert learner.policy.get_distribution(obs).distribution.probs.shape == (4, 3)


def test_cloning_fits_a_teacher_that_a_linear_policy_can_copy_and_scores_on_held_out_rows() -> None:
    class Points(gym.Env):
        observation_space, action_space = gym.spaces.Box(-5, 5, (2,), np.float32), gym.spaces.Discrete(3)

    inputs = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    teacher = torch.tensor([[2.0, 0.0, -2.0], [0.0, 3.0, 0.0]])  # the teacher's logits are linear in the input
    targets = torch.softmax(4 * inputs @ teacher, dim=-1)
    learner = build_agent(AgentConfig(hidden=32, layers=1), DummyVecEnv([Points]), seed=0, device="cpu")
    before = clone(learner.policy, inputs, targets, split=1600, epochs=0, lr=1e-2, seed=0, name="toy")
    after = clone(learner.policy, inputs, targets, split=1600, epochs=30, lr=1e-2, seed=0, name="toy")
    assert after["val_agreement"] > 0.9 > before["val_agreement"]
    assert after["val_cross_entropy"] < before["val_cross_entropy"]


def test_dream_rates_count_reward_and_model_ends_per_step_but_not_horizon_cuts() -> None:
    class FourSteps(gym.Env):  # pays the action; after 4 steps ends (action 0) or is cut at its horizon (action 1)
        observation_space, action_space = gym.spaces.Box(0, 1, (1,), np.float32), gym.spaces.Discrete(2)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            self.t = 0
            return np.zeros(1, np.float32), {}

        def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
            self.t += 1
            return np.zeros(1, np.float32), float(action), self.t == 4 and action == 0, self.t == 4 and action == 1, {}

    class Always:
        def __init__(self, action: int) -> None:
            self.action = action

        def predict(self, obs: np.ndarray) -> tuple[np.ndarray, None]:
            return np.full(len(obs), self.action), None

    env = DummyVecEnv([FourSteps] * 2)
    assert dream_rates(Always(1), env, 80) == {"dream_reward_per_step": 1.0, "dream_ends_per_step": 0.0,
                                               "dream_steps": 80, "dream_reward_by_step": [1.0] * 4,
                                               "dream_ends_by_step": [0.0] * 4}
    assert dream_rates(Always(0), env, 79) == {"dream_reward_per_step": 0.0, "dream_ends_per_step": 0.25,
                                               "dream_steps": 80, "dream_reward_by_step": [0.0] * 4,
                                               "dream_ends_by_step": [0.0, 0.0, 0.0, 1.0]}
    assert real_rates({"scores": [3.0, 1.0], "lengths": [300, 100]}, lives=5) == {
        "real_points_per_step": 0.01, "real_lives_lost_per_step": 0.025}


def test_heads_on_play_pair_each_games_latent_with_its_own_next_one() -> None:
    class Heads:  # reward: the next latent's value; life loss: the step from one latent to the next
        def transition(self, z: torch.Tensor, z_next: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return z_next[:, 0, 0], torch.ones(len(z)), z_next[:, 0, 0] - z[:, 0, 0]

    steps = torch.arange(5.0)  # game 0's latents count up 0..4 and game 1's stay at 10, env-major within a step
    latents = torch.stack([steps, torch.full((5,), 10.0)], dim=1).reshape(10, 1, 1)
    rates = heads_on_play(Heads(), latents, num_envs=2, batch=3)  # type: ignore[arg-type]
    assert rates == {"heads_reward_per_step": (1 + 2 + 3 + 4 + 40) / 8, "heads_life_loss_per_step": 4 / 8}


def test_planning_scores_replace_only_the_entry_of_the_same_run_settings_and_games() -> None:
    score = {"mean": 2.0, "std": 1.0, "seconds": 90.0}
    entry = {"run": "runs/a", "episodes": 50, "seed": 1, "planner": "cem", "candidates": 64, "horizon": 2,
             "iterations": 2, "value_from_agent": True, "discount": 0.97, "life_loss_penalty": 1.0, "overrides": [],
             "mpc": score, "agent": None, "random": dict(score, mean=1.5), "command": "c", "date": "d", "machine": "m"}
    assert same_entry(entry, dict(entry, mpc=dict(score, mean=3.0)))  # a new score of the same thing
    for key, other in (("horizon", 8), ("value_from_agent", False), ("seed", 0), ("run", "runs/b"),
                       ("overrides", ["mpc.life_loss_penalty=3"]), ("mpc_acts", "sampled")):
        assert not same_entry(entry, dict(entry, **{key: other}))
    assert same_entry(entry, dict(entry, mpc_acts="best"))  # entries from before the field acted the best
    table = rendered(planning_score.with_tables({"runs": [entry]}))
    row = "| runs/a | cem | 64, 2, 2 | yes | 1 | best | 50 (1) | 2.00 +- 1.00 | - | 1.50 +- 1.00 | 1.5 | d, m |"
    assert row in table


def test_more_games_table_pairs_each_seed_of_mbrl_with_the_same_seed_of_the_others() -> None:
    def run(method: str, seed: int, mean: float) -> dict[str, object]:
        return {"method": method, "seed": seed, "episodes": 50, "mean": mean, "std": 1.0, "date": "d",
                "machine": "m", "command": "c"}

    runs = [run("mbrl", 0, 3.0), run("mbrl", 1, 2.0), run("mbrl", 2, 4.0), run("ppo", 0, 1.0), run("ppo", 1, 1.0),
            run("random", 0, 1.5), run("random", 1, 1.5), run("random", 2, 1.5)]
    table = rendered(breakout_100k_games.with_tables({"runs": runs}))
    assert "| mbrl | 50 | 3 | 3.00 +- 0.82 | s0: 3.00 (1.00), s1: 2.00 (1.00), s2: 4.00 (1.00) |" in table
    # seed 2 has no PPO agent: the pairs are seeds 0 and 1, differences 2 and 1, t = 1.5 / (0.707 / sqrt 2) = 3
    # two-sided p with 1 df is 1 - (2 / pi) atan(t) = 0.205; the interval is 1.5 +- 12.706 * 0.5
    assert ("- mbrl - ppo, paired over seeds 0, 1 (50 games each): +2.00, +1.00; mean +1.50, t = 3.00 with 1 df, "
            "two-sided p = 0.205, 95% interval of the mean difference -4.85 to +7.85.") in table
    assert "- mbrl - random, paired over seeds 0, 1, 2 (50 games each): +1.50, +0.50, +2.50; mean +1.50, t = 2.60" \
        in table
    assert "mpc" not in table  # no MPC rows: no MPC sentence or pairs


def test_student_t_matches_closed_forms_and_printed_tables() -> None:
    # 1 df is the Cauchy distribution: P(|T| <= t) = (2 / pi) atan(t); 2 df: t / sqrt(2 + t^2)
    assert t_within(3.0, 1) == pytest.approx(2 / np.pi * np.arctan(3.0), abs=1e-12)
    assert t_within(2.12, 2) == pytest.approx(2.12 / np.sqrt(2 + 2.12 ** 2), abs=1e-12)
    # 97.5% quantiles from printed t tables, odd and even df, small and large
    for df, quantile in ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.95, df) == pytest.approx(quantile, abs=1e-3)
    test = paired_t([2.0, 1.0, 3.0])  # mean 2, sd 1, se 1 / sqrt 3
    assert test is not None and test.df == 2 and test.t == pytest.approx(2 * np.sqrt(3))
    assert (test.low, test.high) == pytest.approx((2 - 4.3027 / np.sqrt(3), 2 + 4.3027 / np.sqrt(3)), abs=1e-3)
    assert paired_t([1.0]) is None and paired_t([1.0, 1.0]) is None
    runs = [{"method": method, "seed": seed, "episodes": 50, "mean": mean, "std": 1.0, "date": "d", "machine": "m",
             "command": "c"} for method, seed, mean in (("mbrl", 0, 9.0), ("mbrl", 1, 9.0), ("mbrl", 2, 9.0),
                                                         ("ppo", 0, 1.0), ("ppo", 1, 1.02), ("ppo", 2, 0.98))]
    table = rendered(breakout_100k_games.with_tables({"runs": runs}))
    assert "+8.00, +7.98, +8.02; mean +8.00, t = 692.82 with 2 df, two-sided p < 0.001, 95% interval" in table


def test_planning_rows_pool_the_rounds_and_name_the_own_process_row() -> None:
    config = MPCConfig(planner="cem", search=PlannerConfig(candidates=8, horizon=3, iterations=2), compile=True)
    runs = [([10.0, 30.0], [(5, 2), (7, 2)]), ([20.0, 40.0, 50.0], [(6, 2), (6, 3), (6, 2)])]
    row = summarise(config, runs, own_process=True)
    assert (row["actions"], row["median_ms"], row["round_medians_ms"]) == (5, 30.0, [20.0, 40.0])
    assert row["p95_ms"] == pytest.approx(48.0)  # numpy's linear interpolation: 40 + 0.8 * (50 - 40)
    assert (row["imagined_steps"], row["imagination_calls"], row["imagined_steps_without_dedupe"]) == (6.0, 2.2, 48)
    profile = dict.fromkeys(["batch", "step_ms", "step_without_latent_ms", "step_reading_each_latent_ms",
                             "predictor_cached_ms", "predictor_full_window_ms", "heads_ms", "encode_one_obs_ms"], 1.0)
    result = {"machine": "m", "torch_threads": 2, "load_average": 0.0, "date": "d", "command": "c",
              "target_ms": 100.0, "step_profile": profile, "largest_cem_within_target": None, "rows": [row]}
    assert "| cem | 8 | 3 | 2 | yes, own process | 5 | 30 | 48 | 20, 40 | 6 | 48 | 2 |" in rendered(
        planning.with_tables(result))


def test_more_games_table_pairs_mpc_like_mbrl_and_names_its_settings() -> None:
    settings = {"planner": "cem", "candidates": 64, "horizon": 8, "iterations": 2, "life_loss_penalty": 1.0}
    runs = [{"method": method, "seed": seed, "episodes": 50, "mean": mean, "std": 1.0, "date": "d", "machine": "m",
             "command": "c", **({"mpc": settings} if method.endswith(":mpc") else {})}
            for method, seed, mean in (("mbrl:mpc", 0, 2.0), ("mbrl:mpc", 1, 4.0), ("ppo", 0, 1.0), ("ppo", 1, 2.0))]
    table = rendered(breakout_100k_games.with_tables({"runs": runs}))
    assert "with the run's settings (cem N=64, H=8, I=2, life-loss penalty 1)" in table
    # differences 1 and 2: mean 1.5, sd 0.707, t = 1.5 / (0.707 / sqrt 2) = 3
    assert "- mbrl:mpc - ppo, paired over seeds 0, 1 (50 games each): +1.00, +2.00; mean +1.50, t = 3.00 with 1 df," \
        in table
    runs[-1]["mean"] = 3.0  # both differences +1: no spread, no t
    table = rendered(breakout_100k_games.with_tables({"runs": runs}))
    assert "+1.00, +1.00; mean +1.00, no t (the differences are all equal)." in table


def test_more_games_refuse_an_mbrl_seed_whose_run_has_not_finished(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trained = tmp_path / "breakout_100k.json"
    run = {"method": "mbrl", "seed": 0, "real_steps": 100_000, "hours": 1.0, "mean": 1.0, "std": 0.0}
    trained.write_text(json.dumps({"runs": [run, dict(run, seed=1, superseded="a bug")]}))
    monkeypatch.setattr(breakout_100k_games, "TRAINED", trained)
    with pytest.raises(SystemExit, match="no finished mbrl run for seed 1"):  # only a superseded run: not done
        breakout_100k_games.final_agent("mbrl", 1, 100_000, tmp_path, None)
    with pytest.raises(SystemExit, match="no finished mbrl run for seed 1"):  # MPC plans in that run's model
        breakout_100k_games.final_agent("mbrl:mpc", 1, 100_000, tmp_path, None)
    with pytest.raises(SystemExit, match="no finished mbrl-mpc run for seed 0"):  # only mbrl ran for seed 0
        breakout_100k_games.final_agent("mbrl-mpc", 0, 100_000, tmp_path, None)
    assert breakout_100k_games.games_seed(0) != breakout_100k_games.games_seed(1)


def test_waiting_contexts_end_with_the_ball_gone_and_no_fire_for_the_last_observations() -> None:
    fire, context = 1, 6
    ball = np.ones((5, context + 2), bool)
    ball[:, context - WAIT:context] = False  # every window: no ball in the context's last WAIT observations
    actions = np.zeros((5, context - 1 + 2), np.int64)
    actions[1, context - 2] = fire  # FIRE between the last two context observations: the serve is under way
    ball[2, context - WAIT] = True  # the ball was still there WAIT observations back
    actions[3, context - 1] = fire  # FIRE right after the context: still a waiting context
    starts = np.array([False, False, False, False, True])  # the window starts an episode
    assert waiting(ball, actions, starts, context, fire).tolist() == [True, False, False, True, False]
    steps = [0.1 * t for t in range(1, 11)]
    row = {"run_seed": 2, "horizon": 10, "waiting_contexts": 900, "imagined_contexts": 512, "probe_accuracy": 0.95,
           "probe_in_play": 0.65, "real_fire": steps, "real_fire_contexts": 80, "real_no_fire": [0.0] * 9 + [None],
           "imagined_fire": [0.0] * 10, "imagined_noop": [0.01] * 10, "fire_noop_gap": [0.04] * 10,
           "runs": "runs/bench", "command": "c"}
    other = dict(row, runs="runs/ab", run_seed=0)  # a row of another runs directory, written later
    table = rendered(serving.with_tables({"rows": [], "fire": [other, row]}))
    assert "ball in play 1 / 3 / 10 steps after the context" in table
    assert table.index("| runs/ab/mbrl-s0 |") < table.index("| runs/bench/mbrl-s2 |")  # sorted by run
    assert ("| runs/bench/mbrl-s2 | 900 (512) | 0.95 (0.65) | 0.10 / 0.30 / 1.00 (80) | 0.00 / 0.00 / 0.00 | "
            "0.01 / 0.01 / 0.01 | 0.00 / 0.00 / - | 0.04 / 0.04 / 0.04 | - | - |") in table
    row.update(control_real=[0.9] * 10, control_imagined=[0.8] * 10, right_left_gap=[0.5] * 10)
    table = rendered(serving.with_tables({"rows": [], "fire": [row]}))
    assert "| 0.04 / 0.04 / 0.04 | 0.50 / 0.50 / 0.50 | 0.90 / 0.90 / 0.90; 0.80 / 0.80 / 0.80 | - |" in table
    row.update(served_contexts=75, serve_change=0.539, serve_error=0.382, control_error=0.466)
    table = rendered(serving.with_tables({"rows": [], "fire": [row]}))
    assert "| 0.90 / 0.90 / 0.90; 0.80 / 0.80 / 0.80 | 0.54 / 0.38; 0.47 (75) |" in table


def test_serve_waits_count_the_steps_from_each_lost_life_to_the_next_fire() -> None:
    fire = 1
    #          step: 0  1  2  3  4  5  6  7  8
    actions = [1, 2, 3, 0, 2, 1, 1, 3, 0]
    lost = [False, True, False, False, False, False, False, True, False]  # lives lost at steps 1 and 7
    assert serve_waits(actions, lost, fire) == [4]  # FIRE at step 5, 4 steps after step 1; none after step 7
    assert serve_waits([1, 1], [True, False], fire) == [1]
    assert serve_waits([0, 0], [False, False], fire) == []
    row = {"agent": "mbrl", "seed": 1, "episodes": 10, "fire_share": 0.027, "median_wait": 49.0, "mean_wait": 217.0,
           "steps_per_game": 1138.3, "mean_score": 3.1, "command": "c"}
    table = rendered(serving.with_tables({"rows": [row, dict(row, median_wait=None)]}))
    assert "| mbrl | 1 | 10 | 2.7% | 49 | 217.0 | 1138 | 3.10 |" in table
    assert "| mbrl | 1 | 10 | 2.7% | - | - | 1138 | 3.10 |" in table
    dream = {"run_seed": 1, "policy": "uniform without FIRE", "steps": 20032, "reward_per_step": 0.01,
             "ends_per_step": 0.0377, "command": "c"}
    table = rendered(serving.with_tables({"rows": [row], "dream": [dream]}))
    assert "| seed 1 | uniform without FIRE | 20032 | 0.0100 | 0.0377 |" in table
    actions, _ = UniformOver([0, 2, 3], seed=0).predict(np.zeros((1000, 8)))
    assert set(actions.tolist()) == {0, 2, 3}  # never FIRE (1)


def test_ranks_and_rank_correlation() -> None:
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(4)) == 0.0
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)  # 1 - 6*2/(4*15)


def test_ranking_scores_count_only_states_where_the_real_returns_differ() -> None:
    real = np.array([[0.0, 1.0, 0.0, -1.0],  # mean 0, best 1
                     [0.5, 0.5, 0.5, 0.5]])  # nothing to rank
    perfect = ranking_scores(real.copy(), real)
    assert perfect["informative"] == 0.5 and perfect["gain"] == pytest.approx(1.0)
    assert perfect["room"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    worst = ranking_scores(-real, real)
    assert worst["gain"] == pytest.approx(-1.0) and worst["spearman"] == pytest.approx(-1.0)
    assert np.isnan(ranking_scores(real[1:], real[1:])["gain"])


def test_plan_ranking_table_shows_unrankable_horizons_as_a_dash() -> None:
    run = {"run": "runs/a", "behaviour": "agent", "every": 5, "candidates": 64, "seed": 0, "date": "2026-12-05",
           "machine": "m", "command": "python benchmarks/plan_ranking.py --runs runs/a",
           "rankings": [{"scored_by": "imagination", "states": 800, "horizon": 4, "informative": 0.0,
                         "spearman": float("nan"), "gain": float("nan"), "room": 0.0},
                        {"scored_by": "heads on real futures", "states": 100, "horizon": 24, "informative": 1.0,
                         "spearman": 0.5634, "gain": 0.88, "room": 0.618},
                        {"scored_by": "imagination + value", "against": "real + agent", "states": 100, "horizon": 3,
                         "informative": 1.0, "spearman": 0.25, "gain": 0.5, "room": 0.125}]}
    lines = section(plan_ranking.with_tables({"runs": [run]}))
    assert "| runs/a | agent | imagination | 800 (5) | 64 | 4 | 0.000 | - | - | 0.000 | 0 | 2026-12-05, m |" in lines
    assert "| runs/a | agent | heads on real futures | 100 (5) | 64 | 24 | 1.000 | 0.563 | 0.880 | 0.618 | 0 |" \
        " 2026-12-05, m |" in lines
    assert "| runs/a | agent | imagination + value vs real + agent | 100 (5) | 64 | 3 | 1.000 | 0.250 | 0.500 |" \
        " 0.125 | 0 | 2026-12-05, m |" in lines
    assert "Machine: m. Date: 2026-12-05. Command: `python benchmarks/plan_ranking.py --runs runs/a`." in lines


def test_emulator_planning_table_counts_cut_games_and_seconds_per_step() -> None:
    run = {"planner": "cem", "candidates": 32, "horizon": 16, "iterations": 2, "act": "sampled", "games": 2,
           "seed": 0, "max_steps": 500, "mean": 6.5, "std": 2.5, "scores": [4.0, 9.0], "lengths": [300, 500],
           "cut": [False, True], "seconds": [150.0, 250.0], "date": "2026-12-05", "machine": "m",
           "command": "python benchmarks/emulator_planning.py --games 2"}
    lines = section(emulator_planning.with_tables({"runs": [run]}))
    assert "| cem | 32, 16, 2 | sampled | 2 (0) | 500 | 6.50 +- 2.50 | 4, 9 | 300, 500 | 1 | 0.50 | 2026-12-05, m |" \
        in lines


def test_atari_100k_table_pairs_each_method_with_random_on_the_same_seed() -> None:
    def row(method: str, seed: int, mean: float) -> dict[str, object]:
        return {"game": "Breakout", "protocol": "published", "method": method, "seed": seed, "real_steps": 100000,
                "episodes": 50, "mean": mean, "std": 1.0, "train_hours": 1.25, "date": "2026-12-07", "machine": "m",
                "command": "python benchmarks/atari_100k.py --seeds 0 1"}

    runs = [row("value", 0, 5.0), row("random", 0, 1.5), row("value", 1, 3.0), row("random", 1, 1.0),
            row("value:tree", 0, 4.0)]
    lines = section(atari_100k.with_tables({"runs": runs, "published": {"Breakout": {"SimPLe": 16.4}}}))
    assert "| atari100k-value | Breakout | published | value | 0 | 100000 | 50 | 5.00 | 1.00 | 1.25 | 2026-12-07, m |" \
        in lines  # a row without a preset (as before it was recorded) ran the default preset
    paired = [line for line in lines if line.startswith("- atari100k-value, Breakout, published: value - random")]
    # diffs 3.5 and 2.0: sd 1.061, t = 2.75 / (1.061 / sqrt 2) = 3.67; df 1: p = 1 - 2 atan(3.67) / pi = 0.170
    assert paired == ["- atari100k-value, Breakout, published: value - random = +2.75 over 2 seed(s), t = 3.67 with 1 "
                      "df, p = 0.170"]
    assert "- atari100k-value, Breakout, published: value:tree - random = +2.50 over 1 seed(s)" in lines  # no t
    # another preset's rows are paired among themselves, never with the default preset's
    quick = [dict(row("value", 0, 2.0), preset="quick"), dict(row("random", 0, 1.0), preset="quick")]
    lines_quick = section(atari_100k.with_tables({"runs": runs + quick}))
    assert "- quick, Breakout, published: value - random = +1.00 over 1 seed(s)" in lines_quick
    assert atari_100k.missing_rows(runs, quick) == quick  # a different preset: a different row
    assert any("Breakout: SimPLe 16.4" in line for line in lines)
    # rows in the older format (a file of plain rows, as a run of the previous version writes): merged by their key
    older = {"benchmark": "atari_100k", "date": "d", "machine": "m", "runs": [runs[0], dict(runs[1], seed=2)]}
    new = atari_100k.missing_rows(runs, older["runs"])
    assert new == [dict(runs[1], seed=2)]  # seed 0's value row is there already
    merged = section(atari_100k.with_tables({"runs": runs + new}))
    seed_2 = "| atari100k-value | Breakout | published | random | 2 | 100000 | 50 | 1.50 | 1.00 | 1.25 | 2026-12-07, m"
    assert any(line.startswith(seed_2) for line in merged)
