"""`mbrl train-world-model`: fit a world model to a run's replay buffer, stage by stage, resumably."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from mbrl.core.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_optimizer,
    load_state_dict,
    optimizer_tensors,
    save_checkpoint,
)
from mbrl.core.config import check_ranges
from mbrl.core.errors import UserError
from mbrl.core.replay import ReplayBuffer, SequenceBatch, split_episodes
from mbrl.core.run import RunDir
from mbrl.envs.registration import WORLD_MODEL_CHECKPOINT
from mbrl.progress import Progress
from mbrl.world_models.base import TrainBatch, WorldModel
from mbrl.world_models.latent_cache import LatentCache
from mbrl.world_models.registry import FAMILIES, describe

STAGES = {"1": ["encoder"], "2": ["dynamics"], "3": ["finetune"], "all": ["encoder", "dynamics", "finetune"]}
FROZEN_ENCODER = ("dynamics",)
"""Stages that leave the encoder as it is, so the latents of replay rows can be cached across updates."""
STATS_WINDOWS = 256
"""Training windows (of seq_len + 1 observations) whose latents set the standardisation when an encoder stage ends."""
CHECKPOINT = WORLD_MODEL_CHECKPOINT
BEST = f"{CHECKPOINT}_best"
"""Each checked part's weights of its best validation check in the current stage, restored when it ends."""


@dataclass(frozen=True)
class WorldModelTrainConfig:
    """How a world model is trained.

    Attributes:
        family: world-model family (see world_models/registry.py).
        batch_size: windows per update (with seq_len, what bounds a batch's memory: batch_size x (seq_len +
            env.frame_stack) frames).
        seq_len: transitions per window.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        grad_clip: gradient norm clip, applied to each part of the model on its own (see clip_each_part).
        encoder_steps: updates of stage 1 (self-supervised encoder).
        dynamics_steps: updates of stage 2 (predictor, heads, decoder; encoder frozen).
        finetune_steps: updates of stage 3 (everything together; 0 skips it).
        eval_every: updates between validation, checkpoint and early-stopping checks.
        val_batches: validation batches per check (fixed windows of held-out episodes).
        patience: checks without a better validation loss of any checked part before a stage stops early;
            a stage ends with each part's weights of its best check (see `WorldModel.checked_parts`).
        holdout_every: episodes whose id is a multiple of this are held out (never trained on).
        event_fraction: share of training windows that end on a reward, life loss or game over
            (see ReplayBuffer.sample); rewards are ~0.7% and life losses ~2.7% of random Breakout
            steps, too rare for the heads (and stage 1's event loss) to learn from uniform windows.
            Validation stays uniform. The heads learn these windows' event rates as their prior, so
            the trainer tells the model both rates (`calibrate_events`) and it corrects its heads.
        restart_fraction: share of training windows that begin with the first observation after a lost
            life (see ReplayBuffer.sample), drawn besides the event windows: in Breakout the ball waits
            there until FIRE serves it, a step the 100k world models never learnt
            (benchmarks/serving.py --fire-seeds). Counted in the event rates the heads are corrected for.
            0.25 did not teach it either (README, "Training on more serves does not teach it").
    """

    family: str = "jepa"
    batch_size: int = 32
    seq_len: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    encoder_steps: int = 3000
    dynamics_steps: int = 3000
    finetune_steps: int = 0
    eval_every: int = 250
    val_batches: int = 4
    patience: int = 4
    holdout_every: int = 10
    event_fraction: float = 0.5
    restart_fraction: float = 0.0

    ranges: ClassVar[dict[str, str]] = {
        "batch_size": "[1, 4096]", "seq_len": "[1, 256]", "lr": "(0, 1]", "weight_decay": "[0, 10]",
        "grad_clip": "(0, inf)", "encoder_steps": "[0, 100_000_000]", "dynamics_steps": "[0, 100_000_000]",
        "finetune_steps": "[0, 100_000_000]", "eval_every": "[1, 100_000_000]", "val_batches": "[1, 10_000]",
        "patience": "[1, 1_000_000]", "holdout_every": "[2, 1_000_000]", "event_fraction": "[0, 1]",
        "restart_fraction": "[0, 1]"}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")


def to_train_batch(batch: SequenceBatch, device: torch.device, cache: LatentCache | None = None) -> TrainBatch:
    """Replay windows (numpy) -> a world model's training batch (tensors on `device`), with the latents
    of its observations when a cache of a frozen encoder is given."""
    return TrainBatch(
        frames=torch.from_numpy(batch.frames).to(device),
        actions=torch.from_numpy(batch.actions).to(device),
        rewards=torch.from_numpy(batch.clipped_rewards).to(device),
        terminated=torch.from_numpy(batch.terminated).to(device),
        life_loss=torch.from_numpy(batch.life_loss).to(device),
        latents=None if cache is None else cache.encode(batch.rows, device),
    )


class Trainer:
    """Trains one world model on one replay buffer; everything it needs to resume is in its checkpoint."""

    def __init__(self, run: RunDir, model: WorldModel, buffer: ReplayBuffer, cfg: WorldModelTrainConfig,
                 device: torch.device, seed: int) -> None:
        self.run, self.model, self.buffer, self.cfg, self.device = run, model.to(device), buffer, cfg, device
        self.train_ids, self.val_ids = split_episodes(buffer, cfg.holdout_every)
        if len(self.train_ids) == 0 or len(self.val_ids) == 0:
            raise UserError(f"replay buffer {buffer.directory} has too few episodes to hold some out "
                            f"({len(buffer.episode_ids())}); collect more first")
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.progress: dict[str, Any] = {"done": [], "stage": None, "step": 0, "best": None, "bad_checks": 0}
        self.optimizer: torch.optim.Optimizer | None = None
        self.latent_cache = LatentCache(self.model, buffer.stacks)
        """Latents of replay rows under the current encoder; cleared whenever the encoder trains."""

    # ---- the stage loop -----------------------------------------------------------------

    def train(self, stages: list[str], steps: int | None, writer: Any, show_progress: bool | None,
              log: Progress | None = None) -> None:
        """Run `stages` in order, skipping those a resumed checkpoint finished; `log` gets a phase per stage
        (noting the last training and held-out losses)."""
        self.calibrate_events()
        for stage in stages:
            total = steps if steps is not None else getattr(self.cfg, f"{stage}_steps")
            if stage in self.progress["done"] or total == 0:
                continue
            if self.progress["stage"] != stage:
                self.progress.update(stage=stage, step=0, best=None, bad_checks=0)
                self.optimizer = self._optimizer(stage)
            assert self.optimizer is not None
            bar = tqdm(total=total, initial=self.progress["step"], desc=f"world model: {stage}", unit="update",
                       disable=None if show_progress is None else not show_progress)
            if log is not None:
                log.phase(f"world model: {stage}", total=total, unit="updates", done=self.progress["step"])
            while self.progress["step"] < total:
                losses = self._update(stage)
                self.progress["step"] += 1
                bar.update(1)
                step = self.progress["step"]
                for name, value in losses.items():
                    writer.add_scalar(f"losses/{stage}/{name}", value, step)
                if step % self.cfg.eval_every == 0 or step == total:
                    val = self._check(stage, writer)
                    bar.set_postfix(loss=f"{losses['total']:.4f}", val=f"{val:.4f}")
                    if log is not None:
                        log.note(world_model_loss=losses["total"], held_out_loss=val)
                    if self.progress["bad_checks"] >= self.cfg.patience:
                        bar.write(f"{stage}: validation loss stopped improving; stopping early at update {step}")
                        break
                if log is not None:
                    log.update(step)
            restored = self._restore_best(stage)
            if restored:
                bar.write(f"{stage}: kept the weights of its best checks, not those of update "
                          f"{self.progress['step']}: " + ", ".join(restored))
            if stage not in FROZEN_ENCODER:
                self.fit_latent_stats()
            bar.close()
            self.progress["done"].append(stage)
            self.save()

    def run_updates(self, stage: str, updates: int, writer: Any, log: Progress | None = None) -> dict[str, float]:
        """`updates` more updates of `stage`, without validation or early stopping (the Dyna loop's refits).

        Continues the stage's optimizer when the stage is the current one. Counts them in
        `progress["dyna_updates"]`, which the loop uses as its milestone; returns the last losses.
        `log` is advanced by every update (its phase is the caller's), noting the training loss.
        """
        if self.progress["stage"] != stage or self.optimizer is None:
            self.progress.update(stage=stage, step=0, best=None, bad_checks=0)
            self.optimizer = self._optimizer(stage)
        self.calibrate_events()
        losses: dict[str, float] = {}
        for _ in range(updates):
            losses = self._update(stage)
            self.progress["step"] += 1
            self.progress["dyna_updates"] = self.progress.get("dyna_updates", 0) + 1
            for name, value in losses.items():
                writer.add_scalar(f"losses/{stage}/{name}", value, self.progress["step"])
            if log is not None:
                log.note(world_model_loss=losses["total"])
                log.advance(1)
        return losses

    def fit_latent_stats(self) -> None:
        """Give a model that standardises its latents (`fit_latent_stats`) the exact statistics of its final
        encoder over STATS_WINDOWS fixed training windows; cached latents are dropped, as they change."""
        fit = getattr(self.model, "fit_latent_stats", None)
        if fit is None:
            return
        rng = np.random.default_rng(1)
        windows = self.buffer.sample(STATS_WINDOWS, self.cfg.seq_len, rng, episodes=self.train_ids)
        fit(torch.from_numpy(w).to(self.device) for w in np.array_split(windows.frames, -(-STATS_WINDOWS // 32)))
        self.latent_cache.clear()

    def refresh_split(self) -> None:
        """Re-split the (grown) buffer's episodes into training and held-out ones."""
        self.train_ids, self.val_ids = split_episodes(self.buffer, self.cfg.holdout_every)

    def calibrate_events(self) -> None:
        """Tell the model how much more often events are training targets than in uniform windows of the
        training episodes (event_fraction), so its heads predict at the real rates."""
        trained, natural = self.buffer.event_rates(self.cfg.batch_size, self.cfg.seq_len, self.train_ids,
                                                   self.cfg.event_fraction, self.cfg.restart_fraction)
        self.model.calibrate_events(torch.from_numpy(trained), torch.from_numpy(natural))

    def _update(self, stage: str) -> dict[str, float]:
        self.model.train()
        batch = self.buffer.sample(self.cfg.batch_size, self.cfg.seq_len, self.rng, episodes=self.train_ids,
                                   event_fraction=self.cfg.event_fraction,
                                   restart_fraction=self.cfg.restart_fraction)
        losses = self.model.loss(to_train_batch(batch, self.device, self._cache_for(stage)), stage)
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        clip_each_part(self.model, self.cfg.grad_clip)
        self.optimizer.step()
        if stage not in FROZEN_ENCODER:
            self.model.update_target()  # type: ignore[operator]
            self.latent_cache.clear()
        return {k: float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def validate(self, stage: str) -> dict[str, float]:
        """Mean loss parts on fixed windows of held-out episodes."""
        self.model.eval()
        rng = np.random.default_rng(0)  # the same windows at every check
        sums: dict[str, float] = {}
        for _ in range(self.cfg.val_batches):
            batch = self.buffer.sample(self.cfg.batch_size, self.cfg.seq_len, rng, episodes=self.val_ids)
            for name, value in self.model.loss(to_train_batch(batch, self.device, self._cache_for(stage)),
                                               stage).items():
                sums[name] = sums.get(name, 0.0) + float(value) / self.cfg.val_batches
        return sums

    def _cache_for(self, stage: str) -> LatentCache | None:
        return self.latent_cache if stage in FROZEN_ENCODER else None

    def _check(self, stage: str, writer: Any) -> float:
        """Validate, log, keep the best weights of each checked part, checkpoint; returns the validation total.

        `progress["best"]` holds each part's best score and the update it was seen at; the best
        checkpoint holds each part's tensors from that update (other tensors: the latest).
        `progress["bad_checks"]` counts the checks since any part last improved.
        """
        val = self.validate(stage)
        step = self.progress["step"]
        for name, value in val.items():
            writer.add_scalar(f"val/{stage}/{name}", value, step)
        if stage != "encoder":
            writer.add_images(f"decoder/{stage}/real_vs_decoded", self._picture(), step, dataformats="NCHW")
        parts = self.model.checked_parts(stage)
        best = self._best_parts()
        scores = {name: sum(w * val[loss] for loss, w in part.losses.items()) for name, part in parts.items()}
        improved = [name for name, score in scores.items() if name not in best or score < best[name]["val"]]
        if improved:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            kept = [parts[name].prefixes for name in best if name not in improved]
            if kept:  # parts that did not improve keep their tensors of the best checkpoint (this stage's)
                previous = load_checkpoint(self.run.checkpoint_dir, BEST).tensors
                for key in tensors:
                    if any(key.startswith("model." + p) for prefixes in kept for p in prefixes):
                        tensors[key] = previous[key]
            best = {**best, **{name: {"val": scores[name], "step": step} for name in improved}}
            save_checkpoint(self.run.checkpoint_dir, BEST, tensors, {"stage": stage, "parts": best}, step=step)
            self.progress.update(best=best, bad_checks=0)
        else:
            self.progress["bad_checks"] += 1
        self.save()
        return val["total"]

    def _best_parts(self) -> dict[str, dict[str, Any]]:
        """The current stage's best check of each part so far (empty before the first check, and for a
        checkpoint of the older format, whose "best" was one number)."""
        best = self.progress["best"]
        return best if isinstance(best, dict) else {}

    def _restore_best(self, stage: str) -> list[str]:
        """Load each checked part's weights of its best validation check (a stage stops `patience` checks
        after the last improvement, and a head's validation loss can jump at the last check). Returns
        "part update N (score)" for the parts whose best is not the current update (none: nothing loaded)."""
        best = self._best_parts()
        older = [f"{name} update {entry['step']} ({entry['val']:.4f})" for name, entry in best.items()
                 if entry["step"] != self.progress["step"]]
        if not older:
            return []
        load_state_dict(self.model, load_checkpoint(self.run.checkpoint_dir, BEST), prefix="model.")
        self.latent_cache.clear()
        return older

    @torch.no_grad()
    def _picture(self) -> torch.Tensor:
        """Eight held-out frames above their decodings: (16, 1, H, W)."""
        batch = self.buffer.sample(8, 0, np.random.default_rng(1), episodes=self.val_ids)
        frames = torch.from_numpy(batch.frames).to(self.device)  # (8, 1, S, H, W)
        decoded = self.model.decode(self.model.encode(frames))[:, 0]
        real = frames[:, 0, -1].float() / 255.0
        return torch.cat([real, decoded]).unsqueeze(1).cpu()

    def _optimizer(self, stage: str) -> torch.optim.Optimizer:
        params = self.model.parameter_groups(stage)  # type: ignore[operator]
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    # ---- checkpoints --------------------------------------------------------------------

    def save(self) -> None:
        """Model, optimizer, RNG states and counters, atomically."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_meta: dict[str, Any] = {}
        if self.optimizer is not None:
            optim_tensors, optim_meta = optimizer_tensors(self.optimizer, "optim.")
            tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        metadata = {**describe(self.cfg.family, self.model), "progress": self.progress, "optimizer": optim_meta,
                    "rng_numpy": self.rng.bit_generator.state, "replay_rows": len(self.buffer)}
        save_checkpoint(self.run.checkpoint_dir, CHECKPOINT, tensors, metadata, step=self.progress["step"])

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint written by `save`."""
        load_state_dict(self.model, ckpt, prefix="model.")
        self.latent_cache.clear()
        self.progress = ckpt.metadata["progress"]
        self.rng.bit_generator.state = ckpt.metadata["rng_numpy"]
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        stage = self.progress["stage"]
        if stage is not None and ckpt.metadata["optimizer"]:
            self.optimizer = self._optimizer(stage)
            load_optimizer(self.optimizer, ckpt, "optim.", ckpt.metadata["optimizer"], self.device)


def clip_each_part(model: torch.nn.Module, max_norm: float) -> None:
    """Clip the gradient norm of each part (child module; the model's own parameters together) on its own.

    One norm over the whole model let the part with the largest gradients set every part's step:
    at the start of stage 2 the reward and end heads' gradient norms (about 30 and 14) were 30
    to 60 times the predictor's, so clipping the sum to 1 slowed the predictor about 30-fold.
    """
    parts = [list(child.parameters()) for child in model.children()] + [list(model.parameters(recurse=False))]
    for params in parts:
        if any(p.grad is not None for p in params):
            torch.nn.utils.clip_grad_norm_(params, max_norm)


def model_config(family_config: Any, num_actions: int) -> Any:
    """The family config with the env's action count filled in."""
    return dataclasses.replace(family_config, num_actions=num_actions)
