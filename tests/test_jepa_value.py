"""The value-aware JEPA: its losses, gradients, augmentation, TD targets, value-leaf planning, the dream's
bootstrap, and its joint loop end to end (resume after SIGKILL included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import mbrl.world_models.jepa_value as jepa_value
from mbrl.agents.planners import DiscreteSpace, ExhaustiveTree, PlannerConfig, world_model_objective
from mbrl.core.checkpoint import load_checkpoint
from mbrl.core.replay import FIRST, TERMINATED, ReplayBuffer
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.run_config import resolve_config
from mbrl.world_models.base import StepOutput, TrainBatch, WorldModel
from mbrl.world_models.jepa_value import ValueJEPAConfig, ValueJEPAWorldModel, n_step_targets, renormalize
from tests.cli_runs import mbrl_cli_killed

TINY = ValueJEPAConfig(num_actions=4, channels=(4, 8, 8), hidden=16, unroll=3, return_steps=4)


def tiny(**overrides: object) -> ValueJEPAWorldModel:
    torch.manual_seed(0)
    return ValueJEPAWorldModel(ValueJEPAConfig(**{**TINY.__dict__, **overrides}))


def batch_of(frames: Tensor, rewards: Tensor | None = None) -> TrainBatch:
    b, length = frames.shape[0], frames.shape[1] - 1
    zeros = torch.zeros(b, length, dtype=torch.bool)
    return TrainBatch(frames, torch.randint(0, 4, (b, length), generator=torch.Generator().manual_seed(1)),
                      torch.zeros(b, length) if rewards is None else rewards, zeros, zeros)


def random_frames(b: int, length: int, seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (b, length + 1, 4, 64, 64), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


# ---- shapes and the interface ------------------------------------------------------------------


def test_latent_is_a_feature_map_and_steps_keep_its_shape() -> None:
    model = tiny().eval()
    z = model.encode(random_frames(3, 1))  # (B, T, C, h, w)
    assert z.shape == (3, 2, 8, 4, 4) and model.latent_shape == (8, 4, 4)
    out = model.step(model.observe(z, torch.zeros(3, 1, dtype=torch.long)), torch.tensor([0, 1, 3]))
    assert out.latent is not None and out.latent.shape == (3, 8, 4, 4)
    assert out.reward.shape == out.cont.shape == out.life_loss.shape == (3,)
    assert model.value(out.latent).shape == (3,) and model.decode(out.latent).shape == (3, 64, 64)
    assert torch.allclose(model.value(out.latent), model.q_values(out.latent).max(-1).values)


def test_a_new_predictor_copies_its_latent() -> None:
    model = tiny().eval()
    z = model.encode(random_frames(3, 0))[:, 0]
    out = model.step(z, torch.tensor([0, 1, 2]))
    assert out.latent is not None and torch.allclose(out.latent, z, atol=1e-4)


def test_renormalize_scales_each_latent_to_the_unit_interval() -> None:
    z = torch.tensor([[[[1.0, 3.0]], [[5.0, 2.0]]]])  # (1, 2, 1, 2)
    assert torch.allclose(renormalize(z), torch.tensor([[[[0.0, 0.5]], [[1.0, 0.25]]]]), atol=1e-5)


# ---- the joint loss ------------------------------------------------------------------------------


def identity_predictor(model: ValueJEPAWorldModel) -> None:
    """Zero the transition's residual: a latent in [0, 1] steps to itself (up to renormalize's eps)."""
    with torch.no_grad():
        for p in model.transition.parameters():
            p.zero_()


def test_consistency_is_zero_for_a_perfect_predictor_and_positive_otherwise() -> None:
    model = tiny(shift=0, intensity=0.0)
    identity_predictor(model)
    static = random_frames(2, 0).expand(2, 6, 4, 64, 64).contiguous()  # o_0 = ... = o_5: identity is perfect
    with torch.no_grad():
        assert float(model.loss(batch_of(static), "joint")["consistency"]) < 1e-3  # relative to CHANGE_FLOOR
        # the identity predictor is the copying the error is measured against: about 1 on moving frames
        assert float(model.loss(batch_of(random_frames(2, 5)), "joint")["consistency"]) > 0.3
        for p in model.transition.parameters():  # a predictor that moves the latent is wrong on the static frames
            p.normal_(0, 0.3)
        assert float(model.loss(batch_of(static), "joint")["consistency"]) > 1.0


def test_td_and_reward_gradients_reach_the_encoder_and_never_the_target() -> None:
    model = tiny()
    rewards = torch.tensor([[1.0, 0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]])
    for part in ("td", "reward"):
        model.zero_grad(set_to_none=True)
        model.loss(batch_of(random_frames(2, 5), rewards), "joint")[part].backward()
        encoder = [p.grad for p in model.encoder.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in encoder), part
        assert all(p.grad is None and not p.requires_grad for p in model.target.parameters()), part


def test_the_consistency_loss_trains_the_predictor_and_not_the_encoder() -> None:
    model = tiny()
    with torch.no_grad():  # a predictor that moves the latent, so that its error has a gradient
        for p in model.transition.parameters():
            p.normal_(0, 0.3)
    model.loss(batch_of(random_frames(2, 5)), "joint")["consistency"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transition.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())


def test_the_target_follows_the_online_network_by_its_ema() -> None:
    model = tiny(target_decay=0.75)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [t.clone() for t in model.target["encoder"].parameters()]
    model.update_target()
    for old, new, online in zip(before, model.target["encoder"].parameters(), model.encoder.parameters(), strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * online)


def test_augmentation_is_applied_in_training_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = jepa_value.augment

    def counting(obs: Tensor, shift: int, intensity: float) -> Tensor:
        calls.append(len(obs))
        return original(obs, shift, intensity)

    monkeypatch.setattr(jepa_value, "augment", counting)
    model = tiny().eval()
    frames = random_frames(2, 3)
    z = model.encode(frames)
    model.act_values(frames[:, 0])
    model.step(model.observe(z, frames.new_zeros(2, 3, dtype=torch.long)), torch.tensor([1, 2]))
    assert calls == []  # acting, encoding and imagination see the frames as they are
    assert torch.equal(model.encode(frames), z)
    model.loss(batch_of(frames), "joint")
    assert calls == [2]


def test_augment_shifts_within_the_pad_and_scales_intensity() -> None:
    torch.manual_seed(3)
    obs = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    obs[:, 0, 8, 8] = 255  # one bright pixel: it moves by at most `shift` in each direction
    out = jepa_value.augment(obs, 2, 0.0)
    rows, cols = torch.nonzero(out[:, 0] > 0.5, as_tuple=True)[1:]
    assert rows.min() >= 6 and rows.max() <= 10 and cols.min() >= 6 and cols.max() <= 10
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # and it does move
    scaled = jepa_value.augment(torch.full((256, 1, 2, 2), 255, dtype=torch.uint8), 0, 0.05)
    assert 0.9 - 1e-6 <= float(scaled.min()) < 0.99 and 1.01 < float(scaled.max()) <= 1.1 + 1e-6


def test_n_step_targets_match_the_closed_form_on_a_chain() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    done = torch.tensor([[False, False, True, False]])  # a life lost in transition 2
    bootstrap = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    got = n_step_targets(rewards, done, bootstrap, discount=0.5, steps=2)
    # t=0: 1 + .5*2 + .25*V(o_2); t=1: 2 + .5*3 (done: no bootstrap); t=2: 3 (done); t=3: 4 + .5*V(o_4) (window end)
    assert torch.allclose(got, torch.tensor([[1 + 1 + 0.25 * 30, 2 + 1.5, 3.0, 4 + 0.5 * 50]]))


# ---- value at the leaf ---------------------------------------------------------------------------


class Fork(WorldModel):
    """The latent is (x, t). At t = 0, action 0 pays +0.1 and stays at x = 0 (value 0); action 1 costs -0.1 and
    reaches x = 1, whose value is 5. Later steps pay nothing and change nothing but t. The best 2-step plan
    starts with action 1, but only a planner that adds the value at its leaves can see it."""

    latent_shape = (2,)
    num_actions = 2
    config = None
    has_value = True

    def encode(self, frames: Tensor) -> Tensor:
        return torch.zeros(frames.shape[0], frames.shape[1], 2)

    def observe(self, latents: Tensor, actions: Tensor) -> Tensor:
        return latents[:, -1]

    def step(self, state: Tensor, action: Tensor, latent: bool = True) -> StepOutput:
        first = state[:, 1] == 0
        x = torch.where(first & (action == 1), 1.0, state[:, 0])
        z = torch.stack([x, state[:, 1] + 1], dim=-1)
        reward = torch.where(first, torch.where(action == 0, 0.1, -0.1), 0.0)
        ones = torch.ones(len(action))
        return StepOutput(z, z, reward, ones, 0 * ones)

    def value(self, latents: Tensor) -> Tensor:
        return 5.0 * latents[:, 0]

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError


@pytest.mark.parametrize("with_value", [False, True])
def test_the_value_leaf_tree_finds_what_the_same_horizon_without_value_misses(with_value: bool) -> None:
    model = Fork()
    planner = ExhaustiveTree(DiscreteSpace(2), PlannerConfig(horizon=2), "cpu")
    objective = world_model_objective(model, 0.9, model.value if with_value else None)
    plan = planner.plan(objective, torch.zeros(1, 2), 1)
    assert plan.actions[0, 0] == (1 if with_value else 0)
    expected = -0.1 + 0.81 * 5.0 if with_value else 0.1
    assert plan.returns[0] == pytest.approx(expected, abs=1e-6)


def test_the_tree_scores_every_sequence_once_and_refuses_too_many() -> None:
    planner = ExhaustiveTree(DiscreteSpace(4), PlannerConfig(horizon=3), "cpu")
    assert planner.samples == 64 and len({tuple(s) for s in planner.sequences.tolist()}) == 64
    with pytest.raises(ValueError, match="4\\^7 = 16384 sequences"):
        ExhaustiveTree(DiscreteSpace(4), PlannerConfig(horizon=7), "cpu")


# ---- the dream's value bootstrap -----------------------------------------------------------------


def fork_buffer() -> ReplayBuffer:
    buffer = ReplayBuffer((64, 64), 4, ram_size=128)
    stream = buffer.new_streams(1)
    for pos in range(12):
        flags = FIRST if pos == 0 else TERMINATED if pos == 11 else 0
        buffer.append(stream, np.zeros((1, 64, 64), np.uint8), np.array([0]), np.array([0.0]),
                      np.array([flags], np.uint8))
    return buffer


class DecodingFork(Fork):
    def decode(self, latents: Tensor) -> Tensor:
        return latents[..., :1, None].expand(*latents.shape[:-1], 64, 64) / 255


@pytest.mark.parametrize("bootstrap", [False, True])
def test_the_dream_bootstraps_truncated_episodes_with_the_value(bootstrap: bool) -> None:
    config = DreamConfig(horizon=2, context=1, reward="expected", value_bootstrap=bootstrap, discount=0.9)
    env = DreamVectorEnv(DecodingFork(), fork_buffer(), 2, config, seed=0)
    env.reset(seed=0)
    _, first, _, truncated, _ = env.step(np.array([1, 0]))
    assert np.allclose(first, [-0.1, 0.1]) and not truncated.any()
    _, last, terminated, truncated, _ = env.step(np.array([0, 0]))
    assert truncated.all() and not terminated.any()  # the gymnasium API is intact: still truncated
    assert np.allclose(last, [0.9 * 5.0, 0.0] if bootstrap else [0.0, 0.0])


def test_the_dream_refuses_to_bootstrap_without_a_value_head() -> None:
    class NoValue(DecodingFork):
        has_value = False

    with pytest.raises(ValueError, match="needs a world model with a value head"):
        DreamVectorEnv(NoValue(), fork_buffer(), 1, DreamConfig(context=1, value_bootstrap=True))


# ---- the joint loop ------------------------------------------------------------------------------

PRESET = ["--preset", "jepa-value-smoke", "--quiet"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbrl", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)


@pytest.mark.slow
def test_joint_run_resumes_after_sigkill_with_every_counter_and_the_optimiser(tmp_path: Path) -> None:
    run = tmp_path / "run"
    budget = 400
    proc = mbrl_cli_killed("world_model", "train-agent", *PRESET, "--run", str(run), "--set",
                           f"loop.real_steps={budget}", match={"updates": 100})  # the first with updates in it
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # the kill interrupted the run; it had not finished
    killed = load_checkpoint(run / "checkpoints", "world_model")
    assert killed.metadata["updates"] == 100 and not (run / "eval.json").exists()
    rows_before = ReplayBuffer.load(run / "replay")._rows.copy()

    done = cli("train-agent", "--resume", str(run), "--quiet")
    assert done.returncode == 0, done.stderr
    after = ReplayBuffer.load(run / "replay")
    assert np.array_equal(after._rows[: len(rows_before)], rows_before)  # flushed rows kept as they were
    joint = resolve_config("jepa-value-smoke", [f"loop.real_steps={budget}"]).joint
    final = load_checkpoint(run / "checkpoints", "world_model")
    assert budget <= after.num_steps < budget + 2
    assert final.metadata["updates"] == joint.updates_due(after.num_steps)
    steps = {int(v) for k, v in final.tensors.items() if k.startswith("optim.") and k.endswith(".step")}
    assert steps == {final.metadata["updates"]}  # Adam's state continued from the checkpoint, not from zero
    result = json.loads((run / "eval.json").read_text())
    assert result["agent"] == "value" and result["real_steps"] == after.num_steps and result["episodes"] == 1


@pytest.mark.slow
def test_joint_run_end_to_end_then_evaluate_and_plan_with_the_value(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = cli("train-agent", *PRESET, "--run", str(run))
    assert done.returncode == 0, done.stderr
    assert "mean score" in done.stdout
    evaluated = cli("evaluate", "--run", str(run), "--episodes", "1", "--quiet", "--set", "eval.num_envs=1",
                    "--set", "eval.num_workers=0")
    assert evaluated.returncode == 0, evaluated.stderr
    planned = cli("plan", "--run", str(run), "--planner", "tree", "--horizon", "2", "--episodes", "1", "--quiet",
                  "--set", "eval.num_envs=1", "--set", "eval.num_workers=0")
    assert planned.returncode == 0, planned.stderr
    assert json.loads((run / "plan-tree.json").read_text())["episodes"] == 1

    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import mbrl.envs.registration  # noqa: F401  (registers mbrl/Dream-v0)

    env = gymnasium.make("mbrl/Dream-v0", checkpoint=str(run), horizon=3, value_bootstrap=True)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 4, 4)  # the preset's feature map: (channels[-1], 4, 4)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert terminated or truncated  # the horizon of 3 ends every episode by its third step


def test_the_cli_offers_every_planner() -> None:
    from mbrl.agents.planners import PLANNERS
    from mbrl.cli import build_parser

    commands = next(a for a in build_parser("plan")._actions if a.dest == "command").choices
    planner_names = next(a for a in commands["plan"]._actions if "--planner" in a.option_strings).choices
    assert set(planner_names) == set(PLANNERS)


@pytest.mark.slow
def test_train_world_model_trains_the_value_model_offline_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    collected = cli("collect", "--preset", "jepa-value-smoke", "--steps", "120", "--run", str(run), "--quiet")
    assert collected.returncode == 0, collected.stderr
    first = cli("train-world-model", "--run", str(run), "--steps", "4", "--quiet")
    assert first.returncode == 0, first.stderr
    assert load_checkpoint(run / "checkpoints", "world_model").metadata["updates"] == 4
    again = cli("train-world-model", "--run", str(run), "--steps", "4", "--quiet")
    assert again.returncode == 2 and "already holds a world model; pass --resume" in again.stderr
    staged = cli("train-world-model", "--run", str(run), "--stage", "2", "--resume", "--quiet")
    assert staged.returncode == 2 and "trains in one joint stage; use --stage all" in staged.stderr
    more = cli("train-world-model", "--run", str(run), "--steps", "7", "--resume", "--quiet")
    assert more.returncode == 0, more.stderr
    final = load_checkpoint(run / "checkpoints", "world_model")
    assert final.metadata["updates"] == 7
    assert {int(v) for k, v in final.tensors.items() if k.startswith("optim.") and k.endswith(".step")} == {7}
