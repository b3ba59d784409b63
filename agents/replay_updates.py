"""Off-policy updates of a DQN agent on the real transitions of the replay buffer: Dyna's direct RL.

The Dyna loop's agent learns in the dream; a DQN agent can also learn from the real game's own
transitions, which carry none of the world model's errors (`loop.real_updates`). Each update
draws a batch of observations from the whole replay buffer, reads their latents from the latent
cache (the frozen encoder's, as the agent sees the real game) and fits Q(o_t, a_t) to the n-step
return with clipped rewards

    G = sum_{j<m} gamma^j sign(r_t+j) + gamma^m max_a Q_target(o_t+m, a)

where m <= `return_steps` stops at the first transition that ends an episode as the dream ends
one (a lost life or a game over with `terminate_on="life_loss"`, a game over otherwise; no
bootstrap after it), at a time-limit cut or at the newest stored row (bootstrapped from there).
The loss, optimiser and gradient clip are the agent's (SB3's DQN: Huber loss, its Adam, its
max_grad_norm); its target network is copied from the online one every `target_every` updates,
counted over all of a run's real updates so that a resumed run keeps the schedule.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import Tensor

from mbrl.core.replay import LIFE_LOSS, TERMINATED, ReplayBuffer, Stretches
from mbrl.world_models.latent_cache import LatentCache


def nstep_targets(stretches: Stretches, gamma: float, terminate_on: str) -> tuple[Tensor, Tensor, np.ndarray]:
    """The n-step returns of sampled stretches: the rewards' part (B,), the discount of the bootstrap value (B,)
    (0 after an episode end) and the buffer rows to bootstrap from (B,)."""
    ends = TERMINATED | (LIFE_LOSS if terminate_on == "life_loss" else 0)
    stored = stretches.rows[:, 1:] >= 0  # (B, L)
    ended = (stretches.flags & ends) != 0
    before_end = np.cumprod(np.concatenate([np.ones_like(ended[:, :1]), ~ended[:, :-1]], axis=1), axis=1) > 0
    counted = stored & before_end  # transitions of the return: up to and including the first end
    steps = counted.sum(1)  # m >= 1: every stretch starts at a row with a stored next row
    discounts = gamma ** np.arange(counted.shape[1])
    returns = (np.sign(stretches.rewards) * counted * discounts).sum(1)
    bootstrap = np.where((ended & counted).any(1), 0.0, gamma**steps)
    last = stretches.rows[np.arange(len(steps)), steps]
    return torch.as_tensor(returns, dtype=torch.float32), torch.as_tensor(bootstrap, dtype=torch.float32), last


def learn_from_replay(agent: BaseAlgorithm, buffer: ReplayBuffer, cache: LatentCache, updates: int, done_before: int,
                      batch_size: int, return_steps: int, terminate_on: str, target_every: int,
                      rng: np.random.Generator) -> float:
    """`updates` gradient steps of `agent` on real n-step transitions (see the module docstring); returns the mean
    loss. `done_before`: the run's real updates before these (the target network's schedule).

    Raises:
        TypeError: `agent` is not a DQN (an on-policy learner cannot learn from another policy's play).
    """
    if not isinstance(agent, DQN):
        raise TypeError(f"learning from the replay buffer needs a DQN agent, got {type(agent).__name__}")
    device = agent.device
    agent.policy.set_training_mode(True)
    losses = []
    for update in range(done_before, done_before + updates):
        stretches = buffer.sample_stretches(batch_size, return_steps, rng)
        returns, bootstrap, last = nstep_targets(stretches, agent.gamma, terminate_on)
        latents = cache.encode(np.stack([stretches.rows[:, 0], last], axis=1), device)  # (B, 2, *latent)
        with torch.no_grad():
            best_next = agent.q_net_target(latents[:, 1]).max(1).values
            target = returns.to(device) + bootstrap.to(device) * best_next
        actions = torch.as_tensor(stretches.actions[:, 0], device=device)
        q = agent.q_net(latents[:, 0]).gather(1, actions[:, None])[:, 0]
        loss = F.smooth_l1_loss(q, target)
        agent.policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.policy.parameters(), agent.max_grad_norm)
        agent.policy.optimizer.step()
        losses.append(loss.item())
        if (update + 1) % target_every == 0:
            agent.q_net_target.load_state_dict(agent.q_net.state_dict())
    agent.policy.set_training_mode(False)
    return float(np.mean(losses)) if losses else 0.0
