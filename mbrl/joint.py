"""`mbrl train-agent` for the value-aware JEPA (world_model_training.family=jepa-value): one network learns all run.

    warm-up   random play until the buffer holds joint.warmup_steps real steps
    repeat    the agent (epsilon-greedy on the world model's value head, epsilon decaying) plays
              joint.chunk real steps; then joint updates of the whole model (encoder, predictor
              unrolled against the EMA target, event and value heads, n-step TD) until it has had
              joint.replay_ratio updates per real step past the warm-up
    evaluate  every joint.eval_every real steps (0: only at the end): full real games (mbrl.evaluate)

There is no frozen encoder and no separate agent network: the agent is the world model's value
head, so the latent the planners and the dream use is the one trained with reward and TD
gradients. Counters live with what they count (real steps in the buffer, updates in the
checkpoint), so a run killed at any moment resumes with `--resume` from its last checkpoint
(every joint.checkpoint_every real steps) and the flushed buffer, and catches the updates up.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mbrl.agents.value_agent import ValueAgent
from mbrl.collect import RandomPolicy
from mbrl.core.atomic import write_atomic
from mbrl.core.checkpoint import load_checkpoint, load_optimizer, load_state_dict, optimizer_tensors, save_checkpoint
from mbrl.core.replay import ReplayBuffer
from mbrl.core.run import RunDir
from mbrl.evaluate import evaluate_agent
from mbrl.progress import Progress
from mbrl.run_config import RunConfig
from mbrl.session import Seeds, load_replay, open_replay, real_play
from mbrl.train_world_model import CHECKPOINT as WORLD_MODEL
from mbrl.train_world_model import to_train_batch
from mbrl.world_models.jepa_value import ValueJEPAWorldModel
from mbrl.world_models.registry import build, describe

FAMILY = "jepa-value"


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return before // every < after // every


class JointTrainer:
    """The model, its optimiser and the update counter of a joint run, checkpointed together."""

    def __init__(self, run: RunDir, config: RunConfig, device: torch.device) -> None:
        self.run, self.cfg, self.device = run, config.joint, device
        torch.manual_seed(config.seed)
        model = build(FAMILY, config.value_model)
        assert isinstance(model, ValueJEPAWorldModel)
        self.model = model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameter_groups(), lr=self.cfg.learning_rate,
                                          eps=self.cfg.adam_eps)
        self.rng = np.random.default_rng(Seeds(config.seed).joint_updates())
        self.updates = 0
        self.meta: dict[str, Any] = {}
        self._since = time.perf_counter()  # the wall clock counted into meta["seconds"] up to here

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        """One joint update on windows sampled uniformly from the whole buffer; the loss parts as floats."""
        batch = to_train_batch(buffer.sample(self.cfg.batch_size, self.model.config.window, self.rng), self.device)
        self.model.train()
        losses = self.model.loss(batch, "joint")
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameter_groups(), self.cfg.grad_clip)
        self.optimizer.step()
        self.model.update_target()
        self.model.eval()
        self.updates += 1
        return {name: float(value.detach()) for name, value in losses.items()}

    def log(self, writer: SummaryWriter, losses: dict[str, float], buffer: ReplayBuffer) -> None:
        """Tensorboard: the loss parts (`losses/*`) and how spread the target latents of 256 stored observations
        are (`collapse/latent_std`, `collapse/effective_rank`: a collapsing latent shows there first)."""
        for name, value in losses.items():
            writer.add_scalar(f"losses/{name}", value, self.updates)
        sample = buffer.sample(min(256, buffer.num_steps), 0, self.rng).frames[:, 0]
        for name, spread in self.model.collapse(torch.from_numpy(sample).to(self.device)).items():
            writer.add_scalar(f"collapse/{name}", float(spread), self.updates)

    def save(self, **meta: Any) -> None:
        """Model, optimiser, counters and RNG states, atomically; `meta` joins the saved metadata, with the
        run's wall-clock seconds summed over its sittings ("seconds")."""
        self.meta.update(meta, seconds=self.seconds())
        self._since = time.perf_counter()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_tensors, optim_meta = optimizer_tensors(self.optimizer, "optim.")
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        metadata = {**describe(FAMILY, self.model), "updates": self.updates, "optimizer": optim_meta,
                    "rng_numpy": self.rng.bit_generator.state, **self.meta}
        save_checkpoint(self.run.checkpoint_dir, WORLD_MODEL, tensors, metadata, step=self.updates)

    def seconds(self) -> float:
        """Wall-clock seconds of the run so far, over all its sittings."""
        return float(self.meta.get("seconds", 0.0)) + time.perf_counter() - self._since

    def restore(self) -> bool:
        """Continue from the run's checkpoint, if it has one (False: it has none)."""
        if not (self.run.checkpoint_dir / f"{WORLD_MODEL}.json").exists():
            return False
        ckpt = load_checkpoint(self.run.checkpoint_dir, WORLD_MODEL)
        load_state_dict(self.model, ckpt, prefix="model.")
        load_optimizer(self.optimizer, ckpt, "optim.", ckpt.metadata["optimizer"], self.device)
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        self.rng.bit_generator.state = ckpt.metadata["rng_numpy"]
        self.updates = ckpt.metadata["updates"]
        self.meta = {k: ckpt.metadata[k] for k in ("explore_rng", "evals", "seconds") if k in ckpt.metadata}
        self._since = time.perf_counter()
        return True


def train_joint(run: RunDir, config: RunConfig, device: torch.device, resume: bool,
                show_progress: bool | None = None) -> dict[str, Any]:
    """Run (or, with `resume`, continue) a joint run of `run` to the end of its real-step budget.

    Args:
        show_progress: a tqdm bar (None: when stderr is a terminal; progress lines in a log otherwise, see
            `mbrl.progress`; False: neither).

    Returns:
        The final evaluation (see `mbrl.evaluate.evaluate_agent`) with the run's counters and evaluation history.
    """
    cfg, budget = config.joint, config.loop.real_steps
    buffer = open_replay(run, config)
    collector, seeds = real_play(config, buffer)  # a resumed run plays new streams
    trainer = JointTrainer(run, config, device)
    if resume:
        trainer.restore()
    agent = ValueAgent(trainer.model, device, 1.0, cfg.eval_epsilon, seeds.explore())
    if "explore_rng" in trainer.meta:
        agent.rng.bit_generator.state = trainer.meta["explore_rng"]
    history: list[dict[str, Any]] = trainer.meta.get("evals", [])
    writer = SummaryWriter(str(run.tb_dir))
    bar = tqdm(total=budget, initial=min(buffer.num_steps, budget), unit="step", desc="real steps",
               disable=None if show_progress is None else not show_progress)
    progress = Progress.beside_bar("train-agent", show_progress)
    losses: dict[str, float] = {}
    random_policy = RandomPolicy(collector.env.single_action_space, seeds.random_policy())
    if history:
        progress.keep(eval_score=history[-1]["mean"])

    def evaluate(last: bool) -> dict[str, Any]:
        progress.phase("evaluating", total=config.eval.episodes, unit="games")
        result = evaluate_agent(agent, config.env, config.eval, seeds.evaluation(buffer.num_steps),
                                gif_path=run.path / "eval.gif" if last else None, progress=False, log=progress)
        result.update(real_steps=buffer.num_steps, updates=trainer.updates, dream_steps=0, agent="value",
                      train_seconds=trainer.seconds())
        write_atomic(run.eval_path, json.dumps(result, indent=1).encode())
        history.append({key: result[key] for key in ("real_steps", "updates", "mean", "median", "std")})
        for key in ("mean", "median", "std"):
            writer.add_scalar(f"eval/{key}", result[key], buffer.num_steps)
        progress.keep(eval_score=result["mean"])
        return result

    def log(losses: dict[str, float]) -> None:
        trainer.log(writer, losses, buffer)
        writer.add_scalar("charts/epsilon", agent.epsilon, buffer.num_steps)

    try:
        result: dict[str, Any] = {}
        phase = ""
        while buffer.num_steps < budget or trainer.updates < cfg.updates_due(buffer.num_steps):
            before = buffer.num_steps
            warm = before < cfg.warmup_steps
            name = "warm-up: random play" if warm else "playing and learning"
            if name != phase:  # a line when the phase starts
                phase = name
                progress.phase(name, total=min(cfg.warmup_steps, budget) if warm else budget, unit="real steps",
                               done=before)
            if before < budget:
                agent.epsilon = cfg.epsilon(before)
                target = min(cfg.warmup_steps if warm else before + cfg.chunk, budget)
                stats = collector.run(target - before, random_policy if warm else agent, config.replay.flush_every,
                                      progress=False, log=progress)
                for score in stats.episode_returns:
                    writer.add_scalar("collect/episode_score", score, buffer.num_steps)
                bar.update(min(buffer.num_steps, budget) - min(before, budget))
            while trainer.updates < cfg.updates_due(buffer.num_steps):
                losses = trainer.update(buffer)
                if trainer.updates % cfg.log_every == 0:
                    log(losses)
                progress.note(updates=f"{trainer.updates:,}", td=losses["td"], consistency=losses["consistency"],
                              epsilon=agent.epsilon)
                progress.update(buffer.num_steps)
            if losses:
                bar.set_postfix(td=f"{losses['td']:.3f}", cons=f"{losses['consistency']:.4f}",
                                eps=f"{agent.epsilon:.2f}")
            crossed = _crossed(before, buffer.num_steps, cfg.checkpoint_every)
            if cfg.eval_every and _crossed(before, buffer.num_steps, cfg.eval_every) and buffer.num_steps < budget:
                bar.set_postfix_str("evaluating")
                result = evaluate(last=False)
                crossed, phase = True, ""  # the next round starts its phase's lines again
            if crossed or buffer.num_steps >= budget:
                buffer.flush()
                trainer.save(explore_rng=agent.rng.bit_generator.state, evals=history)
                run.update_progress(replay_steps=buffer.num_steps, world_model_updates=trainer.updates)
        if history and history[-1]["real_steps"] == buffer.num_steps and run.eval_path.exists():
            result = json.loads(run.eval_path.read_text())  # a finished run, resumed: its final evaluation
        else:
            bar.set_postfix_str("evaluating")
            result = evaluate(last=True)
            trainer.save(explore_rng=agent.rng.bit_generator.state, evals=history)
    finally:
        bar.close()
        collector.close()
        buffer.close()
        writer.close()
    return {**result, "history": history}


def train_offline(run: RunDir, config: RunConfig, device: torch.device, updates: int | None, resume: bool,
                  show_progress: bool | None = None, log: Progress | None = None) -> int:
    """`mbrl train-world-model` for the value-aware JEPA: joint updates on the run's stored replay alone, no acting,
    until the model has had `updates` (None: joint.replay_ratio per stored step past the warm-up); checkpointed
    every joint.checkpoint_every updates and at the end; `log` gets the phase's progress lines. Returns the model's
    update count."""
    buffer = load_replay(run)
    trainer = JointTrainer(run, config, device)
    if resume:
        trainer.restore()
    total = config.joint.updates_due(buffer.num_steps) if updates is None else updates
    if log is not None:
        log.phase("joint updates", total=total, unit="updates", done=trainer.updates)
    with SummaryWriter(str(run.tb_dir)) as writer, tqdm(total=total, initial=min(trainer.updates, total), unit="update",
                                                        desc="joint updates", disable=None if show_progress is None
                                                        else not show_progress) as bar:
        while trainer.updates < total:
            losses = trainer.update(buffer)
            bar.update(1)
            if log is not None:
                log.note(td=losses["td"], consistency=losses["consistency"])
                log.update(trainer.updates)
            if trainer.updates % config.joint.log_every == 0:
                trainer.log(writer, losses, buffer)
                bar.set_postfix(td=f"{losses['td']:.3f}", cons=f"{losses['consistency']:.4f}")
            if trainer.updates % config.joint.checkpoint_every == 0:
                trainer.save()
    trainer.save()
    buffer.close()
    return trainer.updates
