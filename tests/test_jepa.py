"""JEPA world model: shapes, RoPE, EMA target, masking, causality, checkpoints, and that training learns."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch

from mbrl.core.checkpoint import CheckpointError, load_checkpoint, load_state_dict, open_checkpoint, save_checkpoint
from mbrl.core.config import to_dict
from mbrl.core.errors import UserError
from mbrl.envs.registration import world_model_spec
from mbrl.run_config import RunConfig, resolve_config
from mbrl.world_models.base import TrainBatch, WorldModel, event_logit_shift, imagine
from mbrl.world_models.blocks import PatchEmbed, apply_rope, patchify, rope_angles
from mbrl.world_models.heads import event_losses
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel
from mbrl.world_models.jepa_encoder import motion_targets, predict_targets, random_mask
from mbrl.world_models.registry import build
from tests.toys import TINY, Walker


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
    def shapes(state: dict) -> dict:
        return {key: [tuple(v.shape) for v in value] if isinstance(value, list) else tuple(value.shape)
                for key, value in state.items()}

    ring = TINY.context  # one token per step: the window before a step's token, and the step's
    per_block = [(3, 2, ring, 16)] * TINY.predictor_depth  # (B, heads, ring, head dim)
    skip, hidden = TINY.skip_rank, 2 * TINY.head_hidden  # the reads: input layer, linear path of z and z_t-1, heads
    reads = TINY.predictor_dim + 2 * skip + 2 * hidden
    assert shapes(out.state) == {"latent": (3, 2, 32), "reads": (3, reads), "previous_read": (3, skip),
                                 "keys": per_block, "values": per_block, "key_at": (3, ring), "position": (3,),
                                 "pending": (3, TINY.predictor_dim + skip + 1)}  # the latent's change not added yet
    assert out.state["position"].tolist() == [6] * 3  # 5 context steps and 1 imagined
    short = model.observe(z[:, :1], data.actions[:, :0])  # one latent: the same shapes, nothing cached yet
    assert shapes(short) == shapes(out.state) and (short["key_at"] < 0).all()
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


def test_imagination_reads_rotary_angles_from_a_table_that_grows_with_the_rollouts(model: JEPAWorldModel) -> None:
    """The predictor's steps look up cos and sin of their token positions in a table: the values `rope_angles`
    gives for those positions, also past the table's first size, which then grows."""
    dynamics, head_dim = model.dynamics, TINY.predictor_dim // TINY.heads
    for positions in ([0, 5, 63, 2], [300, 7, 64]):
        at = torch.tensor(positions)
        for got, wanted in zip(dynamics._rope_at(at), rope_angles(at[:, None], head_dim)):
            assert torch.equal(got, wanted)
    assert dynamics._rope_table is not None and len(dynamics._rope_table[0]) > 300
    assert [t.shape for t in dynamics._rope_at(torch.zeros(0, dtype=torch.long))] == [(0, head_dim // 2)] * 2


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


def test_mask_ratio_is_honoured() -> None:
    mask = random_mask(50, 16, 0.4, torch.Generator().manual_seed(0))
    assert mask.shape == (50, 16)
    assert (mask.sum(1) == round(0.4 * 16)).all()
    assert len({tuple(row.tolist()) for row in mask}) > 40, "masks differ between observations"


def test_predictor_cannot_see_the_future() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
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


@pytest.mark.parametrize("skip_rank", [TINY.skip_rank, 8])
def test_cached_imagination_equals_the_predictor_over_the_whole_history(skip_rank: int) -> None:
    """Stepping with the key/value cache past the window gives what the full forward pass gives."""
    torch.manual_seed(0)
    model = JEPAWorldModel(dataclasses.replace(TINY, skip_rank=skip_rank)).eval()
    for weight in model.dynamics.skip.parameters():  # the linear path starts at zero; make it count
        torch.nn.init.normal_(weight, std=0.05)
    g = torch.Generator().manual_seed(3)
    context, horizon = 3, 3 * TINY.context
    z = torch.randn(2, context, 2, 32, generator=g)
    actions = torch.randint(0, 4, (2, context - 1 + horizon), generator=g)
    out = imagine(model, z, actions)
    history = torch.cat([z, out.latent], dim=1)
    torch.testing.assert_close(model.dynamics(history[:, :-1], actions)[:, context - 1 :], out.latent,
                               rtol=1e-5, atol=1e-5)


def test_predictor_history_is_a_window_of_the_last_context_steps() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    g = torch.Generator().manual_seed(4)
    z, actions = torch.randn(2, 10, 2, 32, generator=g), torch.randint(0, 4, (2, 10), generator=g)
    base = model.dynamics(z, actions)
    z2, a2 = z.clone(), actions.clone()
    z2[:, 0] += 5.0
    a2[:, 0] = (a2[:, 0] + 1) % 4
    changed = model.dynamics(z2, a2)
    # step t's token reaches back context - 1 steps per block
    first_unaffected = TINY.predictor_depth * (TINY.context - 1) + 1
    assert not torch.allclose(changed[:, first_unaffected - 1], base[:, first_unaffected - 1])
    torch.testing.assert_close(changed[:, first_unaffected:], base[:, first_unaffected:], rtol=0, atol=0)


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


def test_training_reduces_the_dynamics_loss() -> None:
    """On noise frames, whose pixel targets cannot be learnt: stage 1 learns in the texture test below."""
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).train()
    data = batch(b=4, steps=4, seed=3)
    model.loss(data, "encoder")  # sets the latent statistics
    opt = torch.optim.Adam(model.parameter_groups("dynamics"), lr=3e-3)
    first = model.loss(data, "dynamics")["total"].item()
    for _ in range(40):
        loss = model.loss(data, "dynamics")["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.loss(data, "dynamics")["total"].item() < 0.7 * first


def test_imagine_follows_the_closed_form_of_a_toy_model() -> None:
    """`imagine` on Walker (step: x += a, t += 1; reward 0.75 for a = 1, -0.25 for a = 2; life lost with
    probability 0.6 on a = 2; game over once t >= end): the context's actions go to `observe`, the rest are imagined
    in order, and every output is stacked per step."""
    walker = Walker(end=3)
    latents = torch.tensor([[[5.0, 0.0], [6.0, 0.0], [7.0, 0.0]], [[1.0, 0.0], [2.0, 0.0], [9.0, 0.0]]])  # (B, C=3, 2)
    actions = torch.tensor([[0, 1, 1, 2, 0, 1], [2, 2, 0, 0, 2, 1]])  # 2 context actions, then 4 imagined
    out = imagine(walker, latents, actions)
    observed_latents, observed_actions = walker.observed[-1]
    assert torch.equal(observed_latents, latents) and torch.equal(observed_actions, actions[:, :2])
    torch.testing.assert_close(out.latent, torch.tensor([[[8.0, 1], [10, 2], [10, 3], [11, 4]],
                                                         [[9.0, 1], [9, 2], [11, 3], [12, 4]]]))
    torch.testing.assert_close(out.reward, torch.tensor([[0.75, -0.25, 0.0, 0.75], [0.0, 0.0, -0.25, 0.75]]))
    torch.testing.assert_close(out.cont, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2))
    torch.testing.assert_close(out.life_loss, torch.tensor([[0.0, 0.6, 0.0, 0.0], [0.0, 0.0, 0.6, 0.0]]))
    torch.testing.assert_close(out.state["z"], out.latent[:, -1])


def test_imagine_gives_jepa_latents_and_heads_per_step(model: JEPAWorldModel) -> None:
    z = model.encode(batch(b=2, steps=6).frames[:, :3])
    out = imagine(model, z, batch(b=2, steps=6).actions)  # 2 context actions, then 4 imagined steps
    assert out.latent.shape == (2, 4, 2, 32) and out.reward.shape == out.cont.shape == out.life_loss.shape == (2, 4)


# ---- the mechanisms against a collapsed latent -------------------------------------------

def test_stage_1_predictor_sees_only_the_summary_tokens() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    online = torch.randn(2, 2 + 16, 32, generator=g)  # K=2 summary tokens, 16 patch tokens
    changed = online.clone()
    changed[:, 2:] += torch.randn(2, 16, 32, generator=g)
    model = JEPAWorldModel(TINY).eval()

    def predict(tokens: torch.Tensor) -> torch.Tensor:
        return predict_targets(model.jepa_predictor, model.patch_queries, tokens, model.online)

    torch.testing.assert_close(predict(changed), predict(online), rtol=0, atol=0)
    changed[:, 0] += 1.0
    assert not torch.allclose(predict(changed)[:, 2:], predict(online)[:, 2:])


def test_patchify_matches_the_patch_embedding_order() -> None:
    embed = PatchEmbed(4, 8, 16)
    x = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = patchify(x, 16) @ embed.proj.weight.flatten(1).T + embed.proj.bias  # (2, 16, 8)
    torch.testing.assert_close(embed(x), expected, rtol=1e-4, atol=1e-4)


def test_pixel_targets_are_normalised_per_patch() -> None:
    obs = torch.zeros(1, 4, 64, 64, dtype=torch.uint8)
    obs[0, :, 3, 5] = 255  # a one-pixel "ball" in patch 0, the same in all four frames
    obs[0, :, 16:32, 16:32] = 90  # a flat grey patch 5
    targets = motion_targets(obs, 16)  # (1, 16 patches, 4 * 16 * 16 pixels, then 3 * 16 * 16 differences)
    assert targets.shape == (1, 16, 7 * 256) and targets[..., 1024:].abs().max() < 1e-6, "nothing moves"
    targets = targets[..., :1024]
    assert targets[0, 1:].abs().max() < 1e-6, "flat patches (black or grey) give zero targets"
    ball = targets[0, 0]
    assert ball.mean().abs() < 1e-5 and 0.5 < ball.std() <= 1.0, "a tiny object stands out as a full-size target"
    assert ball.argmax() == 3 * 16 + 5


def test_motion_targets_add_normalised_frame_differences() -> None:
    obs = torch.zeros(1, 4, 64, 64, dtype=torch.uint8)
    for t in range(4):
        obs[0, t, 3, 5 + t] = 255  # a ball moving right one pixel per frame, in patch 0
    obs[0, :, 20:24, 16:32] = 90  # a static brick in patch 5
    targets = motion_targets(obs, 16)  # (1, 16, 4 * 256 pixels + 3 * 256 differences)
    assert targets.shape == (1, 16, 7 * 256)
    pixels, motion = targets[0, :, :1024], targets[0, :, 1024:]
    assert pixels[5].abs().max() > 0.5 and motion[5].abs().max() < 1e-6, "a static brick does not move"
    assert motion[0].abs().max() > 5 and pixels[0].abs().max() > 5, "the moving ball stands out in both parts"


def test_standardised_latents_have_zero_mean_unit_variance_on_the_batch_that_set_them() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY)
    data = batch(b=4)
    model.eval()
    model.loss(data, "encoder")
    assert model.stats_count.item() == 0, "validation does not move the statistics"
    raw = model.encode(data.frames)  # identity statistics so far
    model.train()
    model.loss(data, "encoder")  # the first update takes the batch's statistics exactly
    model.loss(data, "dynamics")
    assert model.stats_count.item() == 1, "only stage-1 (and stage-3) training moves them"
    z = model.encode(data.frames).flatten(0, 1)  # (N, K, dim)
    torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), rtol=0, atol=1e-4)
    assert ((z.var(0, correction=0) - 1).abs() < 1e-2).all()
    assert not torch.allclose(raw.flatten(0, 1), z)


def test_stage_1_training_passes_the_image_through_the_summary_tokens() -> None:
    """Two textures, checkerboard and stripes, in every patch and frame. A predictor blind to which one it sees
    can do no better than their mean: per-patch normalised pixels are +-1, half of them differ, so MSE 0.5 on the
    4 frames' pixels, and 0 on the 3 frame differences (none moves): 0.5 * 4 / 7 in all. Below that, the summary
    tokens carry the image."""
    torch.manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker, stripes = ((rows + cols) % 2) * 255, (cols % 2) * 255
    images = torch.stack([checker, stripes, checker, stripes]).to(torch.uint8)  # one texture per window
    data = batch(b=4, steps=3)._replace(frames=images[:, None, None].expand(4, 4, 4, 64, 64).contiguous())
    model = JEPAWorldModel(TINY).train()
    opt = torch.optim.Adam(model.parameter_groups("encoder"), lr=3e-3)
    for _ in range(40):
        loss = model.loss(data, "encoder")["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target()
    last = model.loss(data, "encoder")
    assert last["jepa_patches"] < 0.2, "the texture passes through the summary tokens (blind floor 0.29)"


def test_parameter_groups() -> None:
    model = JEPAWorldModel(TINY)
    encoder = {id(p) for p in model.parameter_groups("encoder")}
    dynamics = {id(p) for p in model.parameter_groups("dynamics")}
    for p in (model.patch_queries, *model.pixel_head.parameters()):
        assert id(p) in encoder and id(p) not in dynamics
    trained = {id(p) for p in model.parameter_groups("finetune")}
    assert trained == {id(p) for p in model.parameters()} - {id(p) for p in model.target.parameters()}


def test_dynamics_loss_is_the_mean_absolute_error_of_the_predicted_latents() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    data = batch()
    with torch.no_grad():
        z = model.encode(data.frames)
        pred = model.dynamics(z[:, :-1], data.actions)
        got = model.loss(data, "dynamics")
    torch.testing.assert_close(got["teacher_forcing"], (pred - z[:, 1:]).abs().mean())


def test_event_loss_reaches_the_online_encoder_and_can_be_switched_off() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).train()  # event_weight 1 by default
    assert {id(p) for p in model.event_head.parameters()} <= {id(p) for p in model.parameter_groups("encoder")}
    data = batch(b=4, steps=3, seed=5)._replace(rewards=torch.tensor([[0.0, 1, 0]] * 4),
                                                life_loss=torch.tensor([[False, False, True]] * 4))
    model.loss(data, "encoder")["events"].backward()
    assert model.online.summary.grad is not None and model.online.summary.grad.abs().sum() > 0
    assert model.target.summary.grad is None
    assert "events" not in JEPAWorldModel(dataclasses.replace(TINY, event_weight=0.0)).loss(data, "encoder")


def test_trained_model_round_trips_through_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).train()
    data = batch()
    model.loss(data, "encoder")  # sets the latent statistics
    model.eval()
    save_checkpoint(tmp_path, "world_model", model.state_dict(), {"config": dataclasses.asdict(TINY)}, step=1)
    ckpt = load_checkpoint(tmp_path, "world_model")
    assert "latent_mean" in ckpt.tensors and "patch_queries" in ckpt.tensors
    fresh = JEPAWorldModel(JEPAConfig(**ckpt.metadata["config"])).eval()
    load_state_dict(fresh, ckpt)
    z = model.encode(data.frames)
    torch.testing.assert_close(fresh.encode(data.frames), z, rtol=0, atol=0)
    a = model.step(model.observe(z, data.actions), data.actions[:, 0])
    b = fresh.step(fresh.observe(z, data.actions), data.actions[:, 0])
    torch.testing.assert_close(a.latent, b.latent, rtol=0, atol=0)
    losses = []
    for m in (model, fresh):
        torch.manual_seed(1)  # the same masks
        losses.append(m.loss(data, "encoder")["total"])
    torch.testing.assert_close(*losses, rtol=0, atol=0)


RETIRED_AT_KEPT = {"action_conditioning": "add", "action_history": 4, "predictor_skip": True, "context_noise": 0.0,
                   "dynamics_loss": "l1", "jepa_bottleneck": True, "jepa_positions": "all", "jepa_target": "motion",
                   "variance_weight": 0.0, "covariance_weight": 0.0, "standardize_latents": True,
                   "head": "standardized", "open_loop_heads": True}
"""The fields a saved world_model section held before they were removed, at the values the code kept."""


def test_a_saved_world_model_section_with_a_removed_field_loads_at_its_kept_value_and_is_refused_at_another() -> None:
    assert JEPAConfig.retired == RETIRED_AT_KEPT
    saved = to_dict(RunConfig())
    saved["world_model"].update(RETIRED_AT_KEPT)  # as runs saved before the removal wrote them
    assert resolve_config(None, [], base=saved) == RunConfig()
    saved["world_model"]["head"] = "mlp"
    with pytest.raises(UserError) as refused:
        resolve_config(None, [], base=saved)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("config key 'world_model.head' was removed")
    assert "head='standardized'" in message and "'mlp' needs an older mbrl" in message


def test_a_checkpoint_saved_with_the_removed_fields_at_their_kept_values_loads(tmp_path) -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    config = {**dataclasses.asdict(TINY), **RETIRED_AT_KEPT}
    save_checkpoint(tmp_path, "world_model", model.state_dict(), {"family": "jepa", "config": config}, step=1)
    fresh = build(*world_model_spec(open_checkpoint(tmp_path, "world_model"))).eval()
    assert fresh.config == TINY
    load_state_dict(fresh, load_checkpoint(tmp_path, "world_model"))
    frames = batch().frames
    torch.testing.assert_close(fresh.encode(frames), model.encode(frames), rtol=0, atol=0)
    save_checkpoint(tmp_path, "mlp", model.state_dict(), {"family": "jepa", "config": {**config, "head": "mlp"}},
                    step=1)  # trained with what the code no longer has
    with pytest.raises(CheckpointError, match="config key 'head' was removed: .*'mlp' needs an older mbrl"):
        world_model_spec(open_checkpoint(tmp_path, "mlp"))


def test_transition_heads_read_both_latents() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    z = torch.randn(5, *model.latent_shape)
    z_next = torch.randn(5, *model.latent_shape)
    reward, cont, life = model.transition(z, z_next)
    assert reward.shape == cont.shape == life.shape == (5,)
    assert bool(((reward >= -1) & (reward <= 1)).all() and ((cont >= 0) & (cont <= 1)).all())
    changed = z_next.clone()
    changed[0] += torch.randn(model.latent_shape)  # only transition 0 changes (not uniformly: LayerNorm ignores that)
    after = model.transition(z, changed)[0]
    assert after[0] != reward[0]
    torch.testing.assert_close(after[1:], reward[1:], rtol=0, atol=0)


def test_standardized_head_standardises_by_training_statistics_and_keeps_them_through_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    config = TINY  # the default heads are "standardized"
    model = JEPAWorldModel(config).train()
    head = model.reward_head
    z, z_next = torch.randn(64, 2, 32) * 3 + 1, torch.randn(64, 2, 32) * 3 + 1
    head(z, z_next)  # the first training batch sets the statistics exactly
    x = torch.cat([z.flatten(1), (z_next - z).flatten(1)], dim=1)
    torch.testing.assert_close(head.mean, x.mean(0))
    torch.testing.assert_close(head.var, x.var(0, correction=0))
    model.eval()
    with torch.no_grad():
        before = head(z, z_next)
        head(z + 5, z_next)  # eval mode: the statistics stay
        torch.testing.assert_close(head.mean, x.mean(0))
        torch.testing.assert_close(head(z, z_next), before, rtol=0, atol=0)  # no dropout in eval mode
    save_checkpoint(tmp_path, "world_model", model.state_dict(), {"config": dataclasses.asdict(config)}, step=1)
    ckpt = load_checkpoint(tmp_path, "world_model")
    fresh = JEPAWorldModel(JEPAConfig(**ckpt.metadata["config"])).eval()
    load_state_dict(fresh, ckpt)
    with torch.no_grad():
        torch.testing.assert_close(fresh.reward_head(z, z_next), before, rtol=0, atol=0)


def test_event_logit_shift_moves_the_trained_prior_to_the_natural_one() -> None:
    trained = torch.tensor([0.1, 0.6, 0.3, 0.2, 0.4], dtype=torch.float64)
    natural = torch.tensor([0.01, 0.95, 0.04, 0.01, 0.03], dtype=torch.float64)
    shift = event_logit_shift(trained, natural)
    # a head that learnt only the prior predicts the trained rates; shifted, it predicts the natural ones
    torch.testing.assert_close((trained[:3].log() + shift[:3]).softmax(-1), natural[:3])
    torch.testing.assert_close(torch.sigmoid(torch.logit(trained[3:]) + shift[3:]), natural[3:])
    torch.testing.assert_close(event_logit_shift(natural, natural), torch.zeros(5, dtype=torch.float64))
    assert event_logit_shift(torch.zeros(5), torch.zeros(5)).abs().max() == 0  # an event never seen


def test_calibrated_heads_predict_fewer_events_and_keep_through_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    z, z_next = torch.randn(6, *model.latent_shape), torch.randn(6, *model.latent_shape)
    before = model.transition(z, z_next)
    trained = torch.tensor([0.0, 0.9, 0.1, 0.05, 0.2])
    model.calibrate_events(trained, torch.tensor([0.0, 0.99, 0.01, 0.005, 0.02]))
    after = model.transition(z, z_next)
    assert (after[0] < before[0]).all() and (after[1] > before[1]).all() and (after[2] < before[2]).all()
    save_checkpoint(tmp_path, "world_model", model.state_dict(), {}, step=1)
    fresh = JEPAWorldModel(TINY).eval()
    load_state_dict(fresh, load_checkpoint(tmp_path, "world_model"))
    torch.testing.assert_close(fresh.event_shift, model.event_shift, rtol=0, atol=0)

    old = {k: v for k, v in model.state_dict().items() if k != "event_shift"}  # saved before calibration existed
    save_checkpoint(tmp_path, "old", old, {}, step=1)
    fresh = JEPAWorldModel(TINY).eval()
    load_state_dict(fresh, load_checkpoint(tmp_path, "old"))
    assert fresh.event_shift.abs().max() == 0
    for a, b in zip(fresh.transition(z, z_next), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_validation_scores_the_corrected_heads_and_training_the_raw_ones() -> None:
    torch.manual_seed(0)
    raw = JEPAWorldModel(TINY)
    calibrated = copy.deepcopy(raw)  # the same weights and statistics, then the prior correction
    calibrated.calibrate_events(torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5]), torch.tensor([0.0, 0.99, 0.01, 0.01, 0.01]))
    data = batch()

    def losses(model: JEPAWorldModel, training: bool, data: TrainBatch = data) -> dict[str, torch.Tensor]:
        model.train(training)
        torch.manual_seed(1)  # the same dropout and decoder picks
        with torch.no_grad():
            return model.loss(data, "dynamics")

    trained, trained_calibrated = losses(raw, True), losses(calibrated, True)
    for name in ("reward", "end", "teacher_forcing"):  # training scores the raw heads
        torch.testing.assert_close(trained_calibrated[name], trained[name], rtol=0, atol=0)
    validated, validated_calibrated = losses(raw, False), losses(calibrated, False)
    assert validated_calibrated["reward"] != validated["reward"] and validated_calibrated["end"] != validated["end"]
    torch.testing.assert_close(validated_calibrated["teacher_forcing"], validated["teacher_forcing"], rtol=0, atol=0)
    eventless = data._replace(terminated=torch.zeros_like(data.terminated), life_loss=torch.zeros_like(data.life_loss))
    assert losses(calibrated, False, eventless)["end"] < losses(raw, False, eventless)["end"]  # rarer ends score better


def head_inputs(model: JEPAWorldModel, data: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The (z_t, z_next) pairs the reward head reads in one stage-2 loss."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.reward_head.register_forward_hook(lambda _m, args, _out: seen.append((args[0], args[1])))
    with torch.no_grad():
        model.loss(data, "dynamics")
    hook.remove()
    (pairs,) = seen
    return pairs


def test_heads_learn_from_real_teacher_forced_and_open_loop_pairs(model: JEPAWorldModel) -> None:
    data = batch(b=2, steps=5)
    z_t, z_n = head_inputs(model, data)
    steps, rollout = 5, TINY.rollout_steps
    pairs = 2 * steps + rollout
    assert z_t.shape == z_n.shape == (2 * pairs, *model.latent_shape)
    z = model.encode(data.frames)
    start = steps + 1 - rollout
    with torch.no_grad():
        open_loop = imagine(model, z[:, :start], data.actions).latent  # predictions of o_start .. o_L
    per_window = z_n.unflatten(0, (2, pairs))
    torch.testing.assert_close(per_window[:, :steps], z[:, 1:])  # real pairs first
    torch.testing.assert_close(per_window[:, 2 * steps :], open_loop, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z_t.unflatten(0, (2, pairs))[:, 2 * steps + 1 :], open_loop[:, :-1],
                               rtol=1e-4, atol=1e-4)  # the open loop's pairs read two predictions


def test_event_losses_match_each_pair_to_its_transition() -> None:
    data = batch(b=2, steps=4)
    at = torch.tensor([3, 0, 3])
    classes = data.rewards.sign().long()[:, at] + 1  # (2, 3)
    ends = torch.stack([data.terminated, data.life_loss], dim=-1).float()[:, at]
    sure_reward = torch.nn.functional.one_hot(classes.flatten(), 3).float() * 40 - 20
    sure_end = ends.flatten(0, 1) * 40 - 20
    reward, end = event_losses(sure_reward, sure_end, data, at)
    assert reward < 1e-6 and end < 1e-6
    wrong = event_losses(sure_reward, sure_end, data, torch.tensor([1, 2, 2]))
    assert wrong[0] > 1 or wrong[1] > 1  # the same logits against other transitions


@pytest.mark.parametrize("skip_rank", [TINY.skip_rank, 8])
def test_imagination_reads_folded_weights_that_follow_every_update(skip_rank: int) -> None:
    """Without autograd the heads and the linear path fold their input's construction (and the head's
    standardisation) into cached weights; that gives what the layers give, also after the weights and
    statistics change in place."""
    torch.manual_seed(0)
    model = JEPAWorldModel(dataclasses.replace(TINY, skip_rank=skip_rank))
    z, actions = torch.randn(6, 5, 2, 32) * 2 + 1, torch.randint(0, 4, (6, 5))

    def both() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model.eval()
        with torch.enable_grad():
            layers = [model.dynamics(z, actions), *model.transition(z[:, 0], z[:, 1])]
        with torch.no_grad():
            folded = [model.dynamics(z, actions), *model.transition(z[:, 0], z[:, 1])]
        return [x.detach() for x in layers], folded

    for _ in range(2):  # the second time after every parameter and statistic moved
        for weight in model.dynamics.skip.parameters():
            torch.nn.init.normal_(weight, std=0.05)
        model.train()
        model.transition(z[:, 0] * 3, z[:, 2])  # training moves the standardized heads' statistics
        layers, folded = both()
        for a, b in zip(layers, folded):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))


def test_imagination_with_carried_reads_equals_reading_every_latent() -> None:
    """`observe` states carry the linear reads of their latent and update them by the step's low-rank change
    (world_models/jepa_reads.py): over three context windows of steps that gives the latents and events of
    reading each new latent again (a state from `dynamics.prefill` alone), also after the weights move, and
    steps that skip the latent change nothing after them."""
    torch.manual_seed(0)
    model = JEPAWorldModel(dataclasses.replace(TINY, skip_rank=8)).eval()
    g = torch.Generator().manual_seed(1)
    z, actions = torch.randn(3, 4, 2, 32, generator=g), torch.randint(0, 4, (3, 3 + 3 * TINY.context), generator=g)
    for _ in range(2):  # the second time after every parameter and statistic moved
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # also makes the linear path, which starts at zero, count
            for module in (model.reward_head, model.end_head):
                module.mean.add_(0.1 * torch.randn_like(module.mean))
                module.var.mul_(1.0 + torch.rand_like(module.var))
        carried, plain = model.observe(z, actions[:, :3]), model.dynamics.prefill(z, actions[:, :3])
        assert "reads" in carried and "reads" not in plain
        for t in range(3, actions.shape[1]):
            wanted = t % 3 == 0  # the steps between skip the latent: later steps add it
            a, b = model.step(carried, actions[:, t], latent=wanted), model.step(plain, actions[:, t])
            assert (a.latent is None) == (not wanted)
            for x, y in zip(a[1:], b[1:]):
                if x is not None:
                    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
            carried, plain = a.state, b.state


def test_fitted_latent_stats_standardise_the_fitting_frames_exactly_and_replace_the_running_ones() -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    frames = torch.randint(0, 256, (3, 40, TINY.frame_stack, TINY.frame_size, TINY.frame_size), dtype=torch.uint8)
    model.latent_mean.fill_(5.0)  # running statistics that lag the encoder
    model.fit_latent_stats(iter(frames))  # three batches of 40 observations
    with torch.no_grad():
        latents = model.encode(frames.flatten(0, 1)[:, None])[:, 0]  # (120, K, dim)
    assert latents.mean(0).abs().max() < 1e-4
    var = latents.var(0, correction=0)
    raw = var * (model.latent_var + 1e-6) / model.latent_var  # undo the epsilon of `standardize`
    assert torch.allclose(raw, torch.ones(()), atol=1e-3)


def _chained_steps(model: JEPAWorldModel, batches: tuple[int, ...]) -> list[torch.Tensor]:
    """Rewards, life losses and (every other step) latents of imagined steps from fixed contexts, each step
    from a fresh context of the given batch size (so a compiled step meets several sizes)."""
    out = []
    for i, b in enumerate(batches):
        g = torch.Generator().manual_seed(i)
        state = model.observe(torch.randn(b, 4, *model.latent_shape, generator=g),
                              torch.randint(0, 4, (b, 3), generator=g))
        for t in range(3):
            step = model.step(state, torch.randint(0, 4, (b,), generator=g), latent=t % 2 == 1)
            state = step.state
            out += [step.reward, step.life_loss] + ([step.latent] if step.latent is not None else [])
    return out


def _tree(model: JEPAWorldModel, seed: int, problems: int) -> tuple[dict[str, Any], list[Any], list[torch.Tensor]]:
    """A context of `problems` rows and a tree of three depths from it: every row branches into all actions, then
    two more steps (parents given, then None): the context's state, the parents and the actions."""
    g = torch.Generator().manual_seed(seed)
    state = model.observe(torch.randn(problems, 4, *model.latent_shape, generator=g),
                          torch.randint(0, 4, (problems, 3), generator=g))
    first = torch.arange(problems).repeat_interleave(4)
    second = torch.randint(0, len(first), (3 * problems,), generator=g)  # some nodes branch twice, some stop
    actions = [torch.arange(4).repeat(problems)] + [torch.randint(0, 4, (len(second),), generator=g) for _ in "ab"]
    return state, [first, second, None], actions


@pytest.mark.parametrize(("latent", "changes"), [
    (False, {}), (True, {}),
    (False, {"context": 2}),  # a ring shorter than the tree's paths
])
def test_step_tree_gives_the_steps_of_copied_parent_states(latent: bool, changes: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = JEPAWorldModel(dataclasses.replace(TINY, **changes)).eval()
    state, parents, actions = _tree(model, 0, 2)
    parents.append(torch.tensor([5, 0, 0, 3, 2]))  # a fourth depth: nodes of one parent and none of others
    actions.append(torch.tensor([1, 0, 3, 2, 2]))
    before = {key: value.clone() for key, value in state.items() if isinstance(value, torch.Tensor)}
    tree = model.step_tree(state, parents, actions, latent=latent)  # JEPA's own: all depths in one function
    for key, value in before.items():
        assert torch.equal(state[key], value), f"the tree consumed the context's {key}"
    wanted = WorldModel.step_tree(model, state, parents, actions, latent=latent)  # steps of select_state copies
    assert [len(r) for r in tree.reward] == [8, 6, 6, 5] and (tree.latent is None) == (not latent)
    for got, expected in zip(tree[1:], wanted[1:], strict=True):
        if got is not None:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert tree.state.keys() == wanted.state.keys()
    for key, expected in wanted.state.items():  # the rings too: a next tree or step continues from them
        torch.testing.assert_close(tree.state[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    follow = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(model.step(tree.state, follow).reward, model.step(wanted.state, follow).reward)


@pytest.mark.slow
def test_compiled_imagination_gives_the_eager_trees() -> None:
    torch.manual_seed(0)
    eager = JEPAWorldModel(TINY).eval()
    compiled = JEPAWorldModel(TINY).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_imagination()
    for seed, problems in enumerate((2, 3)):  # one graph of three depths meets two sets of sizes
        got = compiled.step_tree(*_tree(compiled, seed, problems), latent=True)
        wanted = eager.step_tree(*_tree(eager, seed, problems), latent=True)
        for a, b in zip(got[1:], wanted[1:], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    from mbrl.world_models.jepa_reads import tree_with_reads

    assert compiled._tree_with_reads is not tree_with_reads, "it did not fall back to eager steps"


@pytest.mark.slow
def test_compiled_imagination_compiles_a_tree_once_for_contexts_of_any_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-latent context's newest latent is a view of the context and a longer one's a copy with other strides:
    the compiled function gets both as new tensors, so one graph serves both (before, a plan a few actions into a
    game compiled again for ~10 s: a graph traced with a view guards on its base)."""
    graphs: list[torch.fx.GraphModule] = []

    def counting(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        graphs.append(graph)
        return graph.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(
        fn, dynamic=kwargs["dynamic"], fullgraph=kwargs["fullgraph"], backend=counting))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    model.compile_imagination()
    parents = [torch.zeros(4, dtype=torch.long), torch.arange(4).repeat_interleave(4)]
    actions = [torch.arange(4), torch.arange(4).repeat(4)]
    try:
        for context in (1, 3, 2):
            g = torch.Generator().manual_seed(context)
            state = model.observe(torch.randn(1, context, *model.latent_shape, generator=g),
                                  torch.randint(0, 4, (1, context - 1), generator=g))
            tree = model.step_tree(state, parents, actions)
            assert [len(r) for r in tree.reward] == [4, 16]
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1


def test_imagination_falls_back_to_eager_when_compiling_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        def fails(*args: object, **kwargs: object) -> object:
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    model = JEPAWorldModel(TINY).eval()
    with torch.no_grad():
        wanted = _chained_steps(model, (3,))
        model.compile_imagination()
        with pytest.warns(UserWarning, match="compiled imagination failed .*no C.. compiler.*imagining eagerly"):
            got = _chained_steps(model, (3,))
    for a, b in zip(got, wanted, strict=True):
        assert torch.equal(a, b)
