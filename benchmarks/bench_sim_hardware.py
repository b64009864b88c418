"""Hardware you do not have: OPT-13B on h100-pcie against gh200, sweeping the pooled share of the KV (simulated).

For each preset, `--runner sim` runs the same ShareGPT-like workload (Poisson at a fixed,
saturating `--request-rate`, batch limit `--max-num-seqs`) while the device KV budget is cut
to (1 - f) of the batch's KV at the workload's decode-weighted context
(`planner.budgets.decode_weighted_context`) and an ample CPU pool holds the rest: f is the
nominal pooled share. At f = 0 the device alone is ample, so the batch is the same everywhere
and only the copies differ from the baseline. Beside each pooled run, the same device budget
without a pool (what an engine without Pie's pool gets). The knee, where copies stop hiding, is the largest f whose
output throughput stays within `--knee-tolerance` of f = 0, found on the grid and refined by
bisection, and read as the share the runs at the knee really pooled while the batch was full
(pooled over pooled plus device blocks in use, time-weighted over the timeline windows that
ran `--max-num-seqs` requests: the steady batch the planner's rule is about; the whole-run
share, diluted by the ramp-up and the drain, is kept beside it); it is set against the planner's
largest transparent share (`planner.cost_model.largest_transparent_share`: the largest share
whose decode step, by the planner's step time at the same batch, context and prefetch depth,
streamed copies under the overlap rule and the steady evictions included, stays within the
same tolerance of no pool). Writes docs/results/sim_hardware.json, a figure of throughput and p99 TPOT
against f (docs/results/sim_hardware_pooled_share.png), and a `pie report` of the grid runs
(docs/results/sim_hardware_report.md, from records that share a sweep id per preset).

Run: flock /tmp/pie-bench.lock python benchmarks/bench_sim_hardware.py
`--quick`: 24 requests, batch 8, three pooled shares, one bisection (writes into `--out-dir` or a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import math
import secrets
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pie_core.shapes import resolve_model
from planner.budgets import Budgets, WorkloadStats, decode_weighted_context
from planner.cost_model import Problem, largest_transparent_share, model_costs
from planner.hardware import preset
from results.report import build_report, write_report
from results.store import ResultsStore
from runners.arrivals import ArrivalSpec
from runners.bench import BenchSettings, Sweep, run_bench
from runners.workloads import WorkloadSpec, load_workload
from quick_mode import add_quick_argument, output_path

MODEL, DTYPE, DEPTH = "opt-13b", "float16", 2
AMPLE = 1.3  # KV every run can hold, in units of the batch's KV at the decode-weighted context
GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
QUICK_GRID = (0.0, 0.2, 0.6)


def planner_problem(hardware: str, workload: WorkloadStats, max_num_seqs: int) -> Problem:
    shape, spec = resolve_model(MODEL), preset(hardware)
    budgets = Budgets(spec.device_memory_bytes, spec.host_memory_bytes // 2, max_num_batched_tokens=2048)
    return Problem(shape, DTYPE, model_costs(shape, spec, DTYPE), budgets, workload)


def blocks_for(problem: Problem, share: float, max_num_seqs: int) -> tuple[int, int, int]:
    """(config device blocks incl. staging, pool blocks, resident device blocks) for pooled share `share`.

    The device keeps (1 - share) of the batch's KV and the pool the rest plus AMPLE - 1 of it, so
    every run holds AMPLE times the batch's KV (1.3: about what fits an 80 GB device beside OPT-13B at
    share 0) and only the copies differ from share 0, where the device alone holds it: the same
    batch with nothing pooled, the knee's baseline.
    """
    need = problem.kv_need_bytes(max_num_seqs) / problem.block_bytes
    resident = max(1, round((1 - share) * need)) if share > 0 else math.ceil(AMPLE * need)
    pool = math.ceil((share + AMPLE - 1) * need) if share > 0 else 0
    staging = math.ceil(DEPTH * pool / problem.costs.num_layers) if pool else 0
    return resident + staging, pool, resident


class Runner:
    def __init__(self, args, store: ResultsStore, workload: WorkloadSpec):
        self.args, self.store, self.workload = args, store, workload

    def run(self, hardware: str, device_blocks: int, pool_blocks: int, label: str, point: dict, sweep: Sweep | None) -> dict:
        options = {"hardware": hardware, "num_device_blocks": device_blocks, "num_pool_blocks": pool_blocks,
                   "max_num_seqs": self.args.max_num_seqs, "prefetch_depth": DEPTH}
        settings = BenchSettings(model=MODEL, workload=self.workload, runner="sim", dtype=DTYPE, device="cpu",
                                 runner_options=options, arrivals=ArrivalSpec(request_rate=self.args.request_rate, seed=0),
                                 label=label)
        outcome = run_bench(settings, self.store, sweep=sweep, sweep_point=point)
        record = self.store.load(outcome.run_id)
        measured_share = pooled_share(record.timeline)
        full_batch = pooled_share([w for w in record.timeline if w["running"] >= self.args.max_num_seqs])
        s, t = outcome.summary, outcome.telemetry
        return {"run_id": outcome.run_id, "output_throughput": s["output_throughput"], "p99_tpot_ms": s["p99_tpot_ms"],
                "median_tpot_ms": s["median_tpot_ms"], "p99_ttft_ms": s["p99_ttft_ms"], "stall_fraction": t["stall_fraction"],
                "num_preemptions": t["num_preemptions"], "mean_batch_size": t["mean_batch_size"],
                "measured_pooled_share": measured_share, "full_batch_pooled_share": full_batch,
                "device_blocks": device_blocks, "pool_blocks": pool_blocks}


def pooled_share(windows: list[dict]) -> float | None:
    """Pooled over pooled plus device blocks in use, time-weighted over `windows` (None for none)."""
    total = sum(w["duration_s"] for w in windows)
    if not total:
        return None
    return sum(w["pool_blocks_used"] / (w["pool_blocks_used"] + w["device_blocks_used"]) * w["duration_s"]
               for w in windows if w["pool_blocks_used"] + w["device_blocks_used"]) / total


def sweep_preset(runner: Runner, hardware: str, stats: WorkloadStats, tolerance: float) -> dict:
    problem = planner_problem(hardware, stats, runner.args.max_num_seqs)
    grid = QUICK_GRID if runner.args.quick else GRID
    sweep = Sweep("pooled_share", grid, f"sweep-{hardware}-{secrets.token_hex(3)}")
    pooled, device_only = {}, {}
    for share in grid:
        device, pool, resident = blocks_for(problem, share, runner.args.max_num_seqs)
        pooled[share] = runner.run(hardware, device, pool, f"{hardware} pooled", {"pooled_share": share}, sweep)
        if share > 0:
            device_only[share] = runner.run(hardware, resident, 0, f"{hardware} device only", {"pooled_share": share}, sweep)
    base = pooled[0.0]["output_throughput"]
    hidden = [s for s in grid if pooled[s]["output_throughput"] >= (1 - tolerance) * base]
    low = max(hidden)
    high = min((s for s in grid if s > low), default=None)
    refined = {}
    for _ in range(runner.args.bisections if high is not None else 0):
        middle = (low + high) / 2
        device, pool, _ = blocks_for(problem, middle, runner.args.max_num_seqs)
        refined[middle] = runner.run(hardware, device, pool, f"{hardware} bisection", {"pooled_share": middle}, None)
        low, high = (middle, high) if refined[middle]["output_throughput"] >= (1 - tolerance) * base else (low, middle)
    predicted = largest_transparent_share(problem, runner.args.max_num_seqs, DEPTH, tolerance)
    knee = low if high is None else (low + high) / 2
    runs = {**pooled, **refined}  # the share the runs really pooled, at the knee's bracket
    measured = [runs[s]["full_batch_pooled_share"] for s in (low, high) if s is not None]
    measured_knee = sum(measured) / len(measured) if None not in measured else None
    return {"hardware": hardware, "label": preset(hardware).label, "link_h2d_gbps": preset(hardware).link_h2d_gbps,
            "sweep_id": sweep.sweep_id, "pooled": pooled, "device_only": device_only, "bisection": refined,
            "simulated_knee_share": knee, "knee_bracket": [low, high], "planner_largest_transparent_share": predicted,
            "simulated_knee_measured_share": measured_knee,
            "knee_relative_difference": measured_knee / predicted - 1 if predicted and measured_knee is not None else None,
            "nominal_knee_relative_difference": knee / predicted - 1 if predicted else None,
            "pool_gain_at_same_device_budget": {s: pooled[s]["output_throughput"] / device_only[s]["output_throughput"]
                                                for s in device_only if device_only[s]["output_throughput"]}}


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for result, marker in zip(results, "os"):
        for series, style in (("pooled", "-"), ("device_only", ":")):
            points = sorted(result[series].items())
            name = f"{result['hardware']} {'pooled' if series == 'pooled' else 'device only'}"
            axes[0].plot([s for s, _ in points], [r["output_throughput"] for _, r in points], style, marker=marker, label=name)
            axes[1].plot([s for s, _ in points], [r["p99_tpot_ms"] for _, r in points], style, marker=marker, label=name)
        for axis in axes:
            axis.axvline(result["planner_largest_transparent_share"], color="grey", linewidth=0.8, linestyle="--")
    axes[0].set_ylabel("output throughput (tokens/s)")
    axes[1].set_ylabel("p99 TPOT (ms/token)")
    axes[1].set_yscale("log")
    for axis in axes:
        axis.set_xlabel("pooled share of the batch's KV (device budget cut to 1 - share)")
        axis.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{MODEL} simulated (datasheet presets); dashed: the planner's largest transparent share", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--request-rate", type=float, default=20.0)
    parser.add_argument("--max-num-seqs", type=int, default=96)
    parser.add_argument("--knee-tolerance", type=float, default=0.03, help="throughput drop that ends the flat part")
    parser.add_argument("--bisections", type=int, default=6)
    parser.add_argument("--out-dir", type=Path, default=None, help="default docs/results")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.max_num_seqs, args.request_rate, args.bisections = 24, 8, 100.0, 1
    args.out_dir = output_path(args.out_dir, Path("docs/results"), args.quick)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    workload = WorkloadSpec(name="sharegpt", model=MODEL, num_prompts=args.num_prompts, seed=0)
    requests, info = load_workload(workload)
    stats = WorkloadStats("sharegpt-synthetic", info.mean_prompt_len, info.mean_output_len, synthetic=True,
                          decode_context_tokens=decode_weighted_context((r.prompt_len, r.output_len) for r in requests))
    with tempfile.TemporaryDirectory() as folder:
        store = ResultsStore(Path(folder))
        runner = Runner(args, store, workload)
        results = [sweep_preset(runner, hardware, stats, args.knee_tolerance) for hardware in ("h100-pcie", "gh200")]
        grid = [r for r in store.records() if r.header.sweep_id]
        report = build_report(grid, title=f"{MODEL}: pooled share of the KV, h100-pcie vs gh200 (simulated)",
                              selection="benchmarks/bench_sim_hardware.py")
        write_report(report, args.out_dir / "sim_hardware_report.md", "markdown")
    figure(results, args.out_dir / "sim_hardware_pooled_share.png")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    (args.out_dir / "sim_hardware.json").write_text(json.dumps({
        "benchmark": "sim_hardware", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "model": MODEL, "dtype": DTYPE, "prefetch_depth": DEPTH, "workload": info.to_dict(),
        "request_rate": args.request_rate, "max_num_seqs": args.max_num_seqs, "knee_tolerance": args.knee_tolerance,
        "presets": results}, indent=2))
    for r in results:
        knee, difference = r["simulated_knee_measured_share"], r["knee_relative_difference"]
        print(f"{r['hardware']}: simulated knee at pooled share {knee if knee is not None else float('nan'):.3f} at full batch "
              f"(nominal {r['simulated_knee_share']:.3f}, bracket {r['knee_bracket']}), planner "
              f"{r['planner_largest_transparent_share']:.3f}, difference {difference if difference is not None else float('nan'):+.1%}")
        for share in sorted(r["pooled"]):
            row, alone = r["pooled"][share], r["device_only"].get(share)
            print(f"  f={share:.2f} pooled {row['output_throughput']:8.0f} tok/s p99 TPOT {row['p99_tpot_ms']:7.1f} ms "
                  f"stall {row['stall_fraction']:.2f} measured share {row['measured_pooled_share']:.2f} "
                  f"(at full batch {row['full_batch_pooled_share'] or 0:.2f})"
                  + (f" | device only {alone['output_throughput']:8.0f} tok/s, {alone['num_preemptions']} preemptions"
                     if alone else ""))


if __name__ == "__main__":
    main()
