"""Device paths: the dream, the planners and world-model training keep every tensor on the device they are given.

Each test runs on the CPU and, marked `cuda`, on a CUDA device where there is one (skipped elsewhere, the
summary says so). On the CPU the invariants hold trivially but the code paths run; on CUDA a tensor left on
(or moved to) the CPU fails them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mbrl.agents.mpc import MPCAgent, MPCConfig
from mbrl.agents.planners import PLANNERS, PlannerConfig
from mbrl.core.checkpoint import load_checkpoint
from mbrl.core.run import RunDir
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.train_world_model import CHECKPOINT, Trainer, WorldModelTrainConfig, to_train_batch
from mbrl.world_models.base import map_state
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel
from tests.replay_data import fill
from tests.toys import make_buffer, tiny_jepa

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def devices_of(*things: Any) -> set[torch.device]:
    """The devices of every tensor in (nested dicts, lists and tuples of) `things`."""
    found: set[torch.device] = set()
    map_state(lambda tensor: found.add(tensor.device), list(things))
    return found


def on(device: str) -> set[torch.device]:
    return {torch.empty(0, device=device).device}  # "cuda" -> cuda:0


def moments(optimizer: torch.optim.Optimizer | None) -> list[dict[str, torch.Tensor]]:
    """Adam's per-parameter moments (its step counts live on the CPU by PyTorch's design)."""
    assert optimizer is not None and optimizer.state
    return [{key: value for key, value in state.items() if key != "step"} for state in optimizer.state.values()]


@pytest.mark.parametrize("observation", ["latent", "pixels"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_dream_keeps_its_state_on_its_device(device: str, observation: str) -> None:
    model = tiny_jepa().to(device)
    config = DreamConfig(horizon=3, observation=observation, device=device)
    env = DreamVectorEnv(model, make_buffer(random_frames=True), 3, config, seed=0)
    obs, _ = env.reset()
    for step in range(5):  # restarts after step 3: from the prefilled pool
        obs, reward, *_ = env.step(np.array([step % 4, 1, 3]))
        assert isinstance(obs, np.ndarray) and isinstance(reward, np.ndarray)
        assert devices_of(env._state, env._latent) == on(device)
    assert env._pool is not None and devices_of(env._pool[:2]) == on(device)
    assert env.latent_cache._latents is not None and devices_of(env.latent_cache._latents) == on(device)
    assert devices_of(dict(model.state_dict())) == on(device)


@pytest.mark.parametrize("name", sorted(PLANNERS))
@pytest.mark.parametrize("device", DEVICES)
def test_mpc_plans_on_its_device(device: str, name: str) -> None:
    model = tiny_jepa().to(device)
    agent = MPCAgent(model, MPCConfig(planner=name, search=PlannerConfig(horizon=3, candidates=8, iterations=2)),
                     device=device, seed=0, value_fn=lambda z: z.mean((1, 2)))
    rng = np.random.default_rng(0)
    starts = np.ones(2, bool)
    for _ in range(3):
        actions, _ = agent.predict(rng.integers(0, 256, (2, 4, 64, 64), dtype=np.uint8), None, starts)
        assert actions.dtype == np.int64 and actions.shape == (2,)
        starts = np.array([False, True])
    assert agent.last_plan is not None
    assert devices_of(agent._latents, agent._actions, agent._length, agent._last_action, agent._warm,
                      tuple(agent.last_plan)) == on(device)
    assert agent.generator.device == next(iter(on(device)))


@pytest.mark.parametrize("device", DEVICES)
def test_world_model_training_keeps_model_optimizer_and_batches_on_its_device(device: str, tmp_path: Path) -> None:
    from mbrl.core.replay import ReplayBuffer

    model_config = JEPAConfig(frame_size=16, patch=8, dim=16, depth=1, heads=2, summary_tokens=2,
                              jepa_predictor_depth=1, predictor_dim=16, predictor_depth=1, context=3, decoder_dim=16,
                              rollout_steps=2)
    cfg = WorldModelTrainConfig(batch_size=4, seq_len=3, encoder_steps=2, dynamics_steps=2, eval_every=2,
                                val_batches=1, holdout_every=3)
    buffer = ReplayBuffer((16, 16), 4, ram_size=4)
    fill(buffer, num_streams=3, vector_steps=300, seed=0)
    run = RunDir(tmp_path)
    run.checkpoint_dir.mkdir(parents=True)
    torch.manual_seed(0)
    trainer = Trainer(run, JEPAWorldModel(model_config), buffer, cfg, torch.device(device), seed=0)

    class Quiet:
        def add_scalar(self, *args: object) -> None:
            pass

        def add_images(self, *args: object, **kwargs: object) -> None:
            pass

    trainer.train(["encoder", "dynamics"], None, Quiet(), show_progress=False)  # updates, checks, latent statistics
    trainer.run_updates("dynamics", 2, Quiet())  # the Dyna loop's refits, from cached latents
    assert devices_of(dict(trainer.model.state_dict())) == on(device)
    assert devices_of(moments(trainer.optimizer)) == on(device)
    assert trainer.latent_cache._latents is not None and devices_of(trainer.latent_cache._latents) == on(device)
    batch = buffer.sample(4, 3, np.random.default_rng(0), episodes=trainer.train_ids)
    assert devices_of(tuple(to_train_batch(batch, torch.device(device), trainer.latent_cache))) == on(device)

    saved = load_checkpoint(run.checkpoint_dir, CHECKPOINT)  # checkpoints hold CPU tensors ...
    assert devices_of(saved.tensors) == {torch.device("cpu")}
    torch.manual_seed(0)
    again = Trainer(run, JEPAWorldModel(model_config), buffer, cfg, torch.device(device), seed=0)
    again.restore(saved)  # ... and a restore puts them back on the trainer's device
    assert devices_of(moments(again.optimizer)) == on(device)
    assert devices_of(dict(again.model.state_dict())) == on(device)
