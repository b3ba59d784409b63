"""Latent MPC speed: milliseconds per real action of CEM, MPPI and random shooting on the default JEPA model.

One `MPCAgent.predict` per real action (encode the newest frame stack, plan in imagination, shift
the warm start) for one env, timed over `--actions` actions after `--warmup` ones, in `--rounds`
rounds that measure every row in turn (timings on a shared 2-core machine drift by ~30% within
minutes; a slow spell then hits all rows alike, and the rounds' medians show the spread).
Untrained weights on random frames: per imagined step they cost what trained ones cost, but a
trained model's plans share fewer prefixes (runs/q1 on real frames: 9,789 imagined steps per
action at the issue's budget against 8,656 here). Rows: CEM, MPPI and random shooting at the
issue's budget N=512, H=12, I=4, and CEM at smaller budgets, to find what meets 100 ms per action;
CEM at the issue's budget and at N=512, H=8, I=2 also with the imagined step compiled
(`mpc.compile`: a copy of the model whose `compile_imagination` was called; the compile's seconds,
taken on an untimed first action, are reported). That compiled CEM row is timed once more in a fresh
process that plans nothing else, as `mbrl plan --compile` does (`--own-process`, the script calling itself):
in the main process, which also hosts the eager model and the other rows, the same plans come out
slower.
Also profiles one imagination step at N=512 to show where the time goes: the full `step` with and
without its latent (the planners skip it), a step that reads its new latent again instead of
carrying its reads (as before world_models/jepa_reads.py), its predictor part (the new token over
the cached keys and values of the window), the predictor re-reading the whole window (what a step
cost before the cache), and the reward and termination heads on latents.

With `--run runs/NAME` it also scores MPC on that run's trained world model against the run's agent
and the random policy on the same `--episodes` full real games (`planning_score.score_run`, written
to results/planning_score.json; `python -m benchmarks.planning_score` scores several runs and settings).

    python -m benchmarks.planning   # -> benchmarks/results/planning.json, RESULTS.md
    python -m benchmarks.planning --run runs/NAME --episodes 10   # and the scores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import HERE, save_result
from mbrl.agents.mpc import MPCAgent, MPCConfig
from mbrl.agents.planners import PLANNERS, PlannerConfig
from mbrl.core.memory import keep_freed_memory
from mbrl.world_models.base import TreeOutput, WorldModel
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel

TARGET_MS = 100.0
ISSUE_BUDGET = (512, 12, 4)  # candidates, horizon, iterations
SMALLER = [(512, 8, 2), (256, 12, 3), (256, 8, 3), (128, 8, 3), (64, 8, 2), (64, 8, 1), (32, 6, 2), (64, 4, 2),
           (32, 4, 2), (16, 4, 2)]


class CountingSteps:
    """Wraps `model.step_tree` to count imagined rollout steps (after shared-prefix dedupe) and imagination calls (a
    planner's objective makes one per round, and one for the first levels of a plan's tree)."""

    def __init__(self, model: JEPAWorldModel) -> None:
        self.count = self.calls = 0
        self._step_tree = model.step_tree
        model.step_tree = self  # type: ignore[method-assign]

    def __call__(self, state: Any, parents: Sequence[torch.Tensor | None], actions: Sequence[torch.Tensor],
                 latent: bool = False) -> TreeOutput:
        self.count += sum(len(step) for step in actions)
        self.calls += 1
        return self._step_tree(state, parents, actions, latent=latent)


def time_agent(model: JEPAWorldModel, counter: CountingSteps, config: MPCConfig, actions: int,
               warmup: int) -> tuple[list[float], list[tuple[int, int]]]:
    """Milliseconds of each timed real action of a new MPC agent on one env, and its imagined steps and `step`
    calls."""
    agent = MPCAgent(model, config, seed=0)
    rng = np.random.default_rng(0)
    times, steps = [], []
    for k in range(warmup + actions):
        obs = rng.integers(0, 256, (1, 4, 64, 64), dtype=np.uint8)
        counter.count = counter.calls = 0
        start = time.perf_counter()
        agent.predict(obs, None, np.array([k == 0]), deterministic=True)
        elapsed = time.perf_counter() - start
        if k >= warmup:
            times.append(elapsed * 1e3)
            steps.append((counter.count, counter.calls))
    return times, steps


def timed_rows(models: dict[bool, JEPAWorldModel], configs: list[tuple[MPCConfig, int]], rounds: int,
               warmup: int) -> list[dict[str, Any]]:
    """One row per (config, timed actions): `rounds` rounds that time every config in turn (so a slow spell of
    a shared machine hits all rows alike), medians and p95 over the actions of all rounds, and each round's
    median (their spread is the machine's). `models[config.compile]` plans: the eager model and a compiled
    copy."""
    counters = {flag: CountingSteps(model) for flag, model in models.items()}
    samples: list[list[tuple[list[float], list[tuple[int, int]]]]] = [[] for _ in configs]
    for _ in range(rounds):
        for k, (config, actions) in enumerate(configs):
            samples[k].append(time_agent(models[config.compile], counters[config.compile], config, actions, warmup))
    return [summarise(config, runs) for (config, _), runs in zip(configs, samples)]


def summarise(config: MPCConfig, runs: list[tuple[list[float], list[tuple[int, int]]]],
              own_process: bool = False) -> dict[str, Any]:
    """A table row from a config's timed rounds (`time_agent`'s outputs): medians and p95 over all actions, each
    round's median, imagined steps and calls per action; printed as it is made."""
    ms = np.concatenate([times for times, _ in runs])
    search = config.search
    row: dict[str, Any] = {"planner": config.planner, "candidates": search.candidates, "horizon": search.horizon,
                           "iterations": search.iterations, "compiled": config.compile, "own_process": own_process,
                           "actions": len(ms), "median_ms": float(np.median(ms)),
                           "p95_ms": float(np.percentile(ms, 95)),
                           "round_medians_ms": [float(np.median(t)) for t, _ in runs],
                           "imagined_steps": float(np.mean([n for _, steps in runs for n, _ in steps])),
                           "imagination_calls": float(np.mean([c for _, steps in runs for _, c in steps])),
                           "imagined_steps_without_dedupe": search.candidates * search.horizon * search.iterations}
    rounds_ms = ", ".join(f"{m:.0f}" for m in row["round_medians_ms"])
    print(f"{config.planner} N={search.candidates} H={search.horizon} I={search.iterations}"
          f"{' compiled' if config.compile else ''}{' (own process)' if own_process else ''}: median "
          f"{row['median_ms']:.0f} ms (rounds {rounds_ms}), p95 {row['p95_ms']:.0f} ms, imagined steps "
          f"{row['imagined_steps']:.0f} / {row['imagined_steps_without_dedupe']}", flush=True)
    return row


def own_process_rounds(config: MPCConfig, actions: int, warmup: int, rounds: int,
                       threads: int) -> list[tuple[list[float], list[tuple[int, int]]]]:
    """`rounds` rounds of `time_agent` for the compiled model of `config` in a fresh process that plans nothing
    else, as `mbrl plan --compile` does (the main process also hosts the eager model and the other rows, and plans
    there came out slower: README, 'Planning in a process of its own')."""
    search = config.search
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rounds.json"
        subprocess.run([sys.executable, "-m", "benchmarks.planning", "--own-process", str(out), "--planner",
                        config.planner, "--budget", str(search.candidates), str(search.horizon),
                        str(search.iterations), "--actions", str(actions), "--warmup", str(warmup), "--rounds",
                        str(rounds), "--threads", str(threads)], check=True, cwd=HERE.parent)
        return [(times, [(n, c) for n, c in steps]) for times, steps in json.loads(out.read_text())]


def benchmark_model(threads: int) -> JEPAWorldModel:
    """The process set up as the mbrl command line sets it (freed memory kept, `threads` torch threads) and the
    default JEPA model with seed-0 weights: the main process and an own-process child plan with the same one."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return JEPAWorldModel(JEPAConfig(num_actions=4)).eval()


def mpc(planner: str, n: int, h: int, i: int, compile: bool = False) -> MPCConfig:
    """An MPC config of `planner` with N candidates, horizon H and I iterations."""
    return MPCConfig(planner=planner, search=PlannerConfig(candidates=n, horizon=h, iterations=i), compile=compile)


def run_own_process(args: argparse.Namespace) -> None:
    """The child of `own_process_rounds`: compile (an untimed first action), time the rounds, write them."""
    model = benchmark_model(args.threads)
    candidates, horizon, iterations = args.budget
    config = mpc(args.planner, candidates, horizon, iterations, compile=True)
    counter = CountingSteps(model)
    time_agent(model, counter, config, 1, 0)
    rounds = [time_agent(model, counter, config, args.actions, args.warmup) for _ in range(args.rounds)]
    args.own_process.write_text(json.dumps(rounds))


@torch.no_grad()
def full_context(model: WorldModel, batch: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Random latents (batch, context, ...) and actions (batch, context) of a full context window, and the
    imagination state of all but the last action (step it with `actions[:, -1]`)."""
    g = torch.Generator().manual_seed(0)
    context = model.config.context
    latents = torch.randn(batch, context, *model.latent_shape, generator=g)
    actions = torch.randint(0, model.num_actions, (batch, context), generator=g)
    return latents, actions, model.observe(latents, actions[:, :-1])


@torch.no_grad()
def chained_step_ms(model: WorldModel, batch: int, repeats: int = 5, warmup: int = 1, latent: bool = True) -> float:
    """Median milliseconds of one imagined step of `batch` rollouts with a full context window, over `repeats` steps
    after `warmup` untimed ones, chained (a step consumes its state); `latent=False` as planners take them."""
    _, actions, state = full_context(model, batch)
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        state = model.step(state, actions[:, -1], latent=latent).state
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times[warmup:]))


@torch.no_grad()
def step_profile(model: JEPAWorldModel, batch: int, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of one imagined step for `batch` rollouts with a full context window, and of its parts."""
    cfg = model.config
    latents, actions, state = full_context(model, batch)

    def ms(fn: Any) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e3

    plain = model.dynamics.prefill(latents, actions[:, :-1])  # no carried reads: each step reads its latent

    def step(latent: bool) -> None:  # a step consumes its state (the key/value ring is written in place): chain them
        nonlocal state
        state = model.step(state, actions[:, -1], latent=latent).state

    def predictor_step() -> None:
        nonlocal plain
        plain = model.dynamics.step(plain, actions[:, -1])[1]

    def plain_step() -> None:
        nonlocal plain
        plain = model.step(plain, actions[:, -1]).state

    return {
        "batch": batch,
        "step_ms": ms(lambda: step(True)),
        "step_without_latent_ms": ms(lambda: step(False)),
        "step_reading_each_latent_ms": ms(plain_step),
        "predictor_cached_ms": ms(predictor_step),
        "predictor_full_window_ms": ms(lambda: model.dynamics(latents, actions)),
        "heads_ms": ms(lambda: model.transition(latents[:, -1], latents[:, -2])),
        "encode_one_obs_ms": ms(lambda: model.encode(torch.zeros(1, 1, cfg.frame_stack, cfg.frame_size,
                                                                 cfg.frame_size, dtype=torch.uint8))),
    }


def with_tables(r: dict[str, Any]) -> dict[str, Any]:
    """The result with its title, notes and table."""
    issue_row = min((row for row in r["rows"] if row["planner"] == "cem" and
                     (row["candidates"], row["horizon"], row["iterations"]) == ISSUE_BUDGET),
                    key=lambda row: row["p95_ms"], default=None)
    met = issue_row is not None and issue_row["p95_ms"] <= r["target_ms"]
    notes = [f"Torch threads {r['torch_threads']}, load average {r['load_average']:.1f} at the end (the machine is "
             "shared). Default JEPA world model (random weights: the same compute per imagined step), one env, "
             "`MPCAgent.predict` per real action (encode, plan, shift). Imagined steps count rollout steps after "
             f"shared discrete prefixes are imagined once. Target: <= {r['target_ms']:.0f} ms per action for CEM at "
             f"N=512, H=12, I=4: {'met' if met else 'not met'}."
             + (f" 'compiled': imagination compiled (`mpc.compile=true`, `WorldModel.compile_imagination`); the "
                f"compile and its first action took {r['compile_seconds']:.0f} s." if "compile_seconds" in r else "")
             + " 'own process': that compiled row timed again in a fresh process that plans nothing else, as "
             "`mbrl plan --compile` does."]
    columns = ["planner", "N", "H", "I", "compiled", "actions timed", "median ms", "p95 ms", "rounds' medians ms",
               "imagined steps per action", "without dedupe", "imagination calls per action"]
    rows = [[row["planner"], row["candidates"], row["horizon"], row["iterations"],
             "yes, own process" if row.get("own_process") else "yes" if row.get("compiled") else "no",
             row["actions"], f"{row['median_ms']:.0f}", f"{row['p95_ms']:.0f}",
             ", ".join(f"{m:.0f}" for m in row.get("round_medians_ms", [])) or "-", f"{row['imagined_steps']:.0f}",
             row["imagined_steps_without_dedupe"],
             f"{row['imagination_calls']:.0f}" if "imagination_calls" in row else "-"] for row in r["rows"]]
    p, best = r["step_profile"], r["largest_cem_within_target"]
    profile = (f"One imagined step of {p['batch']} rollouts with a full context window: {p['step_ms']:.1f} ms, "
               f"{p['step_without_latent_ms']:.1f} ms without the latent, {p['step_reading_each_latent_ms']:.1f} ms "
               f"reading each latent again as before the carried reads (its predictor part "
               f"{p['predictor_cached_ms']:.1f} ms, re-reading the whole window as before the key/value cache "
               f"{p['predictor_full_window_ms']:.0f} ms; reward and termination heads on latents {p['heads_ms']:.1f} "
               f"ms). Encoding one observation: {p['encode_one_obs_ms']:.1f} ms."
               + (f" Compiled, a step without its latent: {p['compiled_step_without_latent_ms']:.1f} ms."
                  if "compiled_step_without_latent_ms" in p else ""))
    largest = "Largest CEM budget within the target (p95): " + (
        "none measured." if best is None else f"N={best['candidates']}, H={best['horizon']}, I={best['iterations']}"
        f"{', compiled' if best.get('compiled') else ''} (median {best['median_ms']:.0f} ms, p95 "
        f"{best['p95_ms']:.0f} ms).")
    return {**r, "title": "Latent MPC speed", "notes": notes,
            "tables": [{"columns": columns, "rows": rows, "notes": [profile, largest]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=30, help="timed actions per row")
    parser.add_argument("--large-actions", type=int, default=10, help="timed actions per row at the issue budget")
    parser.add_argument("--warmup", type=int, default=3, help="untimed actions before each row's timed ones")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every row is measured, all rows in turn each round (default 3)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads; the planning objective runs imagined steps of fewer than "
                        "128 rollouts on one thread either way (a second thread slows small batches down)")
    parser.add_argument("--run", type=Path, help="also score MPC on this run's world model against its agent and "
                        "the random policy (results/planning_score.json)")
    parser.add_argument("--episodes", type=int, default=10, help="full real games per policy with --run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "planning.json",
                        help="the JSON result (RESULTS.md is re-rendered from benchmarks/results/)")
    parser.add_argument("--own-process", type=Path, help="internal: time only the compiled --planner at --budget "
                        "in this process and write its rounds to this JSON file (the 'own process' row)")
    parser.add_argument("--planner", default="cem", choices=sorted(PLANNERS),
                        help="with --own-process: the planner")
    parser.add_argument("--budget", type=int, nargs=3, default=list(ISSUE_BUDGET), metavar=("N", "H", "I"),
                        help="with --own-process: candidates, horizon, iterations")
    args = parser.parse_args()
    if args.own_process:
        run_own_process(args)
        return
    model = benchmark_model(args.threads)
    profile = step_profile(model, ISSUE_BUDGET[0])
    compiled = copy.deepcopy(model)
    start = time.perf_counter()  # the first action of a compiled model compiles its imagined step
    time_agent(compiled, CountingSteps(compiled), mpc("cem", *ISSUE_BUDGET, compile=True), 1, 0)
    compile_seconds = time.perf_counter() - start
    print(f"compiling the imagined step and one action: {compile_seconds:.0f} s", flush=True)
    profile["compiled_step_without_latent_ms"] = chained_step_ms(compiled, ISSUE_BUDGET[0], latent=False)
    print("one step at N=512:", {k: round(v, 1) for k, v in profile.items()}, flush=True)
    configs = [(mpc(name, *ISSUE_BUDGET), args.large_actions) for name in ("cem", "mppi", "shooting")]
    configs += [(mpc("cem", *ISSUE_BUDGET, compile=True), args.large_actions),
                (mpc("cem", *SMALLER[0], compile=True), args.actions)]
    configs += [(mpc("cem", n, h, i), args.actions) for n, h, i in SMALLER]
    rows = timed_rows({False: model, True: compiled}, configs, args.rounds, args.warmup)
    issue_compiled = mpc("cem", *ISSUE_BUDGET, compile=True)
    rows.append(summarise(issue_compiled, own_process_rounds(issue_compiled, args.large_actions, args.warmup,
                                                             args.rounds, args.threads), own_process=True))
    meets = [r for r in rows if r["planner"] == "cem" and r["p95_ms"] <= TARGET_MS]
    best = max(meets, key=lambda r: r["imagined_steps_without_dedupe"], default=None)
    command = (f"python -m benchmarks.planning --actions {args.actions} --large-actions {args.large_actions} "
               f"--warmup {args.warmup} --rounds {args.rounds} --threads {args.threads}")
    if args.run:
        command += f" --run {args.run} --episodes {args.episodes}"
    save_result(with_tables({
        "benchmark": "planning",
        "torch_threads": args.threads,
        "load_average": os.getloadavg()[0],
        "command": command,
        "target_ms": TARGET_MS,
        "step_profile": profile,
        "compile_seconds": compile_seconds,
        "rows": rows,
        "largest_cem_within_target": None if best is None else
        {k: best[k] for k in ("candidates", "horizon", "iterations", "compiled", "median_ms", "p95_ms")},
    }), args.out)
    if args.run:
        from benchmarks.planning_score import RESULT, save_score, score_run

        entry = score_run(args.run, args.episodes, 0, value_from_agent=False, overrides=[])
        save_score(dict(entry, command=command), RESULT)


if __name__ == "__main__":
    main()
