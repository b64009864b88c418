"""LP optimality: the planner's plan against exhaustive enumeration over the same cost model.

Instances: models x hardware presets x (device, host) budgets x latency bounds. For each, the
LP plan (search.py: enumerated batch/depth candidates, one CBC call per pass) is evaluated
with the cost model, and compared with a brute-force grid over the pooled share and rebuilt
share of the KV at every integer batch size and every prefetch depth. Instances whose model
does not fit the device budget are counted and skipped. Also records plan wall time and the
slowest single CBC solve. Writes docs/results/lp_optimality.json.

Run: python benchmarks/bench_lp_optimality.py  (`--quick`: one model on two presets at one budget, in seconds)
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from pie_core.errors import BadInput
from pie_core.shapes import resolve_model
from planner.budgets import Budgets, builtin_workload
from planner.exhaustive import GridSize, best_by_enumeration
from planner.hardware import preset
from planner.tune import TuneRequest, make_plan, problem_for
from quick_mode import add_quick_argument, output_path

GB = 10**9
MODELS = ("opt-6.7b", "opt-13b", "opt-30b", "llama-3-8b", "llama-2-13b", "qwen2.5-7b", "mistral-7b")
PRESETS = ("h100-pcie", "h200", "a100-pcie", "gh200", "l4")
BUDGETS = ((1.0, 64), (0.6, 256), (0.8, 32), (0.45, 128))  # (share of device memory, host GB)
WORKLOADS = ("sharegpt", "alpaca")


def instances(quick: bool):
    for model in MODELS[:1] if quick else MODELS:
        for hardware in PRESETS[:2] if quick else PRESETS:
            for device_share, host_gb in BUDGETS[:1] if quick else BUDGETS:
                workload = WORKLOADS[(len(model) + len(hardware)) % 2]
                yield model, hardware, device_share, host_gb, workload


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/lp_optimality.json")
    add_quick_argument(parser)
    args = parser.parse_args()
    args.out = output_path(args.out, Path("docs/results/lp_optimality.json"), args.quick)
    rows, skipped = [], []
    grid = GridSize(pooled_steps=200, rebuilt_steps=10)
    for model, hardware, device_share, host_gb, workload in instances(args.quick):
        spec = preset(hardware)
        request = TuneRequest(shape=resolve_model(model), dtype="float16", hardware=spec,
                              budgets=Budgets(int(spec.device_memory_bytes * device_share), int(host_gb * GB)),
                              workload=builtin_workload(workload))
        try:
            start = time.perf_counter()
            plan = make_plan(request)
            plan_s = time.perf_counter() - start
        except BadInput as err:
            skipped.append({"model": model, "hardware": hardware, "device_share": device_share, "reason": err.one_line()})
            continue
        problem = problem_for(request)
        for bound in (None, plan.predicted.tpot_ms * 0.9):
            if bound is not None:
                try:
                    bounded = make_plan(TuneRequest(**{**request.__dict__, "max_tpot_ms": bound}))
                except BadInput:
                    continue
                lp_tok_s = bounded.predicted.output_tok_s
            else:
                lp_tok_s = plan.predicted.output_tok_s
            started = time.perf_counter()
            enumerated = best_by_enumeration(problem, max_tpot_ms=bound, grid=grid, every_batch=True)
            rows.append({"model": model, "hardware": hardware, "device_gb": request.budgets.device_memory_bytes / GB,
                         "host_gb": host_gb, "workload": workload, "max_tpot_ms": bound, "lp_output_tok_s": lp_tok_s,
                         "exhaustive_output_tok_s": enumerated.output_tok_s if enumerated else None,
                         "ratio": lp_tok_s / enumerated.output_tok_s if enumerated else None,
                         "lp_batch": plan.predicted.batch_size if bound is None else bounded.predicted.batch_size,
                         "exhaustive_batch": enumerated.batch_size if enumerated else None,
                         "plan_wall_s": plan_s, "lp_solve_ms_max": plan.solver["lp_solve_ms_max"],
                         "pooled_fraction": plan.predicted.pooled_fraction, "exhaustive_s": time.perf_counter() - started})
            print(f"{model:12s} {hardware:9s} dev {device_share:.1f} host {host_gb:4d} tpot<={bound or 0:7.1f}  "
                  f"lp {lp_tok_s:9.1f}  enum {rows[-1]['exhaustive_output_tok_s'] or 0:9.1f}  ratio {rows[-1]['ratio'] or 0:.4f}")
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    pooled = [r["ratio"] for r in rows if r["ratio"] is not None and r["pooled_fraction"] > 0.01]
    summary = {"num_instances": len(ratios), "num_skipped": len(skipped), "min_ratio": min(ratios),
               "num_with_pool_over_1pct": len(pooled), "min_ratio_with_pool": min(pooled) if pooled else None,
               "num_at_least_99pct": sum(r >= 0.99 for r in ratios),
               "max_plan_wall_s": max(r["plan_wall_s"] for r in rows),
               "max_lp_solve_ms": max(r["lp_solve_ms_max"] for r in rows),
               "grid": {"pooled_steps": grid.pooled_steps, "rebuilt_steps": grid.rebuilt_steps, "every_batch": True}}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "lp_optimality", "created_at": datetime.now(timezone.utc).isoformat(),
                                    "git_commit": git_commit(), "machine": platform.platform(), "summary": summary,
                                    "rows": rows, "skipped": skipped}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
