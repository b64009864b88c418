"""Hill-climber: synthetic unimodal curves with noise, and online on the Pie engine on this CPU.

Synthetic: seeded curves that rise linearly to a best pool size and fall past it (a stall
cliff), measured with multiplicative noise (uniform within +-5%, and Gaussian sigma 5%); the
climber starts 0.5x..1.5x from the best. Reported: moves used, and how close the final size is
to the best, as throughput share and as pool-size distance. Issue 4's target: within 5% of the
best pool size in <= 12 moves (share_within_5pct_pool_size, max_moves). Next to it, an oracle
that knows where the peak is: the same 13 readings placed at the true peak and 10% and 50% of
it either side (three each), tent-fitted (share_within_5pct_pool_size_oracle). No climber can
beat that placement by much, so it shows what the noise alone allows.

Online (with --profile): a plan for a small model (opt-125m by default) under a device budget
that holds only part of the batch; a static sweep of pool limits on one engine (seven sizes from
0 to the capacity, then quarter and half steps around the best of those), then the
climber from the plan's pool size on a fresh engine, both with the same closed-loop workload
and window; finally the climber's choice and the sweep's best are re-measured back to back.
Writes docs/results/hill_climber.json. Run the online part under `flock /tmp/pie-heavy.lock`.

Run: flock /tmp/pie-heavy.lock python benchmarks/bench_hill_climber.py --profile PROFILE.json
`--quick`: 20 curves per noise model; online (with --profile): short requests and windows on `--model`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from planner.hill_climber import ClimberConfig, Measurement, climb
from planner.tent_fit import fit_tent
from quick_mode import add_quick_argument, output_path


def peaked(best_blocks: int, rise: float, fall: float, peak: float = 1000.0):
    def throughput(blocks: int) -> float:
        if blocks <= best_blocks:
            return peak * (1 - rise * (best_blocks - blocks) / best_blocks)
        return max(0.0, peak * (1 - fall * (blocks - best_blocks) / best_blocks))
    return throughput


ORACLE_OFFSETS = (-0.5, -0.1, 0.1, 0.5)  # shares of the true peak; three readings each, plus one at the peak


def synthetic(num_curves: int, noise: float, kind: str, seed: int = 0) -> dict:
    moves, shares, distances, oracle_distances = [], [], [], []
    for index in range(num_curves):
        rng = np.random.default_rng(seed + index)
        best = int(rng.integers(50, 2000))
        curve = peaked(best, rng.uniform(0.3, 0.8), rng.uniform(0.5, 2.0))
        start = int(best * rng.uniform(0.5, 1.5))

        def measure(blocks: int) -> Measurement:
            factor = rng.uniform(-noise, noise) if kind == "uniform" else rng.normal(0.0, noise)
            return Measurement(blocks, curve(blocks) * (1 + factor), 0.0)

        run = climb(ClimberConfig(start, 3 * best, noise_fraction=noise), measure)
        final = run[-1].best_blocks
        moves.append(len(run) - 1)
        shares.append(curve(final) / curve(best))
        distances.append(abs(final - best) / best)
        placed = [best] + [int(round(best * (1 + offset))) for offset in ORACLE_OFFSETS for _ in range(3)]
        fit = fit_tent([(size, measure(size).throughput_tok_s) for size in placed])
        oracle_distances.append(abs(fit.peak - best) / best if fit else float("inf"))
    shares, distances = np.array(shares), np.array(distances)
    return {"noise": noise, "noise_kind": kind, "num_curves": num_curves, "max_moves": int(max(moves)),
            "mean_moves": float(np.mean(moves)), "share_within_5pct_throughput": float((shares >= 0.95).mean()),
            "share_within_5pct_pool_size": float((distances <= 0.05).mean()), "min_throughput_share": float(shares.min()),
            "median_pool_distance": float(np.median(distances)),
            "share_within_5pct_pool_size_oracle": float((np.array(oracle_distances) <= 0.05).mean())}


def online(profile_path: Path, model: str, window_steps: int, num_prompts: int, request_len: int = 128) -> dict:
    from pie_core.shapes import resolve_model
    from planner.budgets import Budgets, WorkloadStats
    from planner.hardware import from_profile
    from planner.tune import TuneRequest, make_plan
    from profiler.hardware_profile import HardwareProfile
    from runners.online_tuner import ClosedLoop, OnlineSettings, build_engine, measure_window, pool_capacity_for, run_online

    profile = HardwareProfile.load(profile_path)
    hardware = from_profile(profile)
    shape = resolve_model(model)
    weights = shape.weight_bytes(profile.dtype)
    budgets = Budgets(int((weights + 160 * 2**20) / 0.95), 2**30, max_num_batched_tokens=2048)
    plan = make_plan(TuneRequest(shape=shape, dtype=profile.dtype, hardware=hardware, budgets=budgets,
                                 workload=WorkloadStats("synthetic-fixed", request_len, request_len, synthetic=True),
                                 max_batch_size=64))
    settings = OnlineSettings(num_prompts=num_prompts, window_steps=window_steps)
    capacity = pool_capacity_for(plan, settings)
    engine = build_engine(plan, settings, capacity)
    loop = ClosedLoop(engine, shape.vocab_size, request_len, request_len, settings.num_prompts, settings.seed)
    loop.settle(request_len)
    coarse = sorted({int(round(x)) for x in np.linspace(0, capacity, 7)} | {plan.settings.num_pool_blocks})
    sweep = {}

    def sweep_at(sizes) -> None:
        for blocks in sizes:
            if blocks not in sweep:
                sweep[blocks] = dataclasses.asdict(measure_window(loop, blocks, settings))
                print(f"sweep: pool {blocks:5d} blocks  {sweep[blocks]['throughput_tok_s']:8.1f} tok/s  "
                      f"stall {sweep[blocks]['stall_fraction']:.1%}")

    sweep_at(coarse)
    # Then a finer grid around the coarse best (quarter and half steps), so the reference is not the grid's.
    step = capacity / 6
    center = max(sweep, key=lambda b: sweep[b]["throughput_tok_s"])
    sweep_at(sorted({min(capacity, max(0, int(round(center + f * step)))) for f in (-0.5, -0.25, 0.25, 0.5)}))
    tuned = run_online(plan, settings, on_move=lambda m: print(
        f"move {m.index:2d}: pool {m.pool_blocks:5d}  {m.throughput_tok_s:8.1f} tok/s  stall {m.stall_fraction:.1%}  -> {m.best_blocks} ({m.note})"))
    best_static = max(sweep, key=lambda b: sweep[b]["throughput_tok_s"])
    chosen = tuned.online["best_pool_blocks"]
    recheck = {}
    long_window = dataclasses.replace(settings, window_steps=2 * window_steps)
    for _ in range(2):  # interleaved, twice, on the sweep's engine
        for blocks in (best_static, chosen):
            recheck.setdefault(blocks, []).append(measure_window(loop, blocks, long_window).throughput_tok_s)
    static_tok_s, chosen_tok_s = float(np.mean(recheck[best_static])), float(np.mean(recheck[chosen]))
    return {"model": model, "profile": str(profile_path), "plan_pool_blocks": plan.settings.num_pool_blocks,
            "plan_device_blocks": plan.settings.num_device_blocks, "plan_max_num_seqs": plan.settings.max_num_seqs,
            "plan_predicted_output_tok_s": plan.predicted.output_tok_s, "pool_capacity_blocks": capacity,
            "sweep": {str(k): v for k, v in sweep.items()}, "best_static_pool_blocks": best_static,
            "climber_pool_blocks": chosen, "climber_moves": tuned.online["num_moves"],
            "climber_fit": tuned.online["fit"], "climber_pool_source": tuned.online["best_output_tok_s_source"],
            "moves": tuned.online["moves"],
            "recheck_output_tok_s": {"best_static": recheck[best_static], "climber": recheck[chosen]},
            "climber_over_best_static": chosen_tok_s / static_tok_s,
            "pool_distance_blocks": abs(chosen - best_static), "window_steps": window_steps, "num_prompts": num_prompts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="a `pie profile` of this machine for --model (enables the online part)")
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--num-curves", type=int, default=1000, help="synthetic curves per noise model")
    parser.add_argument("--window-steps", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/hill_climber.json")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.num_curves, args.window_steps, args.num_prompts = 20, 4, 8
    args.out = output_path(args.out, Path("docs/results/hill_climber.json"), args.quick)
    result = {"benchmark": "hill_climber", "created_at": datetime.now(timezone.utc).isoformat(),
              "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
              "machine": platform.platform(),
              "synthetic": [synthetic(args.num_curves, 0.05, "uniform"), synthetic(args.num_curves, 0.05, "gaussian"),
                            synthetic(args.num_curves, 0.0, "uniform")]}
    for row in result["synthetic"]:
        print(json.dumps(row))
    if args.profile:
        result["online"] = online(args.profile, args.model, args.window_steps, args.num_prompts, 16 if args.quick else 128)
        print(f"online: climber {result['online']['climber_pool_blocks']} blocks vs best static "
              f"{result['online']['best_static_pool_blocks']}: {result['online']['climber_over_best_static']:.3f}x throughput")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
