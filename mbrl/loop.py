"""`mbrl train-agent`: the Dyna loop. Real play -> world model -> agent in the dream -> real score.

    warm-up: random play (loop.warmup_steps), then the world model's first full fit
             (stage 1 encoder, stage 2 predictor + heads + decoder, with early stopping)
    iteration k = 1, 2, ...:
        collect   the agent plays the real game (epsilon-random) until the buffer holds
                  warmup_steps + k * collect_steps steps (loop.collect_with=mpc: MPC on the
                  world model plays instead, with the config's mpc settings)
        fit       stage-2 updates of the world model until it has had k * world_model_updates
        imagine   the agent learns in the batched dream until it has taken k * dream_steps steps
        evaluate  every eval_every iterations and at the end: full real games (mbrl.evaluate)

The encoder is trained once, in the warm-up: it defines the latent space the agent observes,
so refitting it later would change the agent's inputs under its feet; the iterations refit
the predictor and the heads on the growing buffer.

Every phase runs until a cumulative milestone of iteration k, computed from counters that
live with the data they count (replay steps in the buffer, world-model updates in its
checkpoint, agent steps in the agent's checkpoint). So a run killed at any moment resumes
with `--resume` by catching each counter up to its milestone: nothing flushed is lost, no
phase is done twice. The replay buffer is flushed every `replay.flush_every` vector steps;
the world model and the agent are checkpointed after each of their phases.

A phase redone after a resume is the uninterrupted run's: the refit and the agent's learning seed
the global generators they draw from (`seed_global_generators`), the trainer's and agent's own are
checkpointed. What a resume cannot redo is real play: the resumed run's envs start new games in new
streams (an emulator's state is not saved), so a run killed before its last collection goes on from
other data. A DQN's replay of dream transitions is not checkpointed either (AgentConfig.buffer_size).
tests/test_loop.py compares killed and resumed runs with uninterrupted ones.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecMonitor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mbrl.agents.mpc import MPCAgent
from mbrl.agents.sb3 import DreamVecEnv
from mbrl.agents.sb3_agent import LatentAgent, agent_tensors, build_agent, restore_agent
from mbrl.agents.value_agent import ValueAgent
from mbrl.collect import Policy, RandomPolicy
from mbrl.core.atomic import write_atomic
from mbrl.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mbrl.core.replay import ReplayBuffer
from mbrl.core.run import RunDir
from mbrl.envs.dream import DreamVectorEnv
from mbrl.envs.registration import load_world_model
from mbrl.evaluate import evaluate_agent
from mbrl.progress import Progress
from mbrl.run_config import RunConfig
from mbrl.session import Seeds, episode_split, load_replay, open_replay, real_play
from mbrl.train_world_model import CHECKPOINT as WORLD_MODEL
from mbrl.train_world_model import Trainer
from mbrl.world_models.jepa_value import ValueJEPAWorldModel
from mbrl.world_models.latent_cache import LatentCache
from mbrl.world_models.registry import build

AGENT = "agent"  # checkpoint name of the SB3 learner and the loop's own state


def train_agent(run: RunDir, config: RunConfig, device: torch.device, resume: bool,
                show_progress: bool | None = None) -> dict[str, Any]:
    """Run (or, with `resume`, continue) the Dyna loop of `run` to the end of its real-step budget.

    Args:
        show_progress: tqdm bars (None: when stderr is a terminal; progress lines in a log otherwise, see
            `mbrl.progress`; False: neither).

    Returns:
        The final evaluation (see `mbrl.evaluate.evaluate_agent`), with the loop's counters.
    """
    loop = config.loop
    buffer = open_replay(run, config)
    collector, seeds = real_play(config, buffer, one_shard=loop.collect_with == "mpc")  # a resumed run: new streams
    writer = SummaryWriter(str(run.tb_dir))
    bar = tqdm(total=loop.real_steps, initial=min(buffer.num_steps, loop.real_steps), unit="step",
               desc="real steps", disable=None if show_progress is None else not show_progress)
    log = Progress.beside_bar("train-agent", show_progress)

    def collect_until(target: int, policy: Policy, phase: str) -> None:
        before = buffer.num_steps
        if before < target:
            bar.set_postfix_str(f"collecting to {target}")
            log.keep(real_steps=None)  # the phase counts them
            log.phase(phase, total=target, unit="real steps", done=before)
            stats = collector.run(target - before, policy, config.replay.flush_every, progress=False,
                                  on_flush=lambda: run.update_progress(replay_steps=buffer.num_steps), log=log)
            for score in stats.episode_returns:
                writer.add_scalar("collect/episode_score", score, buffer.num_steps)
            bar.update(min(buffer.num_steps, loop.real_steps) - min(before, loop.real_steps))
        log.keep(real_steps=f"{buffer.num_steps:,}/{loop.real_steps:,}")

    try:
        # ---- warm-up: random play, then the world model's first fit ---------------------
        collect_until(loop.warmup_steps, RandomPolicy(collector.env.single_action_space, seeds.random_policy()),
                      "warm-up: random play")
        torch.manual_seed(config.seed)  # the world model's initial weights: the same seed, the same run
        model = build(config.world_model_training.family, config.world_model)
        trainer = Trainer(run, model, buffer, config.world_model_training, device, config.seed)
        if resume and (run.checkpoint_dir / f"{WORLD_MODEL}.json").exists():
            trainer.restore(load_checkpoint(run.checkpoint_dir, WORLD_MODEL))
        bar.set_postfix_str("fitting the world model")
        trainer.train(["encoder", "dynamics"], None, writer, show_progress=False, log=log)

        # ---- the agent, in the dream --------------------------------------------------
        cache = trainer.latent_cache  # encoder frozen from here on: each row encoded once, for refits and dreams
        agent = build_agent(config.agent, _dream(model, buffer, trainer, config, device, 0, cache), config.seed,
                            device)
        agent.set_logger(configure(str(run.tb_dir / "agent"), ["tensorboard"]))
        state = _restore(run, agent) if resume else {}
        latent_agent = LatentAgent(agent, model, device, loop.collect_epsilon, seeds.explore())
        if "explore_rng" in state:
            latent_agent.rng.bit_generator.state = state["explore_rng"]
        planner = None
        if loop.collect_with == "mpc":
            planner = MPCAgent(model, config.mpc, device, seed=seeds.plan())
            if "plan_rng" in state:
                planner.generator.set_state(state["plan_rng"])
        collect_policy: Policy = latent_agent if planner is None else planner
        history: list[dict[str, Any]] = state.get("evals", [])
        # the latest evaluation in full (a resumed run whose last iteration was evaluated plays no more games)
        result: dict[str, Any] = json.loads(run.eval_path.read_text()) if history and run.eval_path.exists() else {}
        if result:
            log.keep(eval_score=result["mean"])

        # ---- Dyna iterations ----------------------------------------------------------
        for k in range(1, loop.iterations + 1):
            iteration = f"iteration {k}/{loop.iterations}"
            collect_until(min(loop.warmup_steps + k * loop.collect_steps, loop.real_steps), collect_policy,
                          f"{iteration}: {loop.collect_with} plays")

            done = trainer.progress.get("dyna_updates", 0)
            missing = k * loop.world_model_updates - done
            if missing > 0:
                bar.set_postfix_str(f"iteration {k}: world model")
                log.phase(f"{iteration}: world model", total=done + missing, unit="updates", done=done)
                trainer.refresh_split()
                seed_global_generators(seeds.refit(k))
                losses = trainer.run_updates("dynamics", missing, writer, log=log)
                trainer.save()
                bar.set_postfix(wm_loss=f"{losses['total']:.4f}")

            missing = k * loop.dream_steps - agent.num_timesteps
            if missing > 0:
                bar.set_postfix_str(f"iteration {k}: agent in the dream")
                log.phase(f"{iteration}: agent in the dream", total=k * loop.dream_steps, unit="dream steps",
                          done=agent.num_timesteps)
                agent.set_env(_dream(model, buffer, trainer, config, device, k, cache))
                seed_global_generators(seeds.dream_learning(k), agent)
                agent.learn(missing, reset_num_timesteps=False, progress_bar=False,
                            callback=_LogSteps(log) if log.enabled else None)
                _save(run, agent, history, latent_agent, planner)

            evaluated = {e["iteration"] for e in history}
            if (k % loop.eval_every == 0 or k == loop.iterations) and k not in evaluated:
                bar.set_postfix_str(f"iteration {k}: evaluating")
                log.phase(f"{iteration}: evaluating", total=config.eval.episodes, unit="games")
                result = _evaluate(run, config, latent_agent, k, buffer.num_steps, agent.num_timesteps,
                                   last=k == loop.iterations, log=log)
                history.append({key: result[key] for key in ("iteration", "real_steps", "dream_steps", "mean",
                                                               "median", "std")})
                for key in ("mean", "median", "std"):
                    writer.add_scalar(f"eval/{key}", result[key], buffer.num_steps)
                _save(run, agent, history, latent_agent, planner)
                bar.set_postfix(score=f"{result['mean']:.1f}")
                log.keep(eval_score=result["mean"])
            run.update_progress(replay_steps=buffer.num_steps, iteration=k, dream_steps=agent.num_timesteps,
                                world_model_updates=trainer.progress.get("dyna_updates", 0))
    finally:
        bar.close()
        collector.close()
        buffer.close()
        writer.close()
    return {**result, "history": history}


def seed_global_generators(seed: int, agent: BaseAlgorithm | None = None) -> None:
    """Seed what a phase draws from besides its own generators: torch's and numpy's global ones (the world
    model's masks, PPO's sampled actions and minibatches, DQN's exploration) and the agent's action space
    (DQN's random actions). Each phase seeded so, a resumed run redoes a phase as the uninterrupted run did
    it, whatever happened before it in either (a resumed sitting skips the phases already done)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if agent is not None:
        agent.action_space.seed(seed)


class _LogSteps(BaseCallback):
    """The agent's steps in the dream, into the progress lines (`Progress.update` at every step)."""

    def __init__(self, log: Progress) -> None:
        super().__init__()
        self.log = log

    def _on_step(self) -> bool:
        self.log.update(self.num_timesteps)
        return True


def _dream(model: Any, buffer: ReplayBuffer, trainer: Trainer, config: RunConfig, device: torch.device,
           iteration: int, cache: LatentCache | None = None) -> VecMonitor:
    """The batched dream of iteration `iteration` as an SB3 VecEnv, starting from training episodes."""
    dream_config = dataclasses.replace(config.dream, device=str(device))
    seed = Seeds(config.seed).dream(iteration)
    vector = DreamVectorEnv(model, buffer, config.loop.dream_envs, dream_config, seed=seed,
                            episodes=trainer.train_ids, latent_cache=cache)
    return VecMonitor(DreamVecEnv(vector))  # dream episode returns -> the agent's rollout/ep_rew_mean


def _evaluate(run: RunDir, config: RunConfig, agent: LatentAgent, iteration: int, real_steps: int,
              dream_steps: int, last: bool, log: Progress | None = None) -> dict[str, Any]:
    """Full real games with the agent; eval.json holds the latest result (and a GIF of the last)."""
    gif = run.path / "eval.gif" if last else None
    result = evaluate_agent(agent, config.env, config.eval, Seeds(config.seed).evaluation(iteration), gif_path=gif,
                            progress=False, log=log)
    result.update(iteration=iteration, real_steps=real_steps, dream_steps=dream_steps, agent=config.agent.algo)
    write_atomic(run.eval_path, json.dumps(result, indent=1).encode())
    return result


def _save(run: RunDir, agent: BaseAlgorithm, history: list[dict[str, Any]], latent_agent: LatentAgent,
          planner: MPCAgent | None) -> None:
    """The learner, its counters, the evaluation history and the RNG states, atomically."""
    tensors, meta = agent_tensors(agent)
    tensors["rng.torch"] = torch.get_rng_state()
    if planner is not None:
        tensors["rng.plan"] = planner.generator.get_state()
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # SB3 draws DQN's exploration from it
    meta.update(evals=history, explore_rng=latent_agent.rng.bit_generator.state,
                rng_numpy_global=[name, np.asarray(keys).tolist(), pos, has_gauss, gauss])
    save_checkpoint(run.checkpoint_dir, AGENT, tensors, meta, step=agent.num_timesteps)


def _restore(run: RunDir, agent: BaseAlgorithm) -> dict[str, Any]:
    """Load the learner saved by `_save` (if any); returns its metadata (and the planner's RNG state)."""
    if not (run.checkpoint_dir / f"{AGENT}.json").exists():
        return {}
    ckpt = load_checkpoint(run.checkpoint_dir, AGENT)
    restore_agent(agent, ckpt, ckpt.metadata)
    torch.set_rng_state(ckpt.tensors["rng.torch"])
    name, keys, *rest = ckpt.metadata["rng_numpy_global"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    return {**ckpt.metadata, **({"plan_rng": ckpt.tensors["rng.plan"]} if "rng.plan" in ckpt.tensors else {})}


def run_dream(run: RunDir, config: RunConfig, model: Any, device: torch.device, seed: int = 0) -> DreamVecEnv:
    """The run's dream (config.dream, config.loop.dream_envs rollouts) in `model`, starting from real contexts of
    the run's training episodes, as an SB3 VecEnv.

    Raises:
        UserError: the run's replay buffer is missing.
    """
    buffer = load_replay(run)
    episodes, _ = episode_split(buffer, config)
    dream_config = dataclasses.replace(config.dream, device=str(device))
    return DreamVecEnv(DreamVectorEnv(model, buffer, config.loop.dream_envs, dream_config, seed=seed,
                                      episodes=episodes))


def load_trained_agent(run: RunDir, config: RunConfig, device: torch.device) -> LatentAgent | ValueAgent:
    """The agent a `train-agent` run saved, with its world model, ready to play real frames (no exploration;
    the value-aware JEPA's agent is its own value head, with joint.eval_epsilon).

    Raises:
        CheckpointError: the world-model or agent checkpoint is missing, corrupted or does not match.
        UserError: the run's replay buffer is missing (it gives the dream the agent was built on).
    """
    model, _ = load_world_model(run, device)
    if isinstance(model, ValueJEPAWorldModel):
        return ValueAgent(model, device, eval_epsilon=config.joint.eval_epsilon, seed=config.seed)
    agent = build_agent(config.agent, run_dream(run, config, model, device), config.seed, device)
    if not _restore(run, agent):
        raise CheckpointError(f"no agent checkpoint in {run.checkpoint_dir}; train one with mbrl train-agent")
    return LatentAgent(agent, model, device)
