"""The planning objective of a world model: discounted imagined return of every candidate, in one batch.

For a candidate a_0 .. a_{H-1} imagined from a real context, with per-step predicted reward
r_t, continue probability c_t and life-loss probability l_t:

    return = sum_t discount^t * (prod_{s<t} c_s) * (r_t - life_loss_penalty * l_t)
             + discount^H * (prod_{s<H} c_s) * value_fn(z_H)      (if a value_fn is given)

The life-loss penalty charges an expected lost life like a negative reward. In Breakout a
lost life is far easier to foresee (the ball passes the paddle) than a brick hit is to score
with a weak reward head, so a penalty of ~1 makes the planner keep the ball in play.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from agents.planners.base import Objective
from world_models.base import StepOutput, WorldModel, map_state
from world_models.blocks import tensor_versions

ValueFn = Callable[[Tensor], Tensor]
"""latents (M, *latent_shape) -> values (M,): a critic to see past the horizon."""


PARALLEL_FROM = 128
"""Imagined steps of fewer rollouts than this run on one thread (see `world_model_objective`)."""

_THREAD_COUNT = threading.Lock()
"""Held by an objective call while it switches torch's (process-wide) thread count."""


def world_model_objective(world_model: WorldModel, discount: float = 0.99, value_fn: ValueFn | None = None,
                          life_loss_penalty: float = 0.0, dedupe: bool = True,
                          parallel_from: int = PARALLEL_FROM, tree_levels: int | None = None) -> Objective:
    """Build `objective(state, action_sequences) -> returns` from the WorldModel interface.

    `state` is the world model's imagination state of B problems (`observe` of their real
    contexts; tensors, or dicts / tuples of tensors, with the batch dim first). All B x N
    candidates are imagined together, one `world_model.step` per timestep.

    Discrete candidates (int64 (B, N, H)) that share a prefix share its imagination: each
    step is taken only for the distinct (prefix, action) pairs, which is exact for a
    deterministic world model and saves most of the early steps (at most A^(t+1) distinct
    prefixes at step t) and much more once a planner's distribution has narrowed. Continuous
    candidates (B, N, H, D), or `dedupe=False`, imagine every candidate.

    With dedupe, the first L steps of every discrete action sequence (all A^L prefixes of each
    problem, the tree's first levels) are imagined once per state and kept for the next calls
    with the same state, the planner's later rounds: those rounds then start at step L, with L
    fewer `step` calls each. Automatic L (`tree_levels` None): the largest with A^L <= N / 2
    (a plan's first round meets nearly all of those prefixes anyway) and L < H; at N=512, H=12,
    I=4 on the default JEPA model (A=4, L=4) a plan makes 36 calls instead of 48 and took 0.85
    (two threads) and 0.91 (one) of the time, alternating per action in one process, the same
    actions chosen. A state changed in place since (a step consumes its state) is recognised by
    its tensors' version counters and gets a new tree.

    Steps of fewer than `parallel_from` rollouts (the first steps of a plan, when few prefixes
    differ) run on one thread and larger ones on torch's threads: on 2 CPU cores a second thread
    costs more in synchronisation than it saves on small batches (CEM at N=512, H=12, I=4 on the
    default JEPA model, alternating per action: 175 ms per action on one thread, 147 on two, 130
    switching at 128 rollouts). The thread count is process-wide, so calls from several Python
    threads run one at a time.

    Args:
        world_model: the model to imagine with.
        discount: per-step discount.
        value_fn: optional terminal value of the last imagined latent.
        life_loss_penalty: return charged per expected lost life (0: none).
        dedupe: imagine shared discrete prefixes once.
        parallel_from: rollouts from which a step uses more than one thread.
        tree_levels: L above (None: automatic, 0: none).
    """
    tree: dict[str, Any] = {}  # the last state's first levels: "state", "key", "nodes", "total", "alive"

    @torch.no_grad()
    def objective(state: Any, action_sequences: Tensor) -> Tensor:
        with _THREAD_COUNT:  # the count is process-wide: calls from other Python threads wait
            threads = torch.get_num_threads()
            try:
                return imagined_returns(state, action_sequences, threads)
            finally:
                torch.set_num_threads(threads)

    def imagined_returns(state: Any, action_sequences: Tensor, threads: int) -> Tensor:
        b, n, horizon = action_sequences.shape[:3]
        flat = action_sequences.flatten(0, 1)  # (B*N, H[, D])
        discrete = not flat.is_floating_point()
        shared = dedupe and discrete and flat.ndim == 2
        # node: (B*N,) the row of `state` each candidate's imagination is at
        node = torch.arange(b, device=flat.device).repeat_interleave(n)
        if not shared:
            state, node = _select(state, node), torch.arange(b * n, device=flat.device)
        total = torch.zeros(b * n, device=flat.device)
        alive = torch.ones(b * n, device=flat.device)
        weight, start = 1.0, 0
        levels = (_auto_levels(world_model.num_actions, n, horizon) if tree_levels is None
                  else min(tree_levels, horizon - 1)) if shared else 0
        if levels:
            state = first_levels(state, b, levels, threads)
            for t in range(levels):  # the row of each candidate's prefix in the tree's last level
                node = node * world_model.num_actions + flat[:, t]
            total, alive = tree["total"][node], tree["alive"][node]
            weight, start = discount**levels, levels
        latent = None
        for t in range(start, horizon):
            want_latent = value_fn is not None and t == horizon - 1  # only a value reads a latent
            if shared:
                pairs = node * world_model.num_actions + flat[:, t]
                unique, node = torch.unique(pairs, return_inverse=True)  # node: (B*N,) into unique
                torch.set_num_threads(threads if len(unique) >= parallel_from else 1)
                out = world_model.step(_select(state, unique // world_model.num_actions),
                                       unique % world_model.num_actions, latent=want_latent)
            else:
                torch.set_num_threads(threads if len(flat) >= parallel_from else 1)
                out = world_model.step(state, flat[:, t], latent=want_latent)
            state = out.state
            total = total + weight * alive * gain(out)[node]
            alive = alive * out.cont[node]
            weight *= discount
            latent = out.latent
        if value_fn is not None:
            if latent is None:
                raise RuntimeError(f"{type(world_model).__name__}.step gave no latent although asked for one")
            total = total + weight * alive * value_fn(latent)[node]
        return total.view(b, n)

    def gain(out: StepOutput) -> Tensor:
        """An imagined step's reward, less the penalty for its expected lost lives."""
        return out.reward - life_loss_penalty * out.life_loss if life_loss_penalty else out.reward

    def first_levels(state: Any, b: int, levels: int, threads: int) -> Any:
        """The imagination state of all A^levels action prefixes of each of the b problems, row p * A^levels +
        (the prefix as a base-A number), with their returns and continue products in tree["total"], ["alive"]:
        kept while `state` is the same object, unchanged."""
        tensors = _tensors(state)
        key = (levels, tensor_versions(tensors))
        if tree.get("state") is state and tree["key"] == key:
            return tree["nodes"]
        actions = world_model.num_actions
        total = torch.zeros(b, device=tensors[0].device)
        alive, weight, nodes = torch.ones_like(total), 1.0, state
        for _ in range(levels):
            parent = torch.arange(len(total), device=total.device).repeat_interleave(actions)
            action = torch.arange(actions, device=total.device).repeat(len(total))
            torch.set_num_threads(threads if len(parent) >= parallel_from else 1)
            out = world_model.step(_select(nodes, parent), action, latent=False)
            total = total[parent] + weight * alive[parent] * gain(out)
            alive = alive[parent] * out.cont
            weight *= discount
            nodes = out.state
        tree.update(state=state, key=key, nodes=nodes, total=total, alive=alive)
        return nodes

    return objective


def _auto_levels(actions: int, candidates: int, horizon: int) -> int:
    """The largest L with actions^L <= candidates / 2 and L < horizon (see `world_model_objective`)."""
    levels = 0
    while actions ** (levels + 1) <= candidates // 2 and levels + 1 < horizon:
        levels += 1
    return levels


def _tensors(state: Any) -> list[Tensor]:
    """Every tensor of a (nested) imagination state."""
    found: list[Tensor] = []
    map_state(found.append, state)
    return found


def _select(state: Any, index: Tensor) -> Any:
    """Rows `index` of every tensor in a (nested) imagination state, batch dim first."""
    return map_state(lambda tensor: tensor.index_select(0, index), state)
