"""Planners and the MPC agent: closed-form optima on toy world models, seeding, warm starts, the real JEPA model."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecMonitor
from torch import Tensor

from mbrl.agents.mpc import MPCAgent, MPCConfig, shift
from mbrl.agents.planners import (
    CEM,
    MPPI,
    PLANNERS,
    BoxSpace,
    Categorical,
    DiscreteSpace,
    Gaussian,
    Plan,
    PlannerConfig,
    RandomShooting,
    world_model_objective,
)
from mbrl.agents.sb3 import DreamVecEnv
from mbrl.agents.sb3_agent import AgentConfig, build_agent, value_function
from mbrl.envs.dream import DreamConfig, DreamVectorEnv
from mbrl.world_models.base import StepOutput, TrainBatch, WorldModel
from mbrl.world_models.jepa import JEPAWorldModel
from tests.toys import TINY, Walker, make_buffer

TARGET = (1, 3, 2, 2, 1, 3)  # the one sequence that earns the big reward
H = len(TARGET)


class Chain(WorldModel):
    """Two chains in closed form; the latent is (t, on_path, on_distractor).

    Following TARGET earns 1 per step and 4 more at its last step (return 10); the distractor,
    action 0 at every step, earns 0.5 per step and 1 more at the end (return 4). Leaving a
    chain earns nothing for the rest of the sequence. Never ends, no lives.
    """

    latent_shape = (3,)
    num_actions = 4
    config = None

    def __init__(self) -> None:
        super().__init__()
        self.target = torch.tensor(TARGET)
        self.steps = 0  # rollouts stepped, to see that shared prefixes are imagined once

    def encode(self, frames: Tensor) -> Tensor:
        return torch.zeros(*frames.shape[:2], 3)

    def observe(self, latents: Tensor, actions: Tensor) -> dict[str, Tensor]:
        return {"z": latents[:, -1].clone()}

    def step(self, state: dict[str, Tensor], action: Tensor, latent: bool = True) -> StepOutput:
        self.steps += len(action)
        t, path, distractor = state["z"].unbind(-1)
        last = (t == H - 1).float()
        path = path.bool() & (action == self.target[t.long().clamp_max(H - 1)])
        distractor = distractor.bool() & (action == 0)
        reward = path.float() * (1 + 4 * last) + distractor.float() * (0.5 + last)
        z = torch.stack([t + 1, path.float(), distractor.float()], dim=-1)
        ones = torch.ones(len(action))
        return StepOutput({"z": z}, z, reward, ones, 0 * ones)

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError


def chain_start(b: int) -> dict[str, Tensor]:
    return {"z": torch.tensor([[0.0, 1.0, 1.0]]).repeat(b, 1)}


def chain_plan(name: str, seed: int, b: int = 1, **overrides: Any) -> Plan:
    config = PlannerConfig(**{"horizon": H, "candidates": 128, "iterations": 6, "min_prob": 0.05,
                              **overrides})
    planner = PLANNERS[name](DiscreteSpace(4), config)
    objective = world_model_objective(Chain(), discount=1.0)
    return planner.plan(objective, chain_start(b), b, torch.Generator().manual_seed(seed))


def test_cem_and_mppi_find_the_optimum_and_random_shooting_does_worse() -> None:
    """Over 8 seeds x 4 problems at a budget of 768 candidates: 4,096 sequences, one optimum, one distractor."""
    returns = {name: torch.cat([chain_plan(name, seed, b=4).returns for seed in range(8)]) for name in PLANNERS}
    for name in ("cem", "mppi"):
        assert (returns[name] == 10).float().mean() >= 0.9, name
        plan = chain_plan(name, 0, b=2)
        assert plan.actions.tolist() == [list(TARGET)] * 2 and plan.returns.tolist() == [10, 10]
    assert (returns["shooting"] == 10).float().mean() < 0.4
    assert (returns["tree"] == 10).all()  # it scores all 4^6 sequences
    for name in ("cem", "mppi"):
        assert returns["shooting"].mean() < returns[name].mean() - 2, name


def test_same_seed_same_plan_and_different_seeds_differ() -> None:
    for name in ("cem", "mppi", "shooting"):  # the sampling planners (the tree draws nothing)
        first = chain_plan(name, 3, b=2, iterations=1, candidates=8)
        again = chain_plan(name, 3, b=2, iterations=1, candidates=8)
        assert torch.equal(first.actions, again.actions)
        assert all(torch.equal(x, y) for x, y in zip(first.distribution, again.distribution))
        others = {tuple(chain_plan(name, s, iterations=1, candidates=8).actions[0].tolist()) for s in range(6)}
        assert len(others) > 1, name


def test_refit_smoothing_and_min_prob() -> None:
    space, config = DiscreteSpace(4), PlannerConfig(smoothing=0.5, min_prob=0.05)
    prior = space.prior(1, 2, torch.device("cpu"))
    candidates = torch.tensor([[[1, 2], [1, 3]]])  # (B=1, N=2, H=2)
    probs = space.refit(prior, candidates, torch.tensor([[0.5, 0.5]]), config).probs[0]
    # step 0: freq (0, 1, 0, 0) -> smoothed (1/8, 5/8, 1/8, 1/8) -> 0.05 + 0.8 * p
    assert torch.allclose(probs[0], torch.tensor([0.15, 0.55, 0.15, 0.15]))
    assert torch.allclose(probs.sum(-1), torch.ones(2)) and (probs >= 0.05).all()
    elites = CEM(space, PlannerConfig(candidates=10, elite_fraction=0.2)).weights(torch.arange(10.0)[None])
    assert elites[0, 8:].tolist() == [0.5, 0.5] and elites[0, :8].sum() == 0
    mppi = MPPI(space, PlannerConfig(temperature=0.5)).weights(torch.tensor([[0.0, 2.0, 4.0], [1.0, 1.0, 1.0]]))
    assert torch.allclose(mppi[0], torch.tensor([-4.0, -2.0, 0.0]).softmax(0)), "std 2: exp((R - 4) / 1)"
    assert torch.allclose(mppi[1], torch.full((3,), 1 / 3)), "equal returns: uniform weights"


def test_shooting_uses_the_whole_budget_in_one_call() -> None:
    calls: list[tuple[int, ...]] = []

    def objective(state: object, sequences: Tensor) -> Tensor:
        calls.append(tuple(sequences.shape))
        return sequences.float().sum(-1)

    RandomShooting(DiscreteSpace(3), PlannerConfig(horizon=5, candidates=16, iterations=3)).plan(objective, None, 2)
    CEM(DiscreteSpace(3), PlannerConfig(horizon=5, candidates=16, iterations=3)).plan(objective, None, 2)
    assert calls == [(2, 48, 5)] + [(2, 16, 5)] * 3


def test_warm_start_shift() -> None:
    probs = torch.rand(2, 5, 4).softmax(-1)
    prior = DiscreteSpace(4).prior(2, 5, torch.device("cpu"))
    shifted = shift(Categorical(probs), prior)
    assert isinstance(shifted, Categorical)
    assert torch.equal(shifted.probs[:, :-1], probs[:, 1:]) and torch.equal(shifted.probs[:, -1], prior.probs[:, -1])
    mean, std = torch.randn(2, 5, 3), torch.rand(2, 5, 3)
    box = BoxSpace((-1.0,) * 3, (1.0,) * 3)
    g = shift(Gaussian(mean, std), box.prior(2, 5, torch.device("cpu")))
    assert isinstance(g, Gaussian)
    assert torch.equal(g.mean[:, :-1], mean[:, 1:]) and torch.equal(g.std[:, :-1], std[:, 1:])
    assert (g.mean[:, -1] == 0).all() and (g.std[:, -1] == 1).all()


@pytest.mark.parametrize("name", ["cem", "mppi"])
def test_continuous_planners_find_the_optimum_of_a_quadratic(name: str) -> None:
    goal = torch.tensor([[0.3, -0.5], [0.0, 0.8], [-0.6, 2.0]])  # (H=3, D=2); 2.0 lies outside the box

    def objective(state: Tensor, sequences: Tensor) -> Tensor:  # (B, N, H, D) -> (B, N)
        return -(sequences - goal - state[:, None, None]).square().sum((-1, -2))

    space = BoxSpace((-1.0, -1.0), (1.0, 1.0))
    config = PlannerConfig(horizon=3, candidates=256, iterations=8, temperature=0.3, min_std=0.01)
    offsets = torch.tensor([[0.0, 0.0], [0.1, -0.1]])  # two problems, optima shifted
    plan = PLANNERS[name](space, config).plan(objective, offsets, 2, torch.Generator().manual_seed(0))
    optimum = (goal + offsets[:, None]).clamp(-1, 1)
    assert plan.actions.shape == (2, 3, 2) and (plan.actions.abs() <= 1).all()
    assert torch.allclose(plan.actions, optimum, atol=0.05), plan.actions


class Fixed(WorldModel):
    """reward = a, cont = 1 - 0.2 a, life loss = 0.1 a; the latent counts the actions' sum."""

    latent_shape = (1,)
    num_actions = 3
    config = None

    def encode(self, frames: Tensor) -> Tensor:
        raise NotImplementedError

    def observe(self, latents: Tensor, actions: Tensor) -> Tensor:
        return latents[:, -1]

    def step(self, state: Tensor, action: Tensor, latent: bool = True) -> StepOutput:
        a = action.float()
        z = state + a[:, None]
        return StepOutput(z, z, a, 1 - 0.2 * a, 0.1 * a)

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError


@pytest.mark.parametrize("dedupe", [True, False])
def test_objective_matches_a_hand_computed_return(dedupe: bool) -> None:
    objective = world_model_objective(Fixed(), discount=0.9, value_fn=lambda z: z[:, 0], life_loss_penalty=2.0,
                                      dedupe=dedupe)
    sequences = torch.tensor([[[1, 2, 0], [0, 0, 0]], [[1, 2, 0], [2, 2, 2]]])  # (B=2, N=2, H=3)
    returns = objective(torch.tensor([[0.0], [1.0]]), sequences)
    # [1, 2, 0] from z=0: rewards 1, 2, 0; continues 0.8, 0.6, 1; life losses 0.1, 0.2, 0; final z 3
    first = (1 + 0.9 * 0.8 * 2) - 2.0 * (0.1 + 0.9 * 0.8 * 0.2) + 0.9**3 * 0.8 * 0.6 * 3
    # [2, 2, 2] from z=1: continues 0.6 each, final z 7
    third = (2 + 0.9 * 0.6 * 2 + 0.81 * 0.36 * 2) - 2.0 * 0.2 * (1 + 0.9 * 0.6 + 0.81 * 0.36) + 0.729 * 0.216 * 7
    expected = torch.tensor([[first, 0.9**3 * 0.0], [first + 0.729 * 0.48, third]])
    assert torch.allclose(returns, expected, atol=1e-5)


def test_shared_prefixes_are_imagined_once() -> None:
    model = Chain()
    objective = world_model_objective(model, discount=1.0)
    sequences = torch.tensor([[[1, 3, 0], [1, 3, 1], [1, 0, 0]]])  # prefixes: 1 | 13, 10 | 130, 131, 100
    objective(chain_start(1), sequences)
    assert model.steps == 1 + 2 + 3


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches gain nothing from a second thread, and on a loaded machine two threads are ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def jepa() -> JEPAWorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel(TINY).eval()


def test_dedupe_matches_full_imagination_on_jepa(jepa: JEPAWorldModel) -> None:
    g = torch.Generator().manual_seed(0)
    state = jepa.observe(torch.randn(2, 3, *jepa.latent_shape, generator=g), torch.randint(0, 4, (2, 2), generator=g))
    sequences = torch.randint(0, 2, (2, 16, 5), generator=g)  # many shared prefixes
    value = lambda z: z.mean((1, 2))  # noqa: E731
    fast = world_model_objective(jepa, 0.95, value, life_loss_penalty=0.5)(state, sequences)
    full = world_model_objective(jepa, 0.95, value, life_loss_penalty=0.5, dedupe=False)(state, sequences)
    assert fast.shape == (2, 16) and torch.allclose(fast, full, atol=1e-5)
    # steps consume their state (JEPA writes its key/value cache in place); the objective steps copies,
    # so a planner can score candidates from one state again and again
    again = world_model_objective(jepa, 0.95, value, life_loss_penalty=0.5)(state, sequences)
    torch.testing.assert_close(again, fast, rtol=0, atol=0)


def test_objective_runs_small_trees_on_one_thread_and_gives_back_the_callers_threads(jepa: JEPAWorldModel) -> None:
    g = torch.Generator().manual_seed(0)
    state = jepa.observe(torch.randn(1, 3, *jepa.latent_shape, generator=g), torch.randint(0, 4, (1, 2), generator=g))
    sequences = torch.randint(0, 4, (1, 64, 4), generator=g)
    seen = []
    step_tree = jepa.step_tree

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(([len(actions) for actions in args[2]], torch.get_num_threads()))
        return step_tree(*args, **kwargs)

    jepa.step_tree = spy  # type: ignore[method-assign]
    torch.set_num_threads(2)
    returns = world_model_objective(jepa, parallel_from=32)(state, sequences)
    assert torch.get_num_threads() == 2
    # the first levels (N=64: L=2, the widest 16 nodes) on one thread, then a round (up to 64) on two
    assert [threads for _, threads in seen] == [1, 2] and seen[0][0] == [4, 16]
    torch.testing.assert_close(world_model_objective(jepa, parallel_from=1)(state, sequences), returns)


def frames(k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, 4, 64, 64), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_mpc_agent_with_jepa(jepa: JEPAWorldModel, name: str) -> None:
    config = MPCConfig(planner=name, search=PlannerConfig(horizon=4, candidates=16, iterations=2))
    agent = MPCAgent(jepa, config, seed=0)
    starts = np.ones(3, bool)
    for step in range(6):
        actions, state = agent.predict(frames(3, step), None, starts, deterministic=True)
        assert actions.shape == (3,) and actions.dtype == np.int64 and ((actions >= 0) & (actions < 4)).all()
        assert state is None
        starts = np.zeros(3, bool)
    assert agent._length.tolist() == [4, 4, 4]  # TINY.context = 4
    assert agent.last_plan is not None and agent.last_plan.actions.shape == (3, 4)

    previous = actions
    agent.predict(frames(3, 9), None, np.array([False, True, False]))
    assert agent._length.tolist() == [4, 1, 4]
    z = jepa.encode(torch.as_tensor(frames(3, 9))[:, None])[:, 0]
    assert torch.equal(agent._latents[1], z[1].expand(4, -1, -1)) and (agent._actions[1] == 0).all()
    assert torch.equal(agent._latents[0, -1], z[0])
    assert agent._actions[0, -1] == int(previous[0]), "the action taken is appended to the history"
    single = agent(frames(1, 3)[0])
    assert single.shape == () and 0 <= single < 4


class ChainFromFrames(Chain):
    """The chain, every real observation encoded as its start (t 0, on both paths)."""

    def encode(self, frames: Tensor) -> Tensor:
        return torch.tensor([0.0, 1.0, 1.0]).expand(*frames.shape[:2], 3)


@pytest.mark.parametrize("name", ["cem", "mppi", "tree"])
def test_mpc_agent_acts_the_first_action_of_the_chains_optimum(name: str) -> None:
    """End to end (frames -> encode -> observe -> plan -> act): TARGET returns 10, the distractor 4."""
    config = MPCConfig(planner=name, discount=1.0, life_loss_penalty=0.0,
                       search=PlannerConfig(horizon=H, candidates=128, iterations=6, min_prob=0.05))
    agent = MPCAgent(ChainFromFrames(), config, seed=0)
    actions, _ = agent.predict(frames(2, 0), None, np.ones(2, bool), deterministic=True)
    assert actions.tolist() == [TARGET[0]] * 2
    assert agent.last_plan is not None and agent.last_plan.returns.tolist() == [10.0, 10.0]


def linear_critic(algo: str) -> BaseAlgorithm:
    """A learner over Walker's latents (x, t) whose critic is set by hand: PPO's value 2 tanh(x / 100) - tanh(t / 10)
    + 0.5; DQN's Q-values (2x, t, x - t + 1) for x, t >= 0 (one ReLU layer that passes x and t through)."""
    venv = VecMonitor(DreamVecEnv(DreamVectorEnv(Walker(), make_buffer(), 2, DreamConfig(horizon=4), seed=0)))
    learner = build_agent(AgentConfig(algo=algo, hidden=2, layers=1, n_steps=8, batch_size=16), venv, seed=0,
                          device="cpu")
    with torch.no_grad():
        if algo == "ppo":
            hidden, out = learner.policy.mlp_extractor.value_net[0], learner.policy.value_net
            hidden.weight.copy_(torch.tensor([[0.01, 0.0], [0.0, 0.1]]))
            hidden.bias.zero_()
            out.weight.copy_(torch.tensor([[2.0, -1.0]]))
            out.bias.fill_(0.5)
        else:
            hidden, out = learner.policy.q_net.q_net[0], learner.policy.q_net.q_net[2]
            hidden.weight.copy_(torch.eye(2))
            hidden.bias.zero_()
            out.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            out.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return learner


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_value_function_is_the_learners_critic(algo: str) -> None:
    latents = torch.tensor([[0.0, 0.0], [50.0, 3.0], [1.0, 4.0], [120.0, 7.0]])
    x, t = latents.double().unbind(-1)
    if algo == "ppo":
        expected = 2 * torch.tanh(x / 100) - torch.tanh(t / 10) + 0.5
    else:  # the largest Q-value
        expected = torch.stack([2 * x, t, x - t + 1]).max(0).values  # 1, 100, 4, 240
    got = value_function(linear_critic(algo))(latents)
    assert got.shape == (4,) and torch.allclose(got.double(), expected, atol=1e-5), (got, expected)


def test_mpc_agent_adds_the_agents_value_at_the_horizon() -> None:
    """Walker from x = 10 with horizon 1 (rewards 0, 0.75, -0.25 for actions 0, 1, 2; step x += a) and DQN's
    value 2x (its Q-values at x >= 1): returns 0.9 * 20, 0.75 + 0.9 * 22 and -0.25 + 0.9 * 24; without the value
    the reward alone picks action 1."""
    obs = np.full((1, 4, 64, 64), 10, np.uint8)  # Walker encodes x = 10
    config = MPCConfig(planner="tree", search=PlannerConfig(horizon=1), discount=0.9, life_loss_penalty=0.0)
    with_value = MPCAgent(Walker(), config, value_fn=value_function(linear_critic("dqn")))
    assert with_value.predict(obs, None, None, deterministic=True)[0].tolist() == [2]
    assert with_value.last_plan is not None
    assert with_value.last_plan.returns.item() == pytest.approx(-0.25 + 0.9 * 24)
    assert MPCAgent(Walker(), config).predict(obs, None, None, deterministic=True)[0].tolist() == [1]


def test_mpc_warm_start_is_the_shifted_plan(jepa: JEPAWorldModel) -> None:
    agent = MPCAgent(jepa, MPCConfig(search=PlannerConfig(horizon=4, candidates=16, iterations=2)), seed=1)
    seen: list[Any] = []
    plan = agent.planner.plan

    def recording(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(args[4])  # the init distribution
        return plan(*args, **kwargs)  # type: ignore[arg-type]

    agent.planner.plan = recording  # type: ignore[method-assign]
    agent.predict(frames(2, 0), None, np.ones(2, bool))
    first = agent.last_plan
    agent.predict(frames(2, 1), None, np.array([False, True]))
    assert first is not None and isinstance(first.distribution, Categorical)
    assert torch.allclose(seen[0].probs, torch.full((2, 4, 4), 0.25))
    assert torch.equal(seen[1].probs[0, :-1], first.distribution.probs[0, 1:])
    assert torch.allclose(seen[1].probs[0, -1], torch.full((4,), 0.25))
    assert torch.allclose(seen[1].probs[1], torch.full((4, 4), 0.25)), "an episode start forgets the warm start"


def test_mpc_acts_the_best_sequence_or_draws_from_the_plans_distribution(jepa: JEPAWorldModel) -> None:
    agent = MPCAgent(jepa, MPCConfig(search=PlannerConfig(horizon=3, candidates=8, iterations=1)), seed=0)
    probs = torch.zeros(2, 3, 4)
    probs[:, :, 2] = 1.0  # the distribution says action 2 at every step, the best candidate says 0
    agent.planner.plan = lambda *args, **kwargs: Plan(  # type: ignore[method-assign]
        torch.zeros(2, 3, dtype=torch.long), torch.zeros(2), Categorical(probs))
    assert agent.predict(frames(2, 0), None, np.ones(2, bool), deterministic=True)[0].tolist() == [0, 0]
    assert agent.predict(frames(2, 1), None, np.zeros(2, bool), deterministic=False)[0].tolist() == [2, 2]
    assert agent._last_action.tolist() == [2, 2], "the action taken goes into the history"


def test_mpc_agent_is_seeded(jepa: JEPAWorldModel) -> None:
    def play(seed: int) -> list[int]:
        config = MPCConfig(planner="shooting", search=PlannerConfig(horizon=3, candidates=4, iterations=1))
        agent = MPCAgent(jepa, config, seed=seed)
        return [int(agent(frames(1, t))[0]) for t in range(8)]

    assert play(0) == play(0)
    assert play(1) != play(0)  # the seed, not something else, decides its draws


class PaysFor(WorldModel):
    """Real frames in, one action paid for: imagined reward 1 for `paid`, 0 for the others. Records what it encodes."""

    latent_shape = (1,)
    num_actions = 4  # Breakout's
    config = None

    def __init__(self, paid: int) -> None:
        super().__init__()
        self.paid = paid
        self.encoded: list[Tensor] = []

    def encode(self, frames: Tensor) -> Tensor:
        self.encoded.append(frames.clone())
        return torch.zeros(*frames.shape[:2], 1)

    def observe(self, latents: Tensor, actions: Tensor) -> Tensor:
        return latents[:, -1]

    def step(self, state: Tensor, action: Tensor, latent: bool = True) -> StepOutput:
        ones = torch.ones(len(action))
        return StepOutput(state, state, (action == self.paid).float(), ones, 0 * ones)

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: TrainBatch, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError


@pytest.mark.slow
@pytest.mark.parametrize(("paid", "moves"), [(2, 1), (3, -1)], ids=["right", "left"])
def test_mpc_agent_plays_breakout_as_its_model_pays(paid: int, moves: int) -> None:
    """MPC in a model that pays for RIGHT (or LEFT) moves Breakout's paddle that way: its plans reach the game, and
    it plans from the frames the game shows. The paddle's x is RAM byte 72 (146 after reset(seed=0))."""
    from mbrl.envs.atari import AtariConfig, make_env

    env = make_env(AtariConfig())
    model = PaysFor(paid)
    agent = MPCAgent(model, MPCConfig(planner="tree", search=PlannerConfig(horizon=2)), seed=0)
    obs, info = env.reset(seed=0)
    start_x, start = int(info["ram"][72]), True
    for _ in range(20):
        actions, _ = agent.predict(obs[None], None, np.array([start]))
        assert actions.tolist() == [paid] and torch.equal(model.encoded[-1][0, 0], torch.as_tensor(obs))
        obs, _, terminated, truncated, info = env.step(int(actions[0]))
        start = terminated or truncated
        assert not start  # 20 steps are not a whole game of 5 lives
    env.close()
    assert (int(info["ram"][72]) - start_x) * moves > 30


def test_objectives_in_concurrent_threads_give_back_the_callers_threads(jepa: JEPAWorldModel,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The objective switches torch's process-wide thread count per tree, so calls from two Python threads must
    not interleave. Thread B calls while A is inside a small tree (on 1 thread); A goes on once B has arrived,
    either at the objective's lock (serialised: B waits there until A is done) or inside a tree (interleaved:
    B then steps at the thread count A set, gives back A's 1 as "its" count, and its returns can differ).
    Events, not timeouts, order the threads."""
    from mbrl.agents.planners import objective as objective_module

    g = torch.Generator().manual_seed(0)
    state = jepa.observe(torch.randn(1, 3, *jepa.latent_shape, generator=g), torch.randint(0, 4, (1, 2), generator=g))
    sequences = torch.randint(0, 4, (1, 64, 4), generator=g)
    objective = world_model_objective(jepa, parallel_from=32)
    torch.set_num_threads(2)
    expected = objective(state, sequences)
    a_inside, b_arrived, a_done = threading.Event(), threading.Event(), threading.Event()
    steps: list[str] = []  # the thread of each tree step, in the order they began
    lock = objective_module._THREAD_COUNT

    class Watched:
        """The objective's lock, telling when B comes to it."""

        def __enter__(self) -> None:
            if threading.current_thread().name == "B":
                b_arrived.set()
            lock.acquire()

        def __exit__(self, *exc: object) -> None:
            lock.release()

    monkeypatch.setattr(objective_module, "_THREAD_COUNT", Watched())
    step_tree = jepa.step_tree

    def spy(*args: Any, **kwargs: Any) -> Any:
        name = threading.current_thread().name
        if name == "A" and not a_inside.is_set():  # A's first step: let B come, then go on
            a_inside.set()
            b_arrived.wait()
        steps.append(name)
        if name == "B":  # B inside a tree: A goes on, B waits until A is done
            b_arrived.set()
            a_done.wait()
        return step_tree(*args, **kwargs)

    jepa.step_tree = spy  # type: ignore[method-assign]
    results: dict[str, torch.Tensor] = {}

    def plan() -> None:
        results[threading.current_thread().name] = objective(state, sequences)
        if threading.current_thread().name == "A":
            a_done.set()

    a = threading.Thread(target=plan, name="A")
    a.start()
    a_inside.wait()
    b = threading.Thread(target=plan, name="B")
    b.start()
    a.join()
    b.join()
    assert steps == sorted(steps) and set(steps) == {"A", "B"}  # all of A's steps before any of B's
    assert torch.get_num_threads() == 2
    assert torch.equal(results["A"], expected) and torch.equal(results["B"], expected)


def test_first_levels_are_imagined_once_per_state_and_give_the_same_returns(jepa: JEPAWorldModel) -> None:
    g = torch.Generator().manual_seed(0)
    state = jepa.observe(torch.randn(2, 3, *jepa.latent_shape, generator=g), torch.randint(0, 4, (2, 2), generator=g))
    rounds = [torch.randint(0, 4, (2, 40, 5), generator=g) for _ in range(3)]  # three rounds of a plan, N=40
    value = lambda z: z.mean((1, 2))  # noqa: E731
    rows: list[list[int]] = []
    step_tree = jepa.step_tree

    def spy(*args: Any, **kwargs: Any) -> Any:
        rows.append([len(actions) for actions in args[2]])
        return step_tree(*args, **kwargs)

    jepa.step_tree = spy  # type: ignore[method-assign]
    tree = world_model_objective(jepa, 0.95, value, life_loss_penalty=0.5)  # A=4, N=40: L=2 (16 <= 20)
    plain = world_model_objective(jepa, 0.95, value, life_loss_penalty=0.5, tree_levels=0)
    full = world_model_objective(jepa, 0.95, value, life_loss_penalty=0.5, dedupe=False)
    for k, sequences in enumerate(rounds):
        rows.clear()
        got = tree(state, sequences)
        assert [len(depths) for depths in rows] == ([2, 3] if k == 0 else [3])  # the tree's levels only at first
        assert k > 0 or rows[0] == [8, 32]  # 2 x 4, 2 x 16 nodes
        torch.testing.assert_close(got, plain(state, sequences), rtol=0, atol=1e-5)
        torch.testing.assert_close(got, full(state, sequences), rtol=0, atol=1e-5)
    # a state changed in place (a step consumes its state) is a new start: its tree is imagined again
    state["keys"][0].add_(1.0)
    rows.clear()
    torch.testing.assert_close(tree(state, rounds[0]), plain(state, rounds[0]), rtol=0, atol=1e-5)
    assert rows[0] == [8, 32]


@pytest.mark.parametrize(("candidates", "horizon", "levels"), [(512, 12, 4), (64, 8, 2), (64, 2, 1), (7, 5, 0)])
def test_tree_levels_cover_what_a_first_round_meets_and_leave_the_last_step(candidates: int, horizon: int,
                                                                             levels: int) -> None:
    from mbrl.agents.planners.objective import _auto_levels

    assert _auto_levels(4, candidates, horizon) == levels


def test_mpc_compile_asks_the_world_model_to_compile_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[object] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append(kwargs) or fn)
    model = JEPAWorldModel(TINY).eval()
    MPCAgent(model, MPCConfig())
    assert compiled == []  # off by default
    MPCAgent(model, MPCConfig(compile=True))
    assert compiled == [{"dynamic": True, "fullgraph": True, "options": {"cpp_wrapper": True}}]
