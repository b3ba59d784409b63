"""Render every JSON result in benchmarks/results/ into benchmarks/RESULTS.md.

Each benchmark script writes its JSON and calls `write_results_md()`; running this file
alone re-renders the table from the saved results.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

from paired import paired_t

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """CPU model and usable cores of this machine, for the results table."""
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, no GPU"


def _collect_throughput(r: dict[str, Any]) -> list[str]:
    return [
        "## Collection throughput (`benchmarks/collect_throughput.py`)",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Command: `{r['command']}`.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| env, envs | {r['env']}, {r['num_envs']} |",
        f"| raw `ale_py.AtariVectorEnv` steps/s, median of rounds | {r['raw_median']:.0f} |",
        f"| `mbrl collect` pipeline steps/s, median of rounds | {r['mbrl_median']:.0f} |",
        f"| mbrl / raw, median of per-round ratios (target >= 0.80) | {r['ratio_median']:.2f} |",
        f"| per-round ratios | {', '.join(f'{x:.2f}' for x in r['ratio_per_round'])} |",
        f"| replay bytes per frame pixel, resident after load ({r['rows']} rows) | "
        f"{r['resident_bytes_per_frame_pixel']:.3f} |",
        f"| replay bytes per frame pixel, on disk | {r['disk_bytes_per_frame_pixel']:.3f} |",
        f"| replay bytes per frame pixel, all arrays incl. bookkeeping | {r['accounted_bytes_per_frame_pixel']:.3f} |",
        "",
        "The speed of one pipeline varies by up to 2x from round to round on this shared machine, so the figure",
        "is the median of per-round ratios; the raw env uses a C++ thread pool and cannot record the console RAM.",
        "",
    ]


def _world_model_train(r: dict[str, Any]) -> list[str]:
    p = r["parameters"]
    lines = [
        "## World-model training throughput (`benchmarks/world_model_train.py`)",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}. Date: {r['date']}. Command: `{r['command']}`.",
        f"Default JEPA model: {p['all'] / 1e6:.2f}M parameters (encoder {p['encoder'] / 1e6:.2f}M, dynamics "
        f"{p['dynamics'] / 1e6:.2f}M, decoder {p['decoder'] / 1e6:.2f}M); batch {r['batch']}.",
        "",
        "| stage | updates/s | frames/s |",
        "| --- | --- | --- |",
    ]
    for stage, s in r["stages"].items():
        label = "dynamics, latents from the cache" if stage == "dynamics_cached" else stage
        lines.append(f"| {label} | {s['updates_per_second']:.2f} | {s['frames_per_second']:.0f} |")
    lines += [
        f"| target-encoder inference | | {r['encode_frames_per_second']:.0f} |",
        "",
        f"Peak resident memory of the benchmark process: {r['peak_rss_mib']:.0f} MiB.",
        "",
    ]
    return lines


def _ratio_at(r: dict[str, Any], num_envs: int) -> float:
    """Dream latent steps/s over real steps/s at `num_envs` rollouts (0 if not measured)."""
    row = next((row for row in r["rows"] if row["num_envs"] == num_envs), None)
    return 0.0 if row is None else row["dream_latent"] / row["real"]


def _dream_throughput(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Dream env throughput (`benchmarks/dream_throughput.py`)",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}. Date: {r['date']}. Command: `{r['command']}`.",
        "Default JEPA world model. Real: `ale_py.AtariVectorEnv` Breakout 64x64x4 with min(N, 64) envs. Imagined "
        "episodes end at the 15-step horizon and restart staggered (1/15 of the rollouts at every step, as when a "
        "trained model ends episodes at any step). Each figure is the median of the alternated repeats in the JSON "
        "(`samples`). Target: the dream at N=256 runs at least 10x the real env: "
        + ("met" if _ratio_at(r, 256) >= 10 else "not met") + f" ({_ratio_at(r, 256):.1f}x). History of the figure "
        "at N=256 in this script, on an Intel Xeon machine until 2026-12-02 (real env 2,642-2,771 steps/s): 532 "
        "steps/s before any key/value cache, 8,867 with it (commit e23fab0), 14,382 "
        "(4.5x) with the cache a ring written in place, restarts in place and the standardized heads, 22,397 (7.1x) "
        "with a predictor of one token per step, width 64, a rank-128 linear path and heads of 64 hidden units "
        "(0.54M multiply-adds per imagined step of one rollout against 2.39M; `benchmarks/predictor_cost.py`) and "
        "folded weights; those runs restarted all rollouts together every 15th step and timed 16 vector steps, "
        "without medians. Then, with staggered restarts and medians: 29,925 (11.3x, real 2,642) with restarts "
        "from a pool of contexts prefilled N at a time, contexts read without their frames, window ends remembered, "
        "the dream seeding only torch's CPU generator, attention over the ring by elementwise products, the ring "
        "written with index_copy_ and both heads run as one; 40,307 (14.5x) with 2 predictor blocks instead of 3 "
        "(0.49M multiply-adds; run m_depth2 in 'What an imagined step costs'). On this AMD EPYC machine, whose real "
        "env runs ~1.6x faster, that version (commit 10015c0) gave 48,892 (11.5x, real 4,245; N=64: 20,246), and "
        "imagination that carries the linear reads of each latent (world_models/jepa_reads.py, 0.31M multiply-adds "
        "per step) the figures below (same command, `--sizes 64 256` for the older commit). Pixel mode is bound by "
        "the decoder. Single runs of this script vary by up to ~40% on these machines.",
        "",
        "| N | real steps/s | dream latent steps/s | latent / real | dream pixels steps/s | pixels / real |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        real = row["real"]
        lines.append(f"| {row['num_envs']} | {real:.0f} | {row['dream_latent']:.0f} | {row['dream_latent'] / real:.2f} "
                     f"| {row['dream_pixels']:.0f} | {row['dream_pixels'] / real:.2f} |")
    return lines + [""]


def _world_model_quality(r: dict[str, Any]) -> list[str]:
    e = r["eval"]
    probes = e.get("probes", {})
    names = list(next(iter(probes.values()), {}))
    lines = [
        "## World-model quality on held-out Breakout episodes (`mbrl eval-world-model`)"
        + (f": {r['model']}" if "model" in r else ""),
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Buffer: {r['buffer']}. Training: "
        f"{r['train_seconds'] / 60:.0f} min wall clock ({r['train_note']}). Final held-out losses: stage 1 "
        f"{r['final_validation']['encoder']:.4f}, stage 2 {r['final_validation']['dynamics']:.4f}.",
        "Commands: " + "; ".join(f"`{c}`" for c in r["commands"]) + ".",
        "",
        "Ball probes " + ("count only observations with the ball on screen (RAM[101] in 1..184); "
                          if "probe_frames" in e else "count all observations; ")
        + "latent R^2 and 'L1 / copy' (the error of predicting the last real latent again) compare across "
        "latent scales, L1 and cosine do not.",
        "",
        "| latents | " + " | ".join(f"{n} R^2" for n in names)
        + " | latent L1 | cosine | latent R^2 | L1 / copy | decoder PSNR dB |",
        "| --- |" + " --- |" * (len(names) + 5),
    ]
    nan = float("nan")
    for where in probes:
        d = {"l1": nan, "cosine": nan, "r2": nan, "l1_vs_copy": nan, **e["dynamics"].get(where, {})}
        cells = " | ".join(f"{probes[where][n]['r2']:.3f}" for n in names)
        numbers = " | ".join("-" if x != x else f"{x:{fmt}}" for x, fmt in
                             ((d["l1"], ".4f"), (d["cosine"], ".3f"), (d["r2"], ".3f"), (d["l1_vs_copy"], ".3f")))
        lines.append(f"| {where} | {cells} | {numbers} | {e['decoder_psnr'][where]:.1f} |")
    lines += ["", "| head | horizon | precision | recall | F1 | positives | mean predicted | actual rate |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for head in ("reward", "life_loss"):
        for h, d in e[head].items():
            scores = " | ".join(f"{d[k]:.3f}" for k in ("precision", "recall", "f1"))
            rates = " | ".join(f"{d[k]:.4f}" if k in d else "-" for k in ("mean_predicted", "actual_rate"))
            lines.append(f"| {head} | {h} | {scores} | {d['positives']} | {rates} |")
    lines += ["", "Rows h1 / h5 score the heads on imagined next latents (what the dream and the planners use), "
              "rows 'real' on the encoded real next latent of every transition of the held-out windows (what the "
              "heads can read when the dynamics is not in the way); threshold 0.5 on |expected reward| and on the "
              "life-loss probability."]
    lines += ["", "Targets (issue 3): paddle-x R^2 >= 0.9 and ball R^2 >= 0.7 on encoded frames, ball R^2 >= 0.5 at "
              "h5, reward F1 >= 0.8 at h1.", ""]
    return lines


def _cem_issue_row(r: dict[str, Any]) -> dict[str, Any] | None:
    """The planning result's fastest (p95) CEM row at the issue's budget N=512, H=12, I=4, if measured."""
    return min((row for row in r["rows"] if row["planner"] == "cem" and
                (row["candidates"], row["horizon"], row["iterations"]) == (512, 12, 4)),
               key=lambda row: row["p95_ms"], default=None)


def _planning(r: dict[str, Any]) -> list[str]:
    p = r["step_profile"]
    best = r["largest_cem_within_target"]
    issue_row = _cem_issue_row(r)
    lines = [
        "## Latent MPC speed (`benchmarks/planning.py`)",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}, load average {r['load_average']:.1f} at the "
        f"end (the machine is shared). Date: {r['date']}. Command: `{r['command']}`.",
        "Default JEPA world model (random weights: the same compute per imagined step; a trained model on real "
        "frames imagined 13% more steps per action at N=512, H=12, I=4), one env, `MPCAgent.predict` per real action "
        "(encode, plan, shift). Imagined steps count rollout steps after shared discrete prefixes are imagined "
        f"once. Target: <= {r['target_ms']:.0f} ms per action for CEM at N=512, H=12, I=4: "
        + ("met." if issue_row is not None and issue_row["p95_ms"] <= r["target_ms"] else "not met.")
        + (f" 'compiled': imagination compiled (`mpc.compile=true`, `WorldModel.compile_imagination`); the "
           f"compile and its first action took {r['compile_seconds']:.0f} s." if "compile_seconds" in r else "")
        + " History of that row (same script; 1 thread until 2026-12-02's second run): 4.7 s before the "
        "predictor's key/value cache; 886 ms with the previous default predictor (2.39M multiply-adds per imagined "
        "step of a rollout); 572 ms with 3 blocks (0.54M); 259 ms with 2 blocks (0.49M), attention over the ring by "
        "elementwise products and both heads run as one. Now imagination carries the linear reads of each latent "
        "(world_models/jepa_reads.py: 0.31M multiply-adds, 0.21M when the planner skips the latent, which it does "
        "without a value function), and imagined steps of fewer than 128 rollouts run on one thread, larger ones "
        "on two. Since 2026-12-02's third run the process keeps freed memory for reuse (mbrl/memory.py: "
        "~16,000 page faults per action before in the worst heap states, ~600 after); the same script gave 146 ms "
        "before it and 126 ms after, but five alternated runs of each (CEM row only) gave medians 98-120 ms "
        "without and 114-135 with, so on this shared machine the change is within run-to-run spread for "
        "planning (it is clearer for the dream env's pixel mode). Since then the script measures every row in "
        "3 rounds, all rows in turn, and shows each round's median: 112 ms on 2026-12-02 (rounds 105, 109, 133). "
        "Since 2026-12-03 the first levels of the action tree (4 at N=512) are imagined once per plan and shared "
        "by its rounds (agents/planners/objective.py): 36 calls of `step` per plan instead of 48, 0.91 of the time per "
        "action alternating the two in one process on idle cores (152 against 169 ms, the same actions), but "
        "this machine was slower that day (one 512-rollout step 5.7 ms against 4.1 on 2026-12-02), so the "
        "table's figures are above the earlier ones. What remains is per-step and per-row work outside the "
        "matrix products: ~217 torch calls per `step` (~1 ms of fixed cost), and ~10 us per rollout step "
        "against ~2.3 us of arithmetic; carrying the reads in bfloat16 (AVX512-BF16) made a 512-rollout step 7% "
        "faster on two threads, not kept. Since 2026-12-04 the objective hands the world model a round whole, as a "
        "tree of the distinct prefixes (`WorldModel.step_tree`), and the JEPA model imagines up to 4 depths per call "
        "(compiled: one graph, the parents' states copied inside it), so a plan at the issue's budget makes 5 "
        "calls of `step_tree` (the table's last column), 9 calls of the compiled function, instead of 36 of `step`; on "
        "that day's slower machine (one 512-rollout eager step 10.1 and 12.9 ms in two runs of this script, "
        "against 6.1 on 2026-12-03) the compiled row took 0.45 and 0.48 of the eager one, against 0.64 on "
        "2026-12-03, and paired per action in one process against the "
        "compiled single steps, 0.69 of the time (README, 'Compiled trees'). Since that day's third run the compiled "
        "graph runs from a C++ wrapper (inductor's `cpp_wrapper`) and rotates by the rotary angles in real "
        "arithmetic (complex numbers were eager kernels inside the graph): 0.94 of the time per action, paired "
        "in one process against the graph before (60 actions, same actions chosen); three runs of this script then "
        "gave the compiled row medians of 114, 95 and 92 ms (p95 141, 103 and 111) with one 512-rollout eager step "
        "at 8.7, 6.7 and 6.3 ms (README, 'C++ wrapper'). Since 2026-12-05 the script also times that compiled "
        "row in a fresh process that plans nothing else, as `mbrl plan --compile` does ('own process'): in the "
        "main process, which also hosts the eager model and the other rows, the same plans came out slower "
        "(README, 'Planning in a process of its own').",
        "",
        "| planner | N | H | I | compiled | actions timed | median ms | p95 ms | rounds' medians ms | imagined steps "
        "per action | without dedupe | imagination calls per action |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        rounds = ", ".join(f"{m:.0f}" for m in row.get("round_medians_ms", [])) or "-"
        lines.append(f"| {row['planner']} | {row['candidates']} | {row['horizon']} | {row['iterations']} | "
                     f"{'yes, own process' if row.get('own_process') else 'yes' if row.get('compiled') else 'no'} | "
                     f"{row['actions']} | {row['median_ms']:.0f} | {row['p95_ms']:.0f} | {rounds} | "
                     f"{row['imagined_steps']:.0f} | {row['imagined_steps_without_dedupe']} | "
                     + (f"{row['imagination_calls']:.0f} |" if "imagination_calls" in row else "- |"))
    lines += [
        "",
        f"One imagined step of {p['batch']} rollouts with a full context window: {p['step_ms']:.1f} ms, "
        f"{p['step_without_latent_ms']:.1f} ms without the latent, {p['step_reading_each_latent_ms']:.1f} ms reading "
        f"each latent again as before the carried reads (its predictor part {p['predictor_cached_ms']:.1f} ms, "
        f"re-reading the whole window as before the key/value cache {p['predictor_full_window_ms']:.0f} ms; "
        f"reward and termination heads on latents {p['heads_ms']:.1f} ms). Encoding one observation: "
        f"{p['encode_one_obs_ms']:.1f} ms."
        + (f" Compiled, a step without its latent: {p['compiled_step_without_latent_ms']:.1f} ms."
           if "compiled_step_without_latent_ms" in p else ""),
        "",
        "Largest CEM budget within the target (p95): "
        + ("none measured." if best is None else
           f"N={best['candidates']}, H={best['horizon']}, I={best['iterations']}"
           f"{', compiled' if best.get('compiled') else ''} "
           f"(median {best['median_ms']:.0f} ms, p95 {best['p95_ms']:.0f} ms)."),
        "",
    ]
    return lines


def _command_list(rows: list[dict[str, Any]]) -> list[str]:
    """A section's closing list of the distinct commands of its rows."""
    return ["", "Commands:", "", *(f"- `{c}`" for c in dict.fromkeys(row["command"] for row in rows)), ""]


def _planning_score(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Latent MPC on the real game (`benchmarks/planning_score.py`)",
        "",
        "Per run: full real games (no episodic life, sticky actions 0.25, 108k-frame cap, raw score) with MPC on "
        "the run's world model (`mbrl plan`'s agent; 'value': the run's agent's critic values the last imagined "
        "latent), with the run's own trained agent and with the random policy, through the same evaluation code "
        "and seed, so the three start the same games. 'MPC acts': the first action of the best sequence found, or "
        "one drawn from the plan's final distribution (what `mbrl evaluate` and `mbrl plan` do since 2026-12-03, "
        "as with agents: a plan that never values FIRE otherwise stalls the game). Target of issue 6: MPC clearly "
        "above random. Mean +- std "
        "over games; minutes of MPC's games (one torch thread, sharing the cores).",
        "",
        "| run | planner | N, H, I | value | life-loss penalty | MPC acts | games (seed) | MPC | run's agent | random "
        "| MPC minutes | date, machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(x: dict[str, Any] | None) -> str:
        return "-" if x is None else f"{x['mean']:.2f} +- {x['std']:.2f}"

    for e in r["runs"]:
        lines.append(f"| {e['run']} | {e['planner']} | {e['candidates']}, {e['horizon']}, {e['iterations']} | "
                     f"{'yes' if e['value_from_agent'] else 'no'} | {e['life_loss_penalty']:g} | "
                     f"{e.get('mpc_acts', 'best')} | {e['episodes']} "
                     f"({e['seed']}) | {cell(e['mpc'])} | {cell(e['agent'])} | {cell(e['random'])} | "
                     f"{e['mpc']['seconds'] / 60:.1f} | {e['date']}, {e['machine']} |")
    return [*lines, *_command_list(r["runs"])]


def _plan_ranking(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Does the planning objective rank action sequences as the real game does? (`benchmarks/plan_ranking.py`)",
        "",
        "Per run: states from real games of the run's agent (as in evaluation) or the random policy ('played by'), "
        "one every few steps; at each, the same uniformly drawn action sequences scored by `mbrl plan`'s objective "
        "(the run's world model, its `mpc` discount and life-loss penalty, no terminal value) and by the real game "
        "replayed from the saved emulator state without sticky actions (`envs/emulator.py`), on the first H steps. "
        "Informative: the share of states where the real returns of the sequences differ at all; the other columns "
        "are means over those states. Spearman: rank correlation of imagined and real returns. Gain: (real return "
        "of the imagined best - mean real return) / (best real - mean real): 1 = the objective picks the best "
        "sequence, 0 = no better than a random pick (what the random policy gets). Room: best real - mean real. "
        "'heads on real futures': the same heads read on the encoded frames of each sequence's real future instead "
        "of on imagined latents (what better dynamics could give at most), at the first states where the longest "
        "horizon's real returns differ, shown with imagination on the same states. A world model with a value head "
        "(family jepa-value) is also scored with its value added at the horizon ('imagination + value', as `mbrl "
        "plan` plans with it) against 'real + agent': the real H-step return plus what the run's greedy agent really "
        "earns after the sequence (discounted, until it loses a life or `continue_steps` pass); 'real H steps alone' "
        "against the same truth shows how much of it lies past the horizon.",
        "",
        "| run | played by | scored by | states (every) | candidates | H | informative | spearman | gain | room | "
        "seed | date, machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def number(x: float) -> str:
        return "-" if x != x else f"{x:.3f}"  # nan: no state to rank at

    for e in r["runs"]:
        for h in e["rankings"]:
            against = f" vs {h['against']}" if "against" in h else ""  # rows without it are against the real H steps
            lines.append(f"| {e['run']} | {e['behaviour']} | {h['scored_by']}{against} | {h['states']} "
                         f"({e['every']}) | "
                         f"{e['candidates']} | {h['horizon']} | {h['informative']:.3f} | {number(h['spearman'])} | "
                         f"{number(h['gain'])} | {h['room']:.3f} | {e['seed']} | {e['date']}, {e['machine']} |")
    return [*lines, *_command_list(r["runs"])]


def _emulator_planning(r: dict[str, Any]) -> list[str]:
    lines = [
        "## MPC with a perfect model: planning on the real game's replays (`benchmarks/emulator_planning.py`)",
        "",
        "`mbrl plan`'s planner and objective (the atari100k preset's life-loss penalty and discount) with the "
        "world model's imagination replaced by the real game replayed from its saved state without sticky actions "
        "(`mbrl.envs.emulator.emulator_objective`): what MPC could reach if imagination were the game. Real games "
        "under the evaluation rules (sticky actions 0.25, raw score), cut after 'max steps' agent steps: a cut "
        "game's score counts as it stands. Acting: a draw from the plan's distribution ('sampled', as `mbrl plan`) "
        "or the best sequence's first action. Seconds: per agent step, one process, ALE on one core.",
        "",
        "| planner | N, H, I | acts | games (seed) | max steps | score | per game | steps per game | cut | s per "
        "step | date, machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in r["runs"]:
        lines.append(f"| {e['planner']} | {e['candidates']}, {e['horizon']}, {e['iterations']} | {e['act']} | "
                     f"{e['games']} ({e['seed']}) | {e['max_steps']} | {e['mean']:.2f} +- {e['std']:.2f} | "
                     f"{', '.join(f'{x:g}' for x in e['scores'])} | {', '.join(str(n) for n in e['lengths'])} | "
                     f"{sum(e['cut'])} | {sum(e['seconds']) / sum(e['lengths']):.2f} | {e['date']}, {e['machine']} |")
    return [*lines, *_command_list(r["runs"])]


def _breakout_100k(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Breakout at the Atari-100k budget (`benchmarks/breakout_100k.py`)",
        "",
        f"Machines: {'; '.join(sorted({x.get('machine', r['machine']) for x in r['runs']}))} (per row below). "
        f"Date of the last finished run: {max(x.get('date', r['date']) for x in r['runs'])}. "
        f"Command of the last: `{r['command']}`.",
        f"Same evaluation code for every method: {r['episodes']} full games per seed (no episodic life, sticky "
        "actions 0.25, 108k-frame cap, raw score). Hours are wall clock on the row's machine, summed over the "
        "sittings a resumed run took (runs finished before 2026-12-02 show their last sitting only). Methods: "
        "mbrl-dqn is `mbrl train-agent --preset atari100k` as of 2026-12-05: a DQN agent that takes one gradient "
        "step per real step on the buffer's real transitions (`loop.real_updates=1`, 3-step returns, batch 64, "
        "learning rate 1e-4) and learns in the dream too, 10k dream steps per iteration; mbrl-dqn-dream that with "
        "as many dream updates as real ones (`agent.gradient_steps=128`); mbrl is the preset before "
        "that, PPO learning in the dream only (50k dream steps per iteration); mbrl-mpc that with MPC playing "
        "the real game in the iterations (`breakout_100k.py`'s MBRL settings); ppo SB3 PPO with a CNN on the real "
        "pixels.",
        "",
        "| method | real steps | seeds | score mean +- std over seeds | per-seed mean (std over games) | hours "
        "| machine |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in r["runs"]:
        label = run["method"] + (f" (superseded: {run['superseded']})" if run.get("superseded") else "")
        groups.setdefault((label, run["real_steps"]), []).append(run)
    for (method, steps), runs in sorted(groups.items()):
        means = [run["mean"] for run in runs]
        spread = statistics.pstdev(means) if len(means) > 1 else 0.0
        per_seed = ", ".join(f"s{run['seed']}: {run['mean']:.2f} ({run['std']:.2f})" for run in runs)
        hours = ", ".join(f"{run['hours']:.2f}" for run in runs)
        machines = ", ".join(sorted({run.get("machine", r["machine"]) for run in runs}))
        lines.append(f"| {method} | {steps} | {len(runs)} | {statistics.mean(means):.2f} +- {spread:.2f} | "
                     f"{per_seed} | {hours} | {machines} |")
    lines += ["", "Published Atari-100k Breakout scores, for context (not measured here): "
              + ", ".join(f"{name} {score}" for name, score in r["references"].items()) + ".", ""]
    return lines


def _breakout_100k_games(r: dict[str, Any]) -> list[str]:
    lines = [
        "## The final 100k agents on more games (`benchmarks/breakout_100k_games.py`)",
        "",
        f"Machines: {'; '.join(sorted({x['machine'] for x in r['runs']}))}. "
        f"Date of the last: {max(x['date'] for x in r['runs'])}. Commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(x["command"] for x in r["runs"])) + ".",
        "Each seed's final agents of the table above (the methods as defined there; an mbrl method: its run's "
        "agent; PPO: the baseline's, trained again on this machine where it lacked it; random) on the same full "
        "games per seed, another set than the table's 8 (evaluation rules as there)."
        + "".join(f" RUN:mpc: MPC on the world model of RUN's run with the run's settings ({s}), no terminal value: "
                  "the same 100k real steps, acted on by planning instead of the run's agent."
                  for s in mpc_phrases(r["runs"]))
        + (" The DQN agents (mbrl-dqn*) act at random with their final epsilon, 0.05, when not greedy, as in the "
           "loop's own games." if any(x["method"].startswith("mbrl-dqn") for x in r["runs"]) else ""),
        "",
        "| method | games per seed | seeds | score mean +- std over seeds | per-seed mean (std over games) |",
        "| --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for run in r["runs"]:
        groups.setdefault((run["method"], run["episodes"]), {})[run["seed"]] = run
    for (method, episodes), runs in sorted(groups.items()):
        means = [run["mean"] for _, run in sorted(runs.items())]
        per_seed = ", ".join(f"s{seed}: {run['mean']:.2f} ({run['std']:.2f})" for seed, run in sorted(runs.items()))
        lines.append(f"| {method} | {episodes} | {len(runs)} | {statistics.mean(means):.2f} +- "
                     f"{statistics.pstdev(means):.2f} | {per_seed} |")
    lines.append("")
    for (method, episodes), runs in sorted(groups.items()):
        for other in ("ppo", "random") if method not in ("ppo", "random") else ():
            others = groups.get((other, episodes), {})
            seeds = sorted(set(runs) & set(others))
            diffs = [runs[s]["mean"] - others[s]["mean"] for s in seeds]
            if len(diffs) < 2:
                continue
            test = paired_t(diffs)
            if test is None:
                t = "no t (the differences are all equal)"
            else:
                p = "< 0.001" if test.p < 0.001 else f"= {test.p:.3f}"
                t = (f"t = {test.t:.2f} with {test.df} df, two-sided p {p}, 95% interval of the mean difference "
                     f"{test.low:+.2f} to {test.high:+.2f}")
            lines.append(f"- {method} - {other}, paired over seeds {', '.join(map(str, seeds))} "
                         f"({episodes} games each): "
                         + ", ".join(f"{d:+.2f}" for d in diffs)
                         + f"; mean {statistics.mean(diffs):+.2f}, {t}.")
    return [*lines, ""]


def mpc_phrases(runs: list[dict[str, Any]]) -> list[str]:
    """The distinct MPC settings of `breakout_100k_games` rows, each as one phrase."""
    settings = (x["mpc"] for x in runs if x.get("mpc"))
    return list(dict.fromkeys(f"{m['planner']} N={m['candidates']}, H={m['horizon']}, I={m['iterations']}, "
                              f"life-loss penalty {m['life_loss_penalty']:g}" for m in settings))


def _serving(r: dict[str, Any]) -> list[str]:
    lines = [
        "## How the final 100k agents serve (`benchmarks/serving.py`)",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(row["command"] for row in r["rows"])) + ".",
        "Full games (evaluation rules as above) on one env per agent; 'wait' = steps from a lost life to the next "
        "FIRE, which serves the ball again.",
        "",
        "| agent | seed | games | FIRE share | wait median | wait mean | steps per game | mean score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(r["rows"], key=lambda row: (row["agent"], row["seed"], row["episodes"])):
        wait = "- | -" if row["median_wait"] is None else f"{row['median_wait']:g} | {row['mean_wait']:.1f}"
        lines.append(f"| {row['agent']} | {row['seed']} | {row['episodes']} | {row['fire_share']:.1%} | {wait} | "
                     f"{row['steps_per_game']:.0f} | {row['mean_score']:.2f} |")
    if r.get("dream"):
        lines += ["", "In the dream of an mbrl run (its world model, imagined episodes from real contexts, ended at a "
                  "lost life or after the dream's horizon): imagined reward and lost lives per imagined step. "
                  "Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(row["command"] for row in r["dream"]))
                  + ".", "", "| mbrl run | policy | imagined steps | reward per step | lost lives per step |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| seed {row['run_seed']} | {row['policy']} | {row['steps']} | {row['reward_per_step']:.4f} | "
                  f"{row['ends_per_step']:.4f} |" for row in r["dream"]]
    if r.get("fire"):
        lines += _fire_lines(r["fire"])
    return [*lines, ""]


def _fire_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`serving.py --fire-seeds`: does an mbrl run's world model know that FIRE serves?"""
    def at(values: list[float | None], steps: tuple[int, ...]) -> str:
        return " / ".join("-" if values[t - 1] is None else f"{values[t - 1]:.2f}" for t in steps)

    horizon = max(row["horizon"] for row in rows)
    steps = tuple(t for t in (1, 3, horizon) if t <= horizon)
    lines = ["", "Does the world model know that FIRE serves? From real contexts of a run's held-out episodes in "
             "which the ball waits to be served, the share of imagined or real steps with the ball in play "
             f"{' / '.join(map(str, steps))} steps after the context (imagined: read from the latent by a linear "
             "probe fit to the RAM's ball-in-play flag; 'probe' its accuracy on held-out real observations, with "
             "the share in play there); 'FIRE - NOOP' is how far the FIRE branch's latents lie from the NOOP "
             "branch's at those steps, in units of the NOOP branch's first step away from the context, and 'RIGHT - "
             "LEFT' the same for RIGHT and LEFT each held from the same contexts (since 2026-12-04; '-' before), "
             "for scale: an action the model follows; 'control': "
             "contexts with the ball in play imagined under their real actions, read by the same probe (real / "
             "imagined, at the same steps); 'serve size' (since 2026-12-04's last runs): from the waiting contexts "
             "whose next real action is FIRE and whose ball is in play one step later, the real latent's first step "
             "and the predictor's error on it (mean absolute change per feature, under the real actions), and the "
             "predictor's error on the control's first steps, all in units of the control's mean real first step. "
             "Commands: "
             + "; ".join(f"`{c}`" for c in dict.fromkeys(row["command"] for row in rows)) + ".", "",
             "| run | waiting contexts (imagined from) | probe (in play) | real after FIRE (contexts) | "
             "imagined after FIRE | imagined after NOOPs | real before any FIRE | FIRE - NOOP | RIGHT - LEFT | "
             "control: real; imagined | serve size: real step / error; control error (serves) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(rows, key=lambda row: (row["runs"], row["run_seed"])):
        control = (f"{at(row['control_real'], steps)}; {at(row['control_imagined'], steps)}" if "control_real" in row
                   else "-")
        run = f"{row['runs']}/mbrl-s{row['run_seed']}"
        size = (f"{row['serve_change']:.2f} / {row['serve_error']:.2f}; {row['control_error']:.2f} "
                f"({row['served_contexts']})" if "serve_change" in row else "-")
        lines.append(f"| {run} | {row['waiting_contexts']} ({row['imagined_contexts']}) | "
                     f"{row['probe_accuracy']:.2f} ({row['probe_in_play']:.2f}) | "
                     f"{at(row['real_fire'], steps)} ({row['real_fire_contexts']}) | "
                     f"{at(row['imagined_fire'], steps)} | {at(row['imagined_noop'], steps)} | "
                     f"{at(row['real_no_fire'], steps)} | "
                     f"{at(row['fire_noop_gap'], steps)} | "
                     f"{at(row['right_left_gap'], steps) if 'right_left_gap' in row else '-'} | {control} | {size} |")
    return lines


def _world_model_ablation(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Stage-1 event loss, per-part clipping and the predictor's linear path (`mbrl eval-world-model`)",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Buffer: {r['buffer']}. Two stage-1 encoders, 500 updates at "
        f"batch 16: a = `{r['stage1']['a']}`; b = `{r['stage1']['b']}`. Each row is stage 2 (batch 16, from the "
        f"copied run config) on a copy of one of them, scored with `{r['eval_command']}`. 'L1 / copy': "
        "imagined-latent error over the error of repeating the last real latent (< 1 beats copying); F1 at "
        "threshold 0.5, 'real' = heads on encoded real next latents; AP = average precision (threshold-free; "
        "a random ranking scores the event rate, about 0.01 for rewards and 0.02 for life losses), '-' where "
        "the row was scored before it was measured.",
        "",
        "| run | event loss | linear path | clip | TF weight / rollout steps | other | updates | "
        "L1 / copy h1, h5, h10 | paddle R^2 enc, h5 | ball x, y R^2 enc | ball x, y R^2 h5 | "
        "reward F1 h1, h5, real | life-loss F1 h1, h5, real | reward AP h1, real | life-loss AP h1, real | PSNR dB |",
        "| --- |" + " --- |" * 15,
    ]
    for row in r["rows"]:
        def three(d: dict[str, float] | None) -> str:
            return "-" if d is None else ", ".join(f"{v:.2f}" for v in d.values())
        ball = row["ball_r2"]
        lines.append(
            f"| {row['run']} | {row['event_loss']} | {row['linear_path']} | {row['clip']} | "
            f"{row['tf_weight_rollout_steps']} | {row.get('other', '')} | {row['updates']} | "
            f"{three(row['l1_vs_copy'])} | "
            f"{three(row['paddle_r2'])} | {ball['encoded'][0]:.2f}, {ball['encoded'][1]:.2f} | "
            f"{ball['h5'][0]:.2f}, {ball['h5'][1]:.2f} | {three(row['reward_f1'])} | {three(row['life_f1'])} | "
            f"{three(row.get('reward_ap'))} | {three(row.get('life_ap'))} | {row['psnr']:.1f} |")
    lines += ["", "Stage-2 commands: " + "; ".join(f"{row['run']}: `{row['command']}`" for row in r["rows"]) + ". "
              + r.get("note", ""), ""]
    return lines


def _head_calibration(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Reward and end heads corrected for the event windows' prior (`mbrl eval-world-model`)",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Model: {r['model']}. Correction: {r['correction']}. "
        f"Scored with `{r['eval_command']}`; 'mean predicted' is the heads' mean |expected reward| or "
        "life-loss probability, 'rate' the actual share of events; precision, recall and F1 at threshold 0.5; "
        "'real' = heads on encoded real next latents, h1 / h5 = after 1 / 5 imagined steps.",
        "",
        "| heads | event | latents | mean predicted | rate | precision | recall | F1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        for event in ("reward", "life_loss"):
            for at, m in row[event].items():
                lines.append(f"| {row['heads']} | {event.replace('_', ' ')} | {at} | {m['mean_predicted']:.4f} | "
                             f"{m['actual_rate']:.4f} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} |")
    return lines + ["", r.get("note", ""), ""]


def _heads_in_imagination(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Heads in imagination: calibration by horizon and repeated actions (`mbrl eval-world-model`)",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. {r['setup']} Scored with `{r['eval_command']}` on "
        "held-out episodes: 'predicted' is the heads' mean expected |reward| or life-loss probability after h "
        "imagined steps under the real actions, 'actual' the share of those transitions with the event, AP the "
        "average precision (chance: about the actual rate). 'Repeated' sums the imagined reward (life losses) over "
        "10 steps from the same contexts with one action repeated; 'data' is what the windows' real transitions had.",
        "",
        "| run | event | h1 predicted / actual (AP) | h5 | h10 | over 10 steps: data | NOOP | FIRE | RIGHT | LEFT |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        e = row["eval"]
        repeated = e["repeated_action"]
        for event, key in (("reward", "reward"), ("life loss", "life_loss")):
            cells = " | ".join(f"{e[key][h]['mean_predicted']:.4f} / {e[key][h]['actual_rate']:.4f} "
                               f"({e[key][h]['average_precision']:.2f})" for h in ("h1", "h5", "h10"))
            acts = " | ".join(f"{repeated[f'action {a}'][key]:.3f}" for a in range(4))
            lines.append(f"| {row['run']} | {event} | {cells} | {repeated['data'][key]:.3f} | {acts} |")
    return lines + ["", r.get("note", ""), ""]


def _dream_gap(r: dict[str, Any]) -> list[str]:
    lines = [
        "## The dream-to-real gap (`benchmarks/dream_gap.py`)",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}. A fresh agent (the default `agent` "
        "settings, PPO, unless the row's command sets others: the fire-add-real-100k-dqn rows are DQNs that take "
        "one gradient step per real transition) trained only in a run's dream ('learns in' dream) or, for "
        "comparison, on the real game seen through the run's encoder ('real': episodic life and clipped rewards, "
        "as in the dream; its agent steps are real steps; 'all encoder tokens': it sees the patch tokens too), then "
        "scored on full real games (the same evaluation code as every score here); reward per step is the summed "
        "reward over the summed episode lengths (the last 100 training episodes; the real games). For scale: 0.75% "
        "of the steps of the 50k random-policy buffer earn a reward, and the random policy scores about 1.6 per "
        "game. Commands per row below the table.",
        "",
        "| row | learns in | dream: horizon, reward, ends on | agent steps | reward / step while learning "
        "| real reward / step | real score (mean +- std over games) | real scores after each chunk "
        "| action shares by id (Breakout: NOOP, FIRE, RIGHT, LEFT) | ball in play |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        last, dream = row["chunks"][-1], row["dream"]
        ball = f"{row['ball_in_play']:.2f}" if "ball_in_play" in row else "-"
        setting = f"{dream['horizon']}, {dream['reward']}, {dream['terminate_on']}"
        setting = setting if row["learn_in"] == "dream" else "-"
        where = row["learn_in"] + (", all encoder tokens" if row.get("observe") == "tokens" else "")
        where += ", patch-token grid CNN" if row.get("policy") == "grid" else ""
        cells = [row["label"], where, setting, str(last["agent_steps"]),
                 f"{last['train_reward_per_step']:.4f}", f"{last['real_reward_per_step']:.4f}",
                 f"{last['real_mean']:.2f} +- {last['real_std']:.2f}",
                 ", ".join(f"{c['real_mean']:.2f}" for c in row["chunks"]),
                 ", ".join(f"{x:.2f}" for x in row["action_shares"]), ball]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {row['label']} ({row['date']}): `{row['command']}`" for row in r["rows"]]
    return lines + [""]


def _latent_distill(r: dict[str, Any]) -> list[str]:
    lines = [
        "## What the latent carries: a pixel policy cloned onto it (`benchmarks/latent_distill.py`)",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}. A teacher that plays from pixels (the 100k "
        "benchmark's SB3 PPO CNN) plays full real games; students learn its action probabilities (cross-entropy, "
        "no reward) on the first 90% of its steps: 'latent' the default agent's MLP on the run's latents, "
        "'tokens' the same MLP on all the encoder's output tokens, 'grid' those tokens through a small CNN over "
        "the patch-token grid first, 'pixels' the teacher's own architecture from scratch on the pixels. "
        "Agreement: the student's most likely action is the teacher's, on the held-out last 10% (on the teacher's "
        "row: always choosing the action the teacher chose most often). Real scores: "
        "full games (evaluation rules), the same games for every policy. Commands below the table.",
        "",
        "| result | policy | held-out agreement | held-out cross-entropy (teacher's entropy) | train agreement "
        "| real score (mean +- std over games) | games | minutes cloning |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in r["results"]:
        for row in res["rows"]:
            if row["student"] == "teacher":
                majority = res.get("val_majority_agreement")
                fit = ["-" if majority is None else f"{majority:.3f} (its most frequent action)",
                       f"- ({res['val_teacher_entropy']:.3f})", "-"]
            elif "val_agreement" not in row:  # the random policy, for the dream's table
                fit = ["-", "-", "-"]
            else:
                fit = [f"{row['val_agreement']:.3f}", f"{row['val_cross_entropy']:.3f}",
                       f"{row['train_agreement']:.3f}"]
            minutes = f"{row['clone_minutes']:.1f}" if "clone_minutes" in row else "-"
            lines.append(f"| {res['label']} | {row['student']} | " + " | ".join(fit)
                         + f" | {row['mean']:.2f} +- {row['std']:.2f} | {len(row['scores'])} | {minutes} |")
    dreamt = [(res, row) for res in r["results"] for row in res["rows"] if "dream_reward_per_step" in row]
    if dreamt:
        lines += [
            "",
            "Does the dream tell the cloned player from the random one? With `--dream-steps`, the latent student "
            "and the random policy also act in the run's dream (settings per result below; imagined episodes start "
            "from the run's training episodes). Real points per step: raw score over steps of the real games "
            "above (the lowest bricks pay 1, higher ones 4 and 7, so above the clipped rate); real lives lost per "
            "step: 5 per game over its steps. Dream: the model's (expected) reward per imagined step, and its "
            "episode ends (life losses or game overs, as the dream ends) per step.",
            "",
            "| result | policy | real score | real points / step | real lives lost / step | dream reward / step "
            "(at imagined steps 1, 5, 10) | dream ends / step (at 1, 5, 10) | imagined steps |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]

        def by_step(values: list[float]) -> str:
            return ", ".join(f"{values[t - 1]:.4f}" for t in (1, 5, 10) if t <= len(values))

        lines += [f"| {res['label']} | {row['student']} | {row['mean']:.2f} | {row['real_points_per_step']:.4f} | "
                  f"{row['real_lives_lost_per_step']:.4f} | {row['dream_reward_per_step']:.4f} "
                  f"({by_step(row['dream_reward_by_step'])}) | {row['dream_ends_per_step']:.4f} "
                  f"({by_step(row['dream_ends_by_step'])}) | {row['dream_steps']} |" for res, row in dreamt]
        lines += [f"| {res['label']} | teacher, heads on its real play | {row['mean']:.2f} | "
                  f"{row['real_points_per_step']:.4f} | {row['real_lives_lost_per_step']:.4f} | "
                  f"{row['heads_reward_per_step']:.4f} (heads on real transitions) | "
                  f"{row['heads_life_loss_per_step']:.4f} (heads) | - |"
                  for res in r["results"] for row in res["rows"] if "heads_reward_per_step" in row]
        lines += [f"- {res['label']} dream: horizon {res['dream']['horizon']}, reward {res['dream']['reward']}, "
                  f"ends on {res['dream']['terminate_on']} ({res['dream']['termination']})"
                  for res in r["results"] if res.get("dream")]
    lines.append("")
    lines += [f"- {res['label']} ({res['date']}; {res['steps']} teacher steps, {res['teacher_play']['games']} "
              f"games at {res['teacher_play']['mean']:.1f}; {res['epochs']} epochs): `{res['command']}`"
              for res in r["results"]]
    return lines + [""]


def _predictor_cost(r: dict[str, Any]) -> list[str]:
    lines = [
        "## What an imagined step costs and what the model knows (`benchmarks/predictor_cost.py`)",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}. Date: {r['date']}. Command: `{r['command']}`.",
        "Stage-2 variants on the same 50k random-policy buffer and stage-1 encoder (runs/wm50k_ev). Multiply-adds: "
        "one imagined step of one rollout (torch's FLOP counter over `step` / 2, full context window); ms: median "
        "of one step of 256 and of 512 rollouts (random weights of the run's config). Quality from each run's "
        "`mbrl eval-world-model --run RUN --windows 2048` on held-out episodes: L1 / copy is the imagined latents' "
        "error over that of repeating the last real latent; R^2 of linear probes to the console RAM; AP the "
        "average precision of the heads (chance: the event rate, ~0.01 rewards, ~0.02 life losses); 'over 10' sums "
        "the imagined reward over 10 steps of one repeated action (the data: 0.10). Updates: the last stage-2 "
        "update; 'kept' the update whose weights the run ended with (each part's own with per-part early "
        "stopping).",
        "",
        "| run | summary tokens, conditioning, width x depth, linear path, head hidden | M multiply-adds / step "
        "| ms / step of 256, 512 | updates (kept) | L1 / copy h1, h5, h10 | paddle R^2 h1, h5 | ball x, y R^2 h1 "
        "| ball x, y R^2 h5 "
        "| reward AP h1, h5, real | life-loss AP h1, h5, real | reward over 10: NOOP, FIRE, RIGHT, LEFT | PSNR dB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def two(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    for row in r["rows"]:
        c, e = row["config"], row["eval"]
        probes, repeated = e["probes"], e.get("repeated_action")
        skip = "no" if not c["predictor_skip"] else ("full" if not c["skip_rank"] else f"rank {c['skip_rank']}")
        kept = row["kept"]
        kept = " / ".join(f"{name} {step}" for name, step in kept.items()) if isinstance(kept, dict) else str(kept)
        cells = [
            row["label"], f"{c['summary_tokens']}, {c['action_conditioning']}, {c['predictor_dim']} x "
            f"{c['predictor_depth']}, {skip}, {c['head_hidden']}", f"{row['macs'] / 1e6:.2f}",
            f"{row['step_ms']['256']:.1f}, {row['step_ms']['512']:.1f}",
            f"{row['updates']} ({kept})", two([e["dynamics"][h]["l1_vs_copy"] for h in ("h1", "h5", "h10")]),
            two([probes[h]["paddle_x"]["r2"] for h in ("h1", "h5")]),
            two([probes["h1"]["ball_x"]["r2"], probes["h1"]["ball_y"]["r2"]]),
            two([probes["h5"]["ball_x"]["r2"], probes["h5"]["ball_y"]["r2"]]),
            two([e["reward"][h]["average_precision"] for h in ("h1", "h5", "real")]),
            two([e["life_loss"][h]["average_precision"] for h in ("h1", "h5", "real")]),
            "-" if repeated is None else ", ".join(f"{repeated[f'action {a}']['reward']:.3f}" for a in range(4)),
            f"{e['decoder_psnr']['encoded']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", r.get("note", ""), ""]


def _atari_100k(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Atari-100k with the value-aware JEPA (`benchmarks/atari_100k.py`)",
        "",
        "100k real agent steps of `mbrl train-agent --preset atari100k-value` per seed, then full games (108k-frame "
        "cap, raw score) of its agent (value), of MPC with the value at the leaves of an exhaustive depth-3 tree "
        "(value:tree) and of the random policy, all methods of a seed on the same games. Protocol 'published': no "
        "sticky actions in training and scoring, as most published Atari-100k scores; 'v5': sticky actions 0.25. "
        "Train hours: the run's wall clock (acting, updates and its 16-game evaluation).",
        "",
        "| game | protocol | method | seed | games | mean | std | train hours | date, machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    runs = r["runs"]
    for e in runs:
        lines.append(f"| {e['game']} | {e['protocol']} | {e['method']} | {e['seed']} | {e['episodes']} | "
                     f"{e['mean']:.2f} | {e['std']:.2f} | {e['train_hours']:.2f} | {e['date']}, {e['machine']} |")
    lines += ["", "Paired over seeds (same games), mean of the per-seed differences:", ""]
    groups = sorted({(e["game"], e["protocol"]) for e in runs})
    for game, protocol in groups:
        by = {(e["method"], e["seed"]): e["mean"] for e in runs if (e["game"], e["protocol"]) == (game, protocol)}
        for method in sorted({m for m, _ in by} - {"random"}):
            pairs = [(by[(method, s)], by[("random", s)]) for m, s in by if m == method and ("random", s) in by]
            if not pairs:
                continue
            diffs = [a - b for a, b in pairs]
            t = paired_t(diffs)  # None for a single seed
            extra = "" if t is None else f", t = {t.t:.2f} with {t.df} df, p = {t.p:.3f}"
            lines.append(f"- {game}, {protocol}: {method} - random = {statistics.mean(diffs):+.2f} over "
                         f"{len(diffs)} seed(s){extra}")
    published = r.get("published", {})
    if published:
        lines += ["", "Published Atari-100k scores (no sticky actions): " + "; ".join(
            f"{game}: " + ", ".join(f"{name} {score:g}" for name, score in refs.items())
            for game, refs in published.items()) + ".", ""]
    return [*lines, *_command_list(runs)]


RENDERERS = {
    "atari_100k": _atari_100k,
    "planning_score": _planning_score,
    "plan_ranking": _plan_ranking,
    "emulator_planning": _emulator_planning,
    "predictor_cost": _predictor_cost,
    "dream_gap": _dream_gap,
    "latent_distill": _latent_distill,
    "heads_in_imagination": _heads_in_imagination,
    "head_calibration": _head_calibration,
    "world_model_ablation": _world_model_ablation,
    "breakout_100k": _breakout_100k,
    "breakout_100k_games": _breakout_100k_games,
    "serving": _serving,
    "world_model_quality": _world_model_quality,
    "collect_throughput": _collect_throughput,
    "dream_throughput": _dream_throughput,
    "world_model_train": _world_model_train,
    "planning": _planning,
}


def load_result(path: Path, benchmark: str, rows: str = "runs") -> dict[str, Any]:
    """A benchmark's saved results (read again each time: other processes may have added rows), or an empty
    result with no `rows` yet."""
    if path.exists():
        return cast(dict[str, Any], json.loads(path.read_text()))
    return {"benchmark": benchmark, rows: []}


def save_result(result: dict[str, Any], out: Path) -> None:
    """Stamp a benchmark result with date and machine, write its JSON, print it, re-render RESULTS.md."""
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    write_results_md()


def write_results_md(directory: Path = HERE) -> Path:
    """Rewrite `directory`/RESULTS.md from the JSON results in `directory`/results, one section per benchmark.

    A result whose benchmark this file has no renderer for (one written by a newer version, while a long
    benchmark of an older one was running) gets a section that says so instead of failing the benchmark.
    """
    lines = [
        "# Benchmark results",
        "",
        "Written by the scripts in `benchmarks/` (re-render: `python benchmarks/report.py`). "
        "Every figure comes from the command shown with it.",
        "",
    ]
    for path in sorted((directory / "results").glob("*.json")):
        result = json.loads(path.read_text())
        render = RENDERERS.get(result.get("benchmark"))
        if render is None:
            note = (f"this version of benchmarks/report.py has no table for results/{path.name} (benchmark "
                    f"{result.get('benchmark')!r}); re-render with `python benchmarks/report.py` from the version "
                    "that wrote it")
            print(f"warning: {note}", file=sys.stderr)
            lines += [f"## results/{path.name}", "", note[0].upper() + note[1:] + ".", ""]
        else:
            lines += render(result)
    out = directory / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    print(write_results_md())
