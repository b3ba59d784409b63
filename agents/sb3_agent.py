"""stable-baselines3 agents that learn in the dream and act in the real game.

`build_agent` makes a PPO, A2C or DQN learner over a dream `VecEnv` (latent observations);
`LatentAgent` lets it play real frame stacks by encoding them with the same world model first
(what `mbrl.envs.wrappers.LatentObservation` does for an env); `agent_tensors` / `restore_agent`
save and load its networks, optimiser state and counters as safetensors + JSON, so a
checkpoint never unpickles anything (SB3's own `save` zips pickles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv

from mbrl.core.checkpoint import Checkpoint, CheckpointError, load_optimizer, load_state_dict, optimizer_tensors
from mbrl.core.config import check_ranges
from mbrl.envs.wrappers import encode_observations
from mbrl.world_models.base import WorldModel

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN}


@dataclass(frozen=True)
class AgentConfig:
    """The SB3 learner trained in the dream.

    Attributes:
        algo: "ppo", "a2c" or "dqn".
        learning_rate: optimiser step size.
        gamma: discount factor.
        hidden: width of the policy / value MLP layers.
        layers: hidden layers of the MLPs.
        n_steps: PPO / A2C: steps per dream env between updates.
        batch_size: PPO minibatch, DQN batch.
        n_epochs: PPO epochs per rollout.
        gae_lambda: PPO / A2C advantage smoothing.
        ent_coef: PPO / A2C entropy bonus.
        buffer_size: DQN replay capacity (dream transitions; not checkpointed, refilled after a resume); it holds
            two latents per transition, so at most 1,000,000 (8 GB at the default JEPA's 512 floats).
        learning_starts: DQN steps before learning starts.
        train_freq: DQN env steps between updates.
        gradient_steps: DQN gradient steps per update (-1: as many as the env steps since the last, i.e. one per
            transition of every env).
        return_steps: DQN steps of its n-step return target (1: the one-step target).
        target_update_interval: DQN steps between target-network syncs.
        exploration_fraction: DQN share of each `learn` call over which epsilon decays.
        exploration_final_eps: DQN final epsilon.
    """

    algo: str = "ppo"
    learning_rate: float = 3e-4
    gamma: float = 0.99
    hidden: int = 256
    layers: int = 2
    n_steps: int = 32
    batch_size: int = 256
    n_epochs: int = 4
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    buffer_size: int = 50_000
    learning_starts: int = 1_000
    train_freq: int = 4
    gradient_steps: int = 1
    return_steps: int = 1
    target_update_interval: int = 2_000
    exploration_fraction: float = 0.1
    exploration_final_eps: float = 0.05

    ranges: ClassVar[dict[str, str]] = {
        "learning_rate": "(0, 1]", "gamma": "[0, 1]", "hidden": "[1, 8192]", "layers": "[1, 64]",
        "n_steps": "[1, 100_000]", "batch_size": "[1, 65_536]", "n_epochs": "[1, 1000]", "gae_lambda": "[0, 1]",
        "ent_coef": "[0, inf)", "buffer_size": "[1, 1_000_000]", "learning_starts": "[0, 1_000_000_000]",
        "train_freq": "[1, 1_000_000]", "gradient_steps": "[-1, 100_000]", "return_steps": "[1, 1000]",
        "target_update_interval": "[1, 1_000_000_000]", "exploration_fraction": "[0, 1]",
        "exploration_final_eps": "[0, 1]"}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {sorted(ALGOS)}, got {self.algo!r}")


def build_agent(config: AgentConfig, env: VecEnv, seed: int, device: torch.device | str,
                features: tuple[type[BaseFeaturesExtractor], dict[str, Any]] | None = None) -> BaseAlgorithm:
    """A fresh SB3 learner of `config.algo` with an MLP policy over `env`'s (latent) observations.

    `features` (an extractor class and its keyword arguments) replaces SB3's flattening of the
    observations before the MLP, e.g. with a network that knows their layout.
    """
    policy_kwargs: dict[str, Any] = {"net_arch": [config.hidden] * config.layers}
    if features is not None:
        policy_kwargs.update(features_extractor_class=features[0], features_extractor_kwargs=features[1])
    common: dict[str, Any] = {
        "learning_rate": config.learning_rate, "gamma": config.gamma, "seed": seed, "device": device, "verbose": 0,
        "policy_kwargs": policy_kwargs,
    }
    if config.algo == "ppo":
        common.update(n_steps=config.n_steps, batch_size=config.batch_size, n_epochs=config.n_epochs,
                      gae_lambda=config.gae_lambda, ent_coef=config.ent_coef)
    elif config.algo == "a2c":
        common.update(n_steps=config.n_steps, gae_lambda=config.gae_lambda, ent_coef=config.ent_coef)
    else:
        common.update(buffer_size=config.buffer_size, learning_starts=config.learning_starts,
                      batch_size=config.batch_size, train_freq=config.train_freq,
                      gradient_steps=config.gradient_steps, n_steps=config.return_steps,
                      target_update_interval=config.target_update_interval,
                      exploration_fraction=config.exploration_fraction,
                      exploration_final_eps=config.exploration_final_eps)
    return ALGOS[config.algo]("MlpPolicy", env, **common)


def explore(actions: np.ndarray, epsilon: float, num_actions: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (K,) `actions` with each replaced, with probability `epsilon`, by a uniformly random one (in place)."""
    chosen = rng.random(len(actions)) < epsilon
    actions[chosen] = rng.integers(0, num_actions, size=int(chosen.sum()))
    return actions


class LatentAgent:
    """An SB3 learner trained on dream latents, playing real uint8 (K, S, H, W) frame stacks.

    `predict` has SB3's signature (for `mbrl.evaluate`); calling the agent (the collection
    policy of the Dyna loop) samples actions and replaces each by a uniformly random one with
    probability `epsilon`.

    Args:
        model: the learner.
        world_model: encodes frames to the latents the learner was trained on (on `device`).
        device: torch device of the encoding.
        epsilon: random-action probability when called.
        seed: seeds the exploration.
    """

    def __init__(self, model: BaseAlgorithm, world_model: WorldModel, device: torch.device, epsilon: float = 0.0,
                 seed: int | list[int] = 0) -> None:
        self.model, self.world_model, self.device, self.epsilon = model, world_model, device, epsilon
        self.rng = np.random.default_rng(seed)

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        latents = encode_observations(self.world_model, observation, self.device)
        actions, _ = self.model.predict(latents, deterministic=deterministic)
        return np.asarray(actions, dtype=np.int64), None

    def __call__(self, observation: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        return explore(self.predict(observation)[0], self.epsilon, self.world_model.num_actions, self.rng)


def agent_tensors(model: BaseAlgorithm) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A learner's networks and optimiser state as checkpoint tensors, and its counters as metadata."""
    tensors = {f"policy.{k}": v for k, v in model.policy.state_dict().items()}
    optim, optim_meta = optimizer_tensors(model.policy.optimizer, "agent_optim.")
    tensors.update(optim)
    meta = {"num_timesteps": model.num_timesteps, "n_updates": int(getattr(model, "_n_updates", 0)),
            "n_calls": int(getattr(model, "_n_calls", 0)), "optimizer": optim_meta}
    if isinstance(model, DQN):  # its non-deterministic `predict` acts at random with this probability
        meta["exploration_rate"] = float(model.exploration_rate)
    return tensors, meta


def restore_agent(model: BaseAlgorithm, ckpt: Checkpoint, meta: dict[str, Any]) -> None:
    """Load what `agent_tensors` saved (`meta` is its metadata) into a learner built with the same config.

    Raises:
        CheckpointError: the checkpoint does not match the learner's networks or optimiser.
    """
    load_state_dict(model.policy, ckpt, prefix="policy.")
    load_optimizer(model.policy.optimizer, ckpt, "agent_optim.", meta["optimizer"], model.device)
    try:
        model.num_timesteps = int(meta["num_timesteps"])
        model._n_updates = int(meta["n_updates"])  # type: ignore[attr-defined]
        if hasattr(model, "_n_calls"):
            model._n_calls = int(meta["n_calls"])
        if isinstance(model, DQN):  # SB3 starts a DQN at 0 (greedy) until it learns; checkpoints before
            # 2026-12-05 lack the rate, which is the final epsilon after any of the loop's learn calls
            model.exploration_rate = float(meta.get("exploration_rate", model.exploration_final_eps))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.path} lacks the agent's counters: {exc}") from None


def value_function(model: BaseAlgorithm) -> Callable[[torch.Tensor], torch.Tensor]:
    """The learner's critic as a planner's terminal value: latents (M, *latent_shape) -> values (M,).

    PPO and A2C: the value head; DQN: the largest Q-value.
    """
    policy = model.policy

    @torch.no_grad()
    def value(latents: torch.Tensor) -> torch.Tensor:
        obs = latents.to(policy.device, torch.float32)
        if isinstance(policy, ActorCriticPolicy):
            return policy.predict_values(obs).reshape(-1).to(latents.device)
        q_net = policy.q_net  # DQN
        assert isinstance(q_net, torch.nn.Module)
        return q_net(obs).max(dim=-1).values.to(latents.device)

    return value
