"""`mbrl dream`: a GIF of the world model's imagination next to the real game, or following the run's agent."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mbrl.commands.options import add_device_option, int_in, run_path, seed_int

NAME = "dream"
HELP = "GIF of the world model's imagination next to the real game"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(NAME, help=HELP,
                            description="Pick a held-out window of real play, give the world model its first "
                            "observations, let it imagine the rest under the actions really taken, and write a GIF: "
                            "real frames | decoded imagined frames. Also logged to tensorboard.")
    parser.add_argument("--run", type=run_path, required=True, help="run directory with a trained world model")
    parser.add_argument("--steps", type=int_in(1, 10_000), default=60,
                        help="imagined steps (default 60; at most 10,000, the GIF's frames are held in memory)")
    parser.add_argument("--context", type=int_in(1, 1024), default=4,
                        help="real observations given first (default 4)")
    parser.add_argument("--out", type=Path, help="GIF path (default: runs/NAME/dream.gif)")
    parser.add_argument("--seed", type=seed_int, default=0, help="picks the window (default 0)")
    parser.add_argument("--agent", action="store_true",
                        help="instead: imagined frames that follow the run's trained agent (from mbrl train-agent), "
                        "acting on imagined latents, restarting from held-out real contexts when an episode ends")
    add_device_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import dataclasses

    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from mbrl.core.atomic import check_output_path
    from mbrl.core.errors import UserError
    from mbrl.dream_video import agent_dream, open_loop
    from mbrl.loop import load_trained_agent
    from mbrl.session import trained_run, with_num_actions
    from mbrl.video import save_gif, side_by_side

    if args.out is not None:
        check_output_path(args.out, "--out")
    t = trained_run(args.run, args.device)
    run_dir = t.run
    out = args.out or run_dir.path / ("dream-agent.gif" if args.agent else "dream.gif")
    if args.agent:
        agent = load_trained_agent(run_dir, with_num_actions(t.config), t.device)
        frames, rewards = agent_dream(t.model, t.buffer, t.held_out, agent.model, args.steps,
                                      dataclasses.replace(t.config.dream, device=str(t.device)), args.seed)
        save_gif(frames, out)
        with SummaryWriter(str(run_dir.tb_dir)) as writer:
            writer.add_images("dream/agent", frames[:: max(1, len(frames) // 8), None], t.checkpoint.step,
                              dataformats="NCHW")
        name = "value" if t.model.has_value else t.config.agent.algo  # a value-aware model's agent is its value head
        print(f"wrote {out}: {len(frames)} imagined frames following the {name} agent; "
              f"dream reward {rewards.sum():g}")
        return
    try:
        real, imagined = open_loop(t.model, t.buffer, t.held_out, args.steps, args.context,
                                   np.random.default_rng(args.seed), t.device)
    except ValueError as exc:
        raise UserError(f"no held-out episode in {run_dir.replay_dir} is long enough: {exc}") from None
    video = side_by_side(real, imagined)
    save_gif(video, out)
    with SummaryWriter(str(run_dir.tb_dir)) as writer:
        writer.add_images("dream/real_vs_imagined", video[:: max(1, len(video) // 8), None], t.checkpoint.step,
                          dataformats="NCHW")
    error = np.abs(real.astype(np.float32) - imagined.astype(np.float32)).mean(axis=(1, 2)) / 255
    print(f"wrote {out}: {len(video)} frames, real | imagined; mean pixel error {error[0]:.3f} at step 1, "
          f"{error[-1]:.3f} at step {len(error)}")
