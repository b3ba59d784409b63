"""World-model training throughput and peak memory, per stage, on this machine's CPU cores.

Times full training updates (forward, backward, AdamW step, EMA update where the stage has
one) of the default JEPA world model on batches of real-sized observations (4 x 64 x 64
uint8; random pixels, which cost the same as game frames), and target-encoder inference.
Stage 2 is timed twice: encoding its windows, and reading their latents from a cache as
`mbrl train-world-model` does (the encoder is frozen in stage 2, so each replay row is encoded
once). Frames/s counts observations processed per second: batch_size x (seq_len + 1) per update.

    python -m benchmarks.world_model_train   # -> benchmarks/results/world_model_train.json, RESULTS.md
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import HERE, save_result
from mbrl.core.memory import keep_freed_memory
from mbrl.run_config import RunConfig
from mbrl.world_models.base import TrainBatch
from mbrl.world_models.jepa import JEPAWorldModel


def random_batch(batch_size: int, seq_len: int, num_actions: int, generator: torch.Generator) -> TrainBatch:
    b, t = batch_size, seq_len
    return TrainBatch(
        frames=torch.randint(0, 256, (b, t + 1, 4, 64, 64), dtype=torch.uint8, generator=generator),
        actions=torch.randint(0, num_actions, (b, t), generator=generator),
        rewards=torch.randint(-1, 2, (b, t), generator=generator).float(),
        terminated=torch.rand(b, t, generator=generator) < 0.01,
        life_loss=torch.rand(b, t, generator=generator) < 0.05,
    )


def updates_per_second(model: JEPAWorldModel, stage: str, batch_size: int, seq_len: int, updates: int,
                       cached: bool = False) -> float:
    optimizer = torch.optim.AdamW(model.parameter_groups(stage), lr=3e-4)
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(batch_size, seq_len, model.num_actions, generator) for _ in range(4)]
    if cached:
        batches = [batch._replace(latents=model.encode(batch.frames)) for batch in batches]
    model.train()
    for i in range(updates + 2):  # two warm-up updates
        if i == 2:
            start = time.perf_counter()
        loss = model.loss(batches[i % 4], stage)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if stage != "dynamics":
            model.update_target()
    return updates / (time.perf_counter() - start)


@torch.no_grad()
def encode_frames_per_second(model: JEPAWorldModel, batch: int, rounds: int) -> float:
    frames = torch.randint(0, 256, (batch, 1, 4, 64, 64), dtype=torch.uint8)
    model.eval()
    model.encode(frames)
    start = time.perf_counter()
    for _ in range(rounds):
        model.encode(frames)
    return batch * rounds / (time.perf_counter() - start)


def with_tables(r: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, notes and table."""
    p = r["parameters"]
    rows = [["dynamics, latents from the cache" if stage == "dynamics_cached" else stage,
             f"{s['updates_per_second']:.2f}", f"{s['frames_per_second']:.0f}"] for stage, s in r["stages"].items()]
    rows.append(["target-encoder inference", "", f"{r['encode_frames_per_second']:.0f}"])
    notes = [f"Torch threads {r['torch_threads']}. Default JEPA model: {p['all'] / 1e6:.2f}M parameters (encoder "
             f"{p['encoder'] / 1e6:.2f}M, dynamics {p['dynamics'] / 1e6:.2f}M, decoder {p['decoder'] / 1e6:.2f}M); "
             f"batch {r['batch']}."]
    table = {"columns": ["stage", "updates/s", "frames/s"], "rows": rows,
             "notes": [f"Peak resident memory of the benchmark process: {r['peak_rss_mib']:.0f} MiB."]}
    return {**r, "title": "World-model training throughput", "notes": notes, "tables": [table]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--updates", type=int, default=10, help="timed updates per stage")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "world_model_train.json")
    args = parser.parse_args()
    keep_freed_memory()  # as the mbrl command line does

    torch.manual_seed(0)
    model = JEPAWorldModel(RunConfig().world_model)
    obs_per_update = args.batch_size * (args.seq_len + 1)
    stages = {}
    for name, stage, cached in (("encoder", "encoder", False), ("dynamics", "dynamics", False),
                                ("dynamics_cached", "dynamics", True), ("finetune", "finetune", False)):
        ups = updates_per_second(model, stage, args.batch_size, args.seq_len, args.updates, cached)
        stages[name] = {"updates_per_second": ups, "frames_per_second": ups * obs_per_update}
        print(f"{name}: {ups:.2f} updates/s, {ups * obs_per_update:.0f} frames/s", flush=True)
    result = {
        "benchmark": "world_model_train",
        "torch_threads": torch.get_num_threads(),
        "command": f"python -m benchmarks.world_model_train --batch-size {args.batch_size} --seq-len {args.seq_len} "
        f"--updates {args.updates}",
        "parameters": {name: sum(p.numel() for p in part.parameters()) for name, part in
                       [("encoder", model.online), ("dynamics", model.dynamics), ("decoder", model.decoder),
                        ("all", model)]},
        "batch": f"{args.batch_size} windows x {args.seq_len + 1} observations",
        "stages": stages,
        "encode_frames_per_second": encode_frames_per_second(model, 256, 5),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    save_result(with_tables(result), args.out)


if __name__ == "__main__":
    main()
