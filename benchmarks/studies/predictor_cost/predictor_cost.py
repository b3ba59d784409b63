"""What an imagined step costs against what the world model knows: stage-2 variants side by side.

For each trained run (same replay buffer and stage-1 encoder, stage 2 with different predictor
and head settings) this reads its `world_model_eval.json` (`mbrl eval-world-model --run RUN
--windows 2048`) and measures, on a model of the run's config with random weights (same
compute): the multiply-adds of one imagined step per rollout (counted by torch's FLOP counter
over `WorldModel.step` with a full context window) and the milliseconds of one step of 256 and
of 512 rollouts (median of repeats on `--threads` torch threads).

    python -m benchmarks.studies.predictor_cost.predictor_cost --runs runs/A runs/B [--labels A B] [--note "..."]
        -> results/predictor_cost.json (beside this file), benchmarks/studies/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.planning import chained_step_ms, full_context
from benchmarks.report import save_result
from mbrl.core.checkpoint import load_checkpoint, open_checkpoint
from mbrl.core.memory import keep_freed_memory
from mbrl.core.run import RunDir
from mbrl.envs.registration import world_model_spec
from mbrl.train_world_model import BEST, CHECKPOINT
from mbrl.world_models.base import WorldModel
from mbrl.world_models.registry import build

HERE = Path(__file__).resolve().parent
CONFIG_KEYS = ("action_conditioning", "predictor_dim", "predictor_depth", "predictor_skip", "skip_rank",
               "head_hidden", "summary_tokens")


@torch.no_grad()
def macs_per_rollout_step(model: WorldModel) -> float:
    """Multiply-adds of one imagined step of one rollout (FLOPs / 2, as torch counts them)."""
    _, actions, state = full_context(model, 1)
    with FlopCounterMode(display=False) as counter:
        model.step(state, actions[:, -1])
    return counter.get_total_flops() / 2


@torch.no_grad()
def measure(run: Path, label: str, repeats: int) -> dict[str, Any]:
    checkpoints = RunDir(run).checkpoint_dir
    header = open_checkpoint(checkpoints, CHECKPOINT)
    metadata = header.metadata
    torch.manual_seed(0)
    model = build(*world_model_spec(header)).eval()
    retired = getattr(type(model.config), "retired", {})  # switches removed since: they hold their kept value
    config = {k: getattr(model.config, k, retired.get(k)) for k in CONFIG_KEYS}
    if isinstance(metadata["progress"]["best"], dict):  # per-part early stopping: each part's own check
        kept: Any = {name: entry["step"] for name, entry in metadata["progress"]["best"].items()}
    else:  # one check for the whole model: the best checkpoint's update
        kept = load_checkpoint(checkpoints, BEST).step if (checkpoints / f"{BEST}.json").exists() else None
    row = {"label": label, "run": str(run), "config": config, "updates": metadata["progress"]["step"],
           "kept": kept, "macs": macs_per_rollout_step(model),
           "step_ms": {str(n): chained_step_ms(model, n, repeats, warmup=3) for n in (256, 512)},
           "eval": json.loads((run / "world_model_eval.json").read_text())}
    print(f"{label}: {row['macs'] / 1e6:.2f}M multiply-adds per rollout step, step of 256 "
          f"{row['step_ms']['256']:.1f} ms, of 512 {row['step_ms']['512']:.1f} ms", flush=True)
    return row


def with_tables(r: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, notes and table, one row per run."""
    notes = [f"Torch threads {r['torch_threads']}. Stage-2 variants on the same replay buffer and stage-1 encoder. "
             "Multiply-adds: one imagined step of one rollout (torch's FLOP counter over `step` / 2, full context "
             "window); ms: median of one step of 256 and of 512 rollouts (random weights of the run's config). "
             "Quality from each run's `mbrl eval-world-model --run RUN --windows 2048` on held-out episodes: L1 / "
             "copy is the imagined latents' error over that of repeating the last real latent; R^2 of linear probes "
             "to the console RAM; AP the average precision of the heads (chance: the event rate); 'over 10' sums the "
             "imagined reward over 10 steps of one repeated action. Updates: the last stage-2 update; 'kept' the "
             "update whose weights the run ended with (each part's own with per-part early stopping)."]

    def two(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    rows = []
    for row in r["rows"]:
        c, e = row["config"], row["eval"]
        probes, repeated = e["probes"], e.get("repeated_action")
        skip = "no" if not c["predictor_skip"] else ("full" if not c["skip_rank"] else f"rank {c['skip_rank']}")
        kept = row["kept"]
        kept = " / ".join(f"{name} {step}" for name, step in kept.items()) if isinstance(kept, dict) else str(kept)
        rows.append([
            row["label"], f"{c['summary_tokens']}, {c['action_conditioning']}, {c['predictor_dim']} x "
            f"{c['predictor_depth']}, {skip}, {c['head_hidden']}", f"{row['macs'] / 1e6:.2f}",
            f"{row['step_ms']['256']:.1f}, {row['step_ms']['512']:.1f}", f"{row['updates']} ({kept})",
            two([e["dynamics"][h]["l1_vs_copy"] for h in ("h1", "h5", "h10")]),
            two([probes[h]["paddle_x"]["r2"] for h in ("h1", "h5")]),
            two([probes["h1"]["ball_x"]["r2"], probes["h1"]["ball_y"]["r2"]]),
            two([probes["h5"]["ball_x"]["r2"], probes["h5"]["ball_y"]["r2"]]),
            two([e["reward"][h]["average_precision"] for h in ("h1", "h5", "real")]),
            two([e["life_loss"][h]["average_precision"] for h in ("h1", "h5", "real")]),
            "-" if repeated is None else ", ".join(f"{repeated[f'action {a}']['reward']:.3f}" for a in range(4)),
            f"{e['decoder_psnr']['encoded']:.1f}"])
    columns = ["run", "summary tokens, conditioning, width x depth, linear path, head hidden", "M multiply-adds / step",
               "ms / step of 256, 512", "updates (kept)", "L1 / copy h1, h5, h10", "paddle R^2 h1, h5",
               "ball x, y R^2 h1", "ball x, y R^2 h5", "reward AP h1, h5, real", "life-loss AP h1, h5, real",
               "reward over 10: NOOP, FIRE, RIGHT, LEFT", "PSNR dB"]
    return {**r, "title": "What an imagined step costs and what the model knows", "notes": notes,
            "tables": [{"columns": columns, "rows": rows, "notes": [r["note"]] if r.get("note") else []}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="trained and evaluated runs")
    parser.add_argument("--labels", nargs="*", help="row names (default: the run directories' names)")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--note", default="", help="text printed under the table")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "predictor_cost.json")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("--labels needs one name per run")
    torch.set_num_threads(args.threads)
    rows = [measure(run, label, args.repeats) for run, label in zip(args.runs, labels)]
    command = ("python -m benchmarks.studies.predictor_cost.predictor_cost --runs " + " ".join(map(str, args.runs))
               + (" --labels " + " ".join(labels) if args.labels else "") + f" --threads {args.threads}")
    save_result(with_tables({"benchmark": "predictor_cost", "torch_threads": args.threads, "command": command,
                             "note": args.note, "rows": rows}), args.out)


if __name__ == "__main__":
    main()
