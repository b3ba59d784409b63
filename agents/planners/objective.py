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

from mbrl.agents.planners.base import Objective
from mbrl.world_models.base import TreeOutput, WorldModel, map_state
from mbrl.world_models.blocks import tensor_versions

ValueFn = Callable[[Tensor], Tensor]
"""latents (M, *latent_shape) -> values (M,): a critic to see past the horizon."""


PARALLEL_FROM = 256
"""Trees whose widest depth may have fewer rollouts than this run on one thread (see `world_model_objective`)."""

_THREAD_COUNT = threading.Lock()
"""Held by an objective call while it switches torch's (process-wide) thread count."""


def world_model_objective(world_model: WorldModel, discount: float = 0.99, value_fn: ValueFn | None = None,
                          life_loss_penalty: float = 0.0, dedupe: bool = True,
                          parallel_from: int = PARALLEL_FROM, tree_levels: int | None = None) -> Objective:
    """Build `objective(state, action_sequences) -> returns` from the WorldModel interface.

    `state` is the world model's imagination state of B problems (`observe` of their real
    contexts; tensors, or dicts / tuples of tensors, with the batch dim first). All B x N
    candidates are imagined together, in one `world_model.step_tree` call per objective call
    (a planner's round), which a family may run as one compiled call (JEPA does).

    Discrete candidates (int64 (B, N, H)) that share a prefix share its imagination: the tree
    has one node per distinct (prefix, action) pair, which is exact for a deterministic world
    model and saves most of the early steps (at most A^(t+1) distinct prefixes at step t) and
    much more once a planner's distribution has narrowed. Continuous candidates (B, N, H, D), or
    `dedupe=False`, imagine every candidate.

    With dedupe, the first L steps of every discrete action sequence (all A^L prefixes of each
    problem, the tree's first levels) are imagined once per state and kept for the next calls
    with the same state, the planner's later rounds: those rounds then start at step L. Automatic
    L (`tree_levels` None): the largest with A^L <= N / 2 (a plan's first round meets nearly all
    of those prefixes anyway) and L < H; at N=512, H=12, I=4 on the default JEPA model (A=4, L=4)
    this took 0.85 (two threads) and 0.91 (one) of the time when each depth was a call of its
    own, alternating per action in one process, the same actions chosen. A state changed in
    place since (a step consumes its state) is recognised by its tensors' version counters and
    gets a new tree.

    Trees whose widest depth may have fewer than `parallel_from` rollouts (B x N in a round, B x
    A^L at the first levels) run on one thread and larger ones on torch's threads: on 2 CPU cores
    a second thread costs more in synchronisation than it saves on small batches. The count
    depends on the budget only, not on how far a plan's distribution has narrowed, so that a
    compiled world model, whose code is compiled for one thread count, compiles once per budget.
    The thread count is process-wide, so calls from several Python threads run one at a time.

    Args:
        world_model: the model to imagine with.
        discount: per-step discount.
        value_fn: optional terminal value of the last imagined latent.
        life_loss_penalty: return charged per expected lost life (0: none).
        dedupe: imagine shared discrete prefixes once.
        parallel_from: the widest depth from which a tree uses more than one thread.
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
        actions = world_model.num_actions
        flat = action_sequences.flatten(0, 1)  # (B*N, H[, D])
        shared = dedupe and not flat.is_floating_point() and flat.ndim == 2
        node = torch.arange(b, device=flat.device).repeat_interleave(n)  # (B*N,) each candidate's row of `state`
        levels = (_auto_levels(actions, n, horizon) if tree_levels is None
                  else min(tree_levels, horizon - 1)) if shared else 0
        total, alive = torch.zeros(b, device=flat.device), torch.ones(b, device=flat.device)  # of the rows of `state`
        if levels:
            state, total, alive = first_levels(state, b, levels, threads)
            for t in range(levels):  # the row of each candidate's prefix in the tree's last level
                node = node * actions + flat[:, t]
        # the tree of the remaining steps: per depth its nodes' parents and actions
        parents: list[Tensor | None] = []
        steps: list[Tensor] = []
        for t in range(levels, horizon):
            if shared:  # one node per distinct (prefix, action); `node`: each candidate's
                unique, node = torch.unique(node * actions + flat[:, t], return_inverse=True)
                parents.append(unique // actions)
                steps.append(unique % actions)
            else:  # one node per candidate: the first depth copies each candidate's row of `state`
                parents.append(node if t == levels else None)
                steps.append(flat[:, t])
        if not shared:
            node = torch.arange(b * n, device=flat.device)
        torch.set_num_threads(threads if b * n >= parallel_from else 1)  # b * n: the widest a depth can be
        out = world_model.step_tree(state, parents, steps, latent=value_fn is not None)
        total, alive, weight = accumulate(total, alive, parents, out, discount**levels)
        if value_fn is not None:
            if out.latent is None:
                raise RuntimeError(f"{type(world_model).__name__}.step_tree gave no latent although asked for one")
            total = total + weight * alive * value_fn(out.latent)
        return total[node].view(b, n)

    def accumulate(total: Tensor, alive: Tensor, parents: list[Tensor | None], out: TreeOutput,
                   weight: float) -> tuple[Tensor, Tensor, float]:
        """Returns and continue products of a tree's last depth, from those of its roots and the imagined steps; the
        weight of the next step."""
        for parent, reward, cont, life_loss in zip(parents, out.reward, out.cont, out.life_loss, strict=True):
            if parent is not None:
                total, alive = total[parent], alive[parent]
            step_gain = reward - life_loss_penalty * life_loss if life_loss_penalty else reward
            total = total + weight * alive * step_gain
            alive = alive * cont
            weight *= discount
        return total, alive, weight

    def first_levels(state: Any, b: int, levels: int, threads: int) -> tuple[Any, Tensor, Tensor]:
        """The imagination state of all A^levels action prefixes of each of the b problems, row p * A^levels +
        (the prefix as a base-A number), with their returns and continue products: kept while `state` is the
        same object, unchanged."""
        tensors = _tensors(state)
        key = (levels, tensor_versions(tensors))
        if tree.get("state") is not state or tree["key"] != key:
            actions, device = world_model.num_actions, tensors[0].device
            sizes = [b * actions**depth for depth in range(levels)]  # parents per depth: node i's parent is i // A
            parents: list[Tensor | None] = [torch.arange(size, device=device).repeat_interleave(actions)
                                            for size in sizes]
            steps = [torch.arange(actions, device=device).repeat(size) for size in sizes]
            torch.set_num_threads(threads if sizes[-1] * actions >= parallel_from else 1)  # the widest depth
            out = world_model.step_tree(state, parents, steps)
            total, alive, _ = accumulate(torch.zeros(b, device=device), torch.ones(b, device=device), parents, out,
                                         1.0)
            tree.update(state=state, key=key, nodes=out.state, total=total, alive=alive)
        return tree["nodes"], tree["total"], tree["alive"]

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
