"""How long `pie tune --model opt-30b` takes, end to end and per CBC solve, on two presets.

Issue 4: plans for `--hardware h100-pcie` and `--hardware gh200` in under 2 s each (each LP solve
under 100 ms), with a larger pooled fraction on GH200 than over PCIe. For each preset:

- `pie tune --model opt-30b --hardware PRESET --json` as a fresh process, `--repeats` times:
  wall time including Python start-up and imports (what a user waits for);
- `planner.tune.make_plan` in this process, `--repeats` times: planning time, and the slowest
  single CBC solve of each plan (`solver.lp_solve_ms_max`).

Reports medians and maxima and writes docs/results/tune_speed.json. These are wall-clock
targets, so they live here rather than in the unit tests (the tests check what the plans say).
Run: flock /tmp/pie-heavy.lock python benchmarks/bench_tune_speed.py  (`--quick`: one repeat)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pie_core.fingerprint import collect_fingerprint  # noqa: E402
from pie_core.shapes import resolve_model  # noqa: E402
from planner.budgets import Budgets, builtin_workload, default_budgets  # noqa: E402
from planner.hardware import preset  # noqa: E402
from planner.tune import TuneRequest, make_plan  # noqa: E402
from quick_mode import add_quick_argument, output_path  # noqa: E402

PRESETS = ("h100-pcie", "gh200")


def cli_run(hardware: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pie_cli.app", "tune", "--model", "opt-30b", "--hardware", hardware, "--json"],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pie tune --hardware {hardware} failed ({done.returncode}): {done.stderr.strip()}")
    return wall, json.loads(done.stdout)


def in_process(hardware: str) -> tuple[float, float]:
    spec = preset(hardware)
    request = TuneRequest(shape=resolve_model("opt-30b"), dtype="float16", hardware=spec,
                          budgets=Budgets(*default_budgets(spec)), workload=builtin_workload("sharegpt"))  # as `pie tune` does
    start = time.perf_counter()
    plan = make_plan(request)
    return time.perf_counter() - start, plan.solver["lp_solve_ms_max"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/tune_speed.json")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    args.out = output_path(args.out, REPO / "docs" / "results" / "tune_speed.json", args.quick)
    rows = {}
    for hardware in PRESETS:
        walls, plan = [], None
        for _ in range(args.repeats):
            wall, plan = cli_run(hardware)
            walls.append(wall)
        plans, solves = zip(*(in_process(hardware) for _ in range(args.repeats)))
        rows[hardware] = {
            "cli_wall_s": walls, "cli_wall_s_median": statistics.median(walls), "cli_wall_s_max": max(walls),
            "make_plan_s": list(plans), "make_plan_s_max": max(plans),
            "lp_solve_ms_max_each_plan": list(solves), "lp_solve_ms_max": max(solves),
            "pooled_fraction": plan["predicted"]["pooled_fraction"], "binding": plan["binding"],
        }
        print(f"{hardware:10s} pie tune (fresh process): median {rows[hardware]['cli_wall_s_median']:.2f} s, "
              f"max {rows[hardware]['cli_wall_s_max']:.2f} s | make_plan max {rows[hardware]['make_plan_s_max'] * 1e3:.0f} ms | "
              f"slowest CBC solve {rows[hardware]['lp_solve_ms_max']:.1f} ms | pooled {rows[hardware]['pooled_fraction']:.3f} | "
              f"binding: {', '.join(plan['binding'])}")
    verdict = {
        "all_under_2s": all(r["cli_wall_s_max"] < 2.0 for r in rows.values()),
        "all_solves_under_100ms": all(r["lp_solve_ms_max"] < 100.0 for r in rows.values()),
        "gh200_pools_more": rows["gh200"]["pooled_fraction"] > rows["h100-pcie"]["pooled_fraction"],
    }
    print(" | ".join(f"{k}: {v}" for k, v in verdict.items()))
    result = {"benchmark": "tune_speed", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": collect_fingerprint("cpu"), "repeats": args.repeats, "presets": rows, "verdict": verdict}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
