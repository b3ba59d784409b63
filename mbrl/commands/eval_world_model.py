"""`mbrl eval-world-model`: metrics of a run's trained world model on held-out episodes."""

from __future__ import annotations

import argparse
from typing import Any

from mbrl.commands.options import add_device_option, int_in, run_path

NAME = "eval-world-model"
HELP = "measure the run's world model on held-out episodes"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(NAME, help=HELP,
                            description="RAM probes, open-loop latent error, reward and life-loss detection and "
                            "decoder PSNR of the run's world model on episodes never trained on; prints them and "
                            "writes runs/NAME/world_model_eval.json.")
    parser.add_argument("--run", type=run_path, required=True, help="run directory with a trained world model")
    parser.add_argument("--windows", type=int_in(1, 4096), default=1024,
                        help="held-out windows to score (default 1024; at most 4096, as every window's frames and "
                        "latents are held at once)")
    add_device_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import json

    from mbrl.core.atomic import write_atomic
    from mbrl.core.errors import UserError
    from mbrl.eval_world_model import evaluate
    from mbrl.session import trained_run

    t = trained_run(args.run, args.device)
    try:
        result = evaluate(t.model, t.buffer, t.train_ids, t.held_out, t.config.env.id, t.device, windows=args.windows)
    except ValueError as exc:  # held-out episodes too short for the windows
        raise UserError(f"cannot evaluate on {t.run.replay_dir}: {exc}") from None
    out = t.run.path / "world_model_eval.json"
    write_atomic(out, json.dumps(result, indent=1).encode())
    print(format_eval(result))
    print(f"written to {out}")


def format_eval(result: dict[str, Any]) -> str:
    """The eval JSON as a few readable lines."""
    lines = [f"held-out: {result['held_out_episodes']} episodes, {result['windows']} windows, "
             f"context {result['context']} steps"]
    for where, scores in result.get("probes", {}).items():
        lines.append(f"probe R^2 [{where}]: " + ", ".join(f"{k} {v['r2']:.3f}" for k, v in scores.items()))
    for h, d in result["dynamics"].items():
        extra = f", R^2 {d['r2']:.3f}, L1 / copying the last latent {d['l1_vs_copy']:.3f}" if "r2" in d else ""
        lines.append(f"latent [{h}]: L1 {d['l1']:.4f}, cosine {d['cosine']:.3f}{extra}")
    for head in ("reward", "life_loss"):
        lines.append(f"{head}: " + ", ".join(
            f"{h} F1 {d['f1']:.3f} P {d['precision']:.2f} R {d['recall']:.2f} AP {d['average_precision']:.3f} "
            f"({d['positives']} positives; "
            f"mean predicted {d['mean_predicted']:.4f} vs rate {d['actual_rate']:.4f})"
            for h, d in result[head].items()))
    repeated = result["repeated_action"]
    lines.append(f"over {repeated['steps']} imagined steps, reward / life losses: " + ", ".join(
        f"{k} {v['reward']:.3f} / {v['life_loss']:.3f}" for k, v in repeated.items() if k != "steps"))
    lines.append("decoder PSNR dB: " + ", ".join(f"{k} {v:.1f}" for k, v in result["decoder_psnr"].items()))
    return "\n".join(lines)
