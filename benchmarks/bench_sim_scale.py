"""Simulator scale: 10,000 ShareGPT-like requests of OPT-30B on the h100-pcie preset, simulated time against wall time.

One `pie bench --runner sim --plan PLAN` run through `runners.bench.run_bench` (a normal record:
every request's samples are flushed to the results store as it finishes), PLAN being what
`pie tune --model opt-30b --hardware h100-pcie` plans (device KV, a CPU pool, the batch limit),
Poisson arrivals at `--request-rate` (default 3 req/s, near the plan's predicted capacity), so
the pool, the scheduler's evictions and restores are on the hot path. Reports the simulated duration,
the simulator's own wall time (the runner alone, and the whole bench with workload generation
and the record), and their ratio (target: at least 100x). Writes docs/results/sim_scale_<machine>.json.

Run: flock /tmp/pie-bench.lock python benchmarks/bench_sim_scale.py  (`--quick`: 50 requests)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pie_core.fingerprint import cpu_model
from pie_core.shapes import resolve_model
from planner.budgets import Budgets, builtin_workload, default_budgets
from planner.hardware import preset
from planner.tune import TuneRequest, make_plan
from results.store import ResultsStore
from runners.arrivals import ArrivalSpec
from runners.bench import BenchSettings, run_bench
from runners.workloads import WorkloadSpec
from quick_mode import add_quick_argument, output_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=10_000)
    parser.add_argument("--request-rate", type=float, default=3.0)
    parser.add_argument("--hardware", default="h100-pcie")
    parser.add_argument("--out", type=Path, default=None)
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.num_prompts = 50
    slug = "-".join(cpu_model().lower().split()[:2])
    out = output_path(args.out, Path(f"docs/results/sim_scale_{slug}.json"), args.quick)
    workload = WorkloadSpec(name="sharegpt", model="opt-30b", num_prompts=args.num_prompts, seed=0)
    with tempfile.TemporaryDirectory() as results:
        plan = make_plan(TuneRequest(shape=resolve_model("opt-30b"), dtype="float16", hardware=preset(args.hardware),
                                     budgets=Budgets(*default_budgets(preset(args.hardware))), workload=builtin_workload("sharegpt")))
        plan_path = plan.save(Path(results) / "plan.json")
        settings = BenchSettings(model="opt-30b", workload=workload, runner="sim", dtype="float16", device="cpu",
                                 runner_options={"hardware": args.hardware, "plan": str(plan_path)},
                                 arrivals=ArrivalSpec(request_rate=args.request_rate, seed=0), label="sim-scale")
        began = time.perf_counter()
        outcome = run_bench(settings, ResultsStore(Path(results)))
        bench_wall_s = time.perf_counter() - began
        record_bytes = outcome.record_path.stat().st_size
    telemetry, summary = outcome.telemetry, outcome.summary
    simulated_s, runner_wall_s = summary["duration_s"], telemetry["simulator_wall_s"]
    result = {
        "benchmark": "sim_scale", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True).stdout.strip(),
        "machine": f"{cpu_model()} ({os.cpu_count()} cores)", "platform": platform.platform(),
        "model": "opt-30b", "dtype": "float16", "hardware": args.hardware, "num_prompts": args.num_prompts,
        "request_rate": args.request_rate, "plan_settings": dataclasses.asdict(plan.settings),
        "plan_predicted_output_tok_s": plan.predicted.output_tok_s, "effective_config": outcome.config,
        "simulated_duration_s": simulated_s, "simulator_wall_s": runner_wall_s, "bench_wall_s": bench_wall_s,
        "speedup_runner": simulated_s / runner_wall_s, "speedup_bench": simulated_s / bench_wall_s,
        "num_steps": telemetry["num_steps"], "steps_per_s": telemetry["num_steps"] / runner_wall_s,
        "record_bytes": record_bytes, "summary": summary,
        "telemetry": {k: v for k, v in telemetry.items() if k != "effective_config"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.num_prompts} requests, OPT-30B on {args.hardware}: simulated {simulated_s:,.0f} s in {runner_wall_s:.1f} s "
          f"(runner; {bench_wall_s:.1f} s with workload and record): {simulated_s / runner_wall_s:.0f}x "
          f"({simulated_s / bench_wall_s:.0f}x); {telemetry['num_steps']:,} iterations, "
          f"{summary['completed']} completed, {telemetry['num_preemptions']} preemptions, "
          f"peak pool {telemetry['peak_pool_blocks_used']} blocks; wrote {out}")


if __name__ == "__main__":
    main()
