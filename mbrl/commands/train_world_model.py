"""`mbrl train-world-model`: world-model training on a run's replay buffer, stage by stage, resumably."""

from __future__ import annotations

import argparse
from typing import Any

from mbrl.commands.options import QUIET_HELP, add_device_option, add_quiet_option, add_set_option, int_in, run_path

NAME = "train-world-model"
HELP = "train the world model on a run's replay buffer"


def add_parser(sub: Any) -> None:
    from mbrl.train_world_model import STAGES

    parser = sub.add_parser(NAME, help=HELP,
                            description="Train the run's world model on its replay buffer: stage 1 (self-supervised "
                            "encoder), stage 2 (predictor, reward and termination heads, decoder; encoder frozen), "
                            "stage 3 (everything together, if world_model_training.finetune_steps > 0). Validation "
                            "on held-out episodes, early stopping, tensorboard, checkpoints in the run.")
    parser.add_argument("--run", type=run_path, required=True, help="run directory with a replay buffer")
    parser.add_argument("--stage", choices=sorted(STAGES), default="all",
                        help="1 encoder, 2 dynamics, 3 finetune, or all in order (default: all); family "
                        "jepa-value has one joint stage (all)")
    parser.add_argument("--steps", type=int_in(1, 1_000_000_000),
                        help="updates per stage (default: from the config; jepa-value: the total of joint updates, "
                        "default joint.replay_ratio per stored step past joint.warmup_steps)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run's world-model checkpoint instead of starting anew")
    parser.add_argument("--again", action="store_true",
                        help="with --resume: train the --stage stages again from the checkpoint's weights, those "
                             "it finished too, with a new optimizer (e.g. more dynamics updates under other --set "
                             "values); an interrupted --again run continues with --resume and the same --stage and "
                             "--steps")
    add_device_option(parser)
    add_set_option(parser, "world_model_training.lr=1e-3")
    add_quiet_option(parser, QUIET_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from mbrl.core.checkpoint import load_checkpoint
    from mbrl.core.config import dump_yaml
    from mbrl.core.errors import UserError
    from mbrl.joint import FAMILY as JOINT_FAMILY
    from mbrl.joint import train_offline
    from mbrl.progress import Progress
    from mbrl.session import (
        check_world_model_fits,
        config_for_run,
        existing_run,
        load_replay,
        resolve_device,
        with_num_actions,
    )
    from mbrl.train_world_model import CHECKPOINT, STAGES, Trainer
    from mbrl.world_models.registry import build

    if args.again and not args.resume:  # before the run's config is rewritten or its buffer loaded
        raise UserError("--again trains a trained world model more: pass --resume too")
    run_dir = existing_run(args.run)
    config = config_for_run(run_dir, None, args.set, {"device": args.device})
    device = resolve_device(config.device)
    show_progress = False if args.quiet else None
    log = Progress.beside_bar(NAME, show_progress)
    if config.world_model_training.family == JOINT_FAMILY:  # the value-aware JEPA: one joint stage, no acting
        if args.stage != "all":
            raise UserError(f"family {JOINT_FAMILY} trains in one joint stage; use --stage all "
                            f"(got --stage {args.stage})")
        if not args.resume and (run_dir.checkpoint_dir / f"{CHECKPOINT}.json").exists():
            raise UserError(f"{run_dir.checkpoint_dir} already holds a world model; pass --resume to continue it")
        config = with_num_actions(config)
        check_world_model_fits(config)
        run_dir.create(dump_yaml(config))
        updates = train_offline(run_dir, config, device, args.steps, args.resume, show_progress, log)
        print(f"world model trained (joint, {updates} updates); checkpoint {run_dir.checkpoint_dir / CHECKPOINT}.json")
        return
    buffer = load_replay(run_dir)
    config = with_num_actions(config)
    check_world_model_fits(config)
    run_dir.create(dump_yaml(config))
    torch.manual_seed(config.seed)  # the world model's initial weights: the same seed, the same model
    model = build(config.world_model_training.family, config.world_model)
    trainer = Trainer(run_dir, model, buffer, config.world_model_training, device, config.seed)
    if args.resume:
        trainer.restore(load_checkpoint(run_dir.checkpoint_dir, CHECKPOINT))
        if args.again:
            again = STAGES[args.stage]
            trainer.progress.update(done=[d for d in trainer.progress["done"] if d not in again], stage=None, step=0)
    elif (run_dir.checkpoint_dir / f"{CHECKPOINT}.json").exists():
        raise UserError(f"{run_dir.checkpoint_dir} already holds a world model; pass --resume to continue it")
    with SummaryWriter(str(run_dir.tb_dir)) as writer:
        trainer.train(STAGES[args.stage], args.steps, writer, show_progress=show_progress, log=log)
    val = {stage: trainer.validate(stage)["total"] for stage in trainer.progress["done"]}
    print(f"world model trained ({', '.join(trainer.progress['done'])}) on {len(trainer.train_ids)} episodes; "
          f"held-out loss: {', '.join(f'{k} {v:.4f}' for k, v in val.items())}; "
          f"checkpoint {run_dir.checkpoint_dir / CHECKPOINT}.json")
