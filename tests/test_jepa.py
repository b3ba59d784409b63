"""JEPA world model: shapes, RoPE, EMA target, masking, causality, checkpoints, and that training learns."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mbrl.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from world_models.base import TrainBatch, imagine
from world_models.blocks import apply_rope, rope_angles
from world_models.jepa import JEPAConfig, JEPAWorldModel

TINY = JEPAConfig(dim=32, depth=1, heads=2, patch=16, summary_tokens=2, jepa_predictor_depth=1, predictor_dim=32,
                  predictor_depth=2, context=4, decoder_dim=16, rollout_steps=2)


def batch(b: int = 3, steps: int = 5, seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    return TrainBatch(
        frames=torch.randint(0, 256, (b, steps + 1, 4, 64, 64), generator=g, dtype=torch.uint8),
        actions=torch.randint(0, 4, (b, steps), generator=g),
        rewards=torch.randint(-1, 2, (b, steps), generator=g).float(),
        terminated=torch.rand(b, steps, generator=g) < 0.1,
        life_loss=torch.rand(b, steps, generator=g) < 0.2,
    )


@pytest.fixture
def model() -> JEPAWorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel(TINY).eval()


def test_shapes(model: JEPAWorldModel) -> None:
    data = batch()
    z = model.encode(data.frames)
    assert z.shape == (3, 6, 2, 32) and model.latent_shape == (2, 32)
    frames = model.decode(z)
    assert frames.shape == (3, 6, 64, 64) and frames.min() >= 0 and frames.max() <= 1
    state = model.observe(z, data.actions[:, :5])
    out = model.step(state, torch.tensor([0, 1, 3]))
    assert out.latent.shape == (3, 2, 32)
    for prob in (out.cont, out.life_loss):
        assert prob.shape == (3,) and ((prob >= 0) & (prob <= 1)).all()
    assert out.reward.shape == (3,) and (out.reward.abs() <= 1).all()
    assert out.state["latents"].shape == (3, 4, 2, 32) and out.state["actions"].shape == (3, 3)
    for stage in ("encoder", "dynamics", "finetune"):
        losses = model.loss(data, stage)
        assert torch.isfinite(losses["total"]) and losses["total"].ndim == 0


def test_rope_depends_only_on_relative_position() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    positions = torch.tensor([[0, 0], [1, 3], [2, 1], [4, 4], [3, 0]])

    def scores(shift: int) -> torch.Tensor:
        cos, sin = rope_angles(positions + shift, 16)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).T

    torch.testing.assert_close(scores(0), scores(7), atol=1e-4, rtol=1e-4)
    cos, sin = rope_angles(positions, 16)
    assert not torch.allclose(apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).T, q @ k.T)


def test_ema_target_gets_no_gradients_and_follows_the_ema_rule(model: JEPAWorldModel) -> None:
    model.train()
    model.loss(batch(), "encoder")["total"].backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert any(p.grad is not None for p in model.online.parameters())
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target.parameters()]
    online = [p.clone() for p in model.online.parameters()]
    model.update_target()
    for new, old, o in zip(model.target.parameters(), before, online):
        torch.testing.assert_close(new, TINY.ema_decay * old + (1 - TINY.ema_decay) * o)


def test_mask_ratio_is_honoured(model: JEPAWorldModel) -> None:
    mask = model.random_mask(50, torch.Generator().manual_seed(0))
    assert mask.shape == (50, 16)
    assert (mask.sum(1) == round(0.4 * 16)).all()
    assert len({tuple(row.tolist()) for row in mask}) > 40, "masks differ between observations"


@pytest.mark.parametrize("conditioning", ["token", "cross"])
def test_predictor_cannot_see_the_future(conditioning: str) -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(dataclasses.replace(TINY, action_conditioning=conditioning)).eval()
    g = torch.Generator().manual_seed(2)
    z, actions = torch.randn(2, 6, 2, 32, generator=g), torch.randint(0, 4, (2, 6), generator=g)
    base = model.dynamics(z, actions)
    z2, a2 = z.clone(), actions.clone()
    z2[:, 4:] += 5.0
    a2[:, 4:] = (a2[:, 4:] + 1) % 4
    changed = model.dynamics(z2, a2)
    torch.testing.assert_close(changed[:, :4], base[:, :4])
    assert not torch.allclose(changed[:, 4:], base[:, 4:])
    a3 = actions.clone()
    a3[:, 2] = (a3[:, 2] + 1) % 4
    assert not torch.allclose(model.dynamics(z, a3)[:, 2], base[:, 2]), "the prediction depends on the action"


def test_checkpoint_round_trip_gives_identical_outputs(model: JEPAWorldModel, tmp_path) -> None:
    save_checkpoint(tmp_path, "world_model", model.state_dict(), {"config": dataclasses.asdict(TINY)}, step=3)
    ckpt = load_checkpoint(tmp_path, "world_model")
    fresh = JEPAWorldModel(JEPAConfig(**ckpt.metadata["config"])).eval()
    load_state_dict(fresh, ckpt)
    data = batch()
    z = model.encode(data.frames)
    torch.testing.assert_close(fresh.encode(data.frames), z, rtol=0, atol=0)
    a = model.step(model.observe(z, data.actions), data.actions[:, 0])
    b = fresh.step(fresh.observe(z, data.actions), data.actions[:, 0])
    torch.testing.assert_close(a.latent, b.latent, rtol=0, atol=0)
    torch.testing.assert_close(model.decode(z), fresh.decode(z), rtol=0, atol=0)


def test_training_reduces_each_stage_loss() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).train()
    data = batch(b=4, steps=4, seed=3)
    for stage in ("encoder", "dynamics"):
        params = model.parameter_groups(stage)
        opt = torch.optim.Adam(params, lr=3e-3)
        first = model.loss(data, stage)["total"].item()
        for _ in range(40):
            loss = model.loss(data, stage)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if stage == "encoder":
                model.update_target()
        assert model.loss(data, stage)["total"].item() < 0.7 * first, stage


def test_imagine_equals_stepping_by_hand(model: JEPAWorldModel) -> None:
    data = batch(b=2, steps=6)
    z = model.encode(data.frames[:, :3])
    out = imagine(model, z, data.actions)  # 2 context actions, then 4 imagined steps
    assert out.latent.shape == (2, 4, 2, 32) and out.reward.shape == (2, 4)
    state = model.observe(z, data.actions[:, :2])
    for t in range(4):
        step = model.step(state, data.actions[:, 2 + t])
        state = step.state
        torch.testing.assert_close(out.latent[:, t], step.latent, rtol=0, atol=0)
        torch.testing.assert_close(out.life_loss[:, t], step.life_loss, rtol=0, atol=0)
