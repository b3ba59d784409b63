"""`mbrl inspect`: what a run holds.

The one command that does not open its run through mbrl.session: it reads the saved files as they are (no config
resolution, device or model), with mbrl.core alone, so it answers in a fraction of a second instead of waiting for
torch and SB3 to import.
"""

from __future__ import annotations

import argparse
from typing import Any

from mbrl.commands.options import run_path

NAME = "inspect"
HELP = "summarise a run: config, replay buffer, checkpoints"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(NAME, help=HELP, description="Load a run's replay buffer and print what it holds.")
    parser.add_argument("--run", type=run_path, required=True, help="run directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import json

    from mbrl.core.replay import ReplayBuffer
    from mbrl.core.run import RunDir

    run_dir = RunDir(args.run)
    config = run_dir.read_config()  # as saved, unresolved: inspect shows what is there
    buffer = ReplayBuffer.load(run_dir.replay_dir)
    frames = max(len(buffer), 1)
    summary: dict[str, Any] = {
        "run": str(run_dir.path),
        "env": config.get("env", {}).get("id"),
        "replay_steps": buffer.num_steps,
        "replay_episodes": buffer.num_episodes,
        "replay_rows": len(buffer),
        "replay_streams": buffer.num_streams,
        "bytes_per_frame_pixel": buffer.nbytes / frames / (buffer.frame_shape[0] * buffer.frame_shape[1]),
        "checkpoints": sorted(p.stem for p in run_dir.checkpoint_dir.glob("*.json")),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
