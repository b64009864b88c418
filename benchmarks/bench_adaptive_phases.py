"""Adaptive expansion against static pool sizes on a phased workload, same requests and arrivals, one run.

The Pie engine (`pie bench --runner pie` through `runners.bench.run_bench`, so exactly what a user
runs) on OPT-125m-shaped seeded random weights, dtype auto. The device budget holds about
`--device-seqs` average sequences of the workload, resident; each configuration's device budget
adds the staging its own pool capacity is charged (runners/engine/block_manager.CacheLayout:
`ceil(prefetch_depth * pool / layers)` blocks), so every configuration has the same resident
device blocks. The phased workload
(runners/workloads/phases.py): short chats arriving at `--light-rate`, then a burst of long
contexts at eight times that rate. Runs, interleaved in one process and `--repeats` times each
(figures are the medians): no pool, each static pool size of `--pool-sizes`, and `--adaptive`
with the largest size as its capacity. The adaptive run
does not know the phases.

Per run and phase (requests `light-*` / `burst-*`): output throughput (the phase's output tokens
over its first arrival to its last completion), goodput (requests meeting `--ttft-slo-ms` and
`--tpot-slo-ms`, per second of the same span), and from the timeline the mean pooled share of the
pool capacity over the phase's windows. Greedy token ids of every request are compared across
all runs. Checks (printed; the exit code is 1 when one fails): adaptive >= 0.95x the best static
size in each phase (goodput in the light phase, which arrivals bound; output throughput in the
burst, which saturates), adaptive >= 1.1x the no-pool engine over the whole run, and identical
tokens. Writes docs/results/adaptive_phases_<machine>.json (or `--out`). Run it alone:
`flock /tmp/pie-bench.lock python benchmarks/bench_adaptive_phases.py`. `--quick`: 4 requests of 4
output tokens, one static size, one repeat, on `--model` (tests/test_scripts_run.py gives a tiny one).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_transparency import machine, write_record  # noqa: E402
from benchmarks.bench_dtype import add_dtype_argument, resolve_bench_dtype  # noqa: E402
from quick_mode import add_quick_argument  # noqa: E402
from results.store import ResultsStore, load_record  # noqa: E402
from results.timeline import mean_pool_share, timeline_windows  # noqa: E402
from runners.arrivals import ArrivalSpec  # noqa: E402
from runners.bench import BenchSettings, run_bench  # noqa: E402
from runners.workloads import WorkloadSpec, load_workload  # noqa: E402
from runners.workloads.phases import PHASES, phase_of  # noqa: E402

BLOCK_SIZE = 16
PREFETCH_DEPTH = 2


def phase_figures(record, phase: str, ttft_slo_s: float, tpot_slo_s: float, capacity: int) -> dict:
    samples = [s for s in record.requests if phase_of(s.request_id) == phase]
    done = [s for s in samples if s.success]
    start = min(s.arrival_s for s in samples)
    end = max(s.arrival_s + s.e2el_s for s in done)
    span = max(1e-9, end - start)
    good = [s for s in done if s.ttft_s <= ttft_slo_s and (s.output_len < 2 or (s.e2el_s - s.ttft_s) / (s.output_len - 1) <= tpot_slo_s)]
    windows = timeline_windows(record.timeline)
    return {"requests": len(samples), "failed": len(samples) - len(done), "span_s": span,
            "output_tok_s": sum(s.output_len for s in done) / span, "goodput_req_s": len(good) / span,
            "good_requests": len(good), "mean_pool_share": mean_pool_share(windows, capacity, start, end) if capacity else 0.0,
            "mean_ttft_ms": 1000 * sum(s.ttft_s for s in done) / len(done)}


def aggregate(repeats: list[dict]) -> dict:
    """One configuration over its repeats: the median of every figure; the first repeat's timeline and moves."""
    first = repeats[0]

    def median(get):
        return statistics.median(get(r) for r in repeats)

    phases = {phase: {key: median(lambda r, p=phase, k=key: r["phases"][p][k]) for key in first["phases"][phase]}
              for phase in PHASES}
    return {**first, "repeats": len(repeats), "output_throughput": median(lambda r: r["output_throughput"]),
            "stall_fraction": median(lambda r: r["stall_fraction"] or 0.0), "phases": phases,
            "output_throughput_each": [r["output_throughput"] for r in repeats],
            "burst_tok_s_each": [r["phases"]["burst"]["output_tok_s"] for r in repeats]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--num-prompts", type=int, default=48, help="half light, half burst")
    parser.add_argument("--burst-prompt-len", type=int, default=256)
    parser.add_argument("--light-rate", type=float, default=4.0, help="light phase requests/s (the burst: 8x)")
    parser.add_argument("--device-seqs", type=float, default=4.0, help="device budget in average sequences")
    parser.add_argument("--pool-sizes", default="64,128,256,512,768", help="static pool sizes (blocks), besides 0")
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--window-steps", type=int, default=4)
    parser.add_argument("--max-stall-fraction", type=float, default=None, help="the controller's stall limit (default: the runner's)")
    parser.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    parser.add_argument("--tpot-slo-ms", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every configuration, interleaved; figures are medians")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    add_dtype_argument(parser)
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.burst_prompt_len, args.light_rate, args.pool_sizes, args.repeats = 4, 24, 50.0, "8", 1
        args.max_num_seqs, args.window_steps = 4, 2
    dtype = resolve_bench_dtype(args.dtype, parser)
    sizes = sorted({int(v) for v in args.pool_sizes.split(",") if v.strip()})
    capacity = max(sizes)
    workload = WorkloadSpec(name="phases", model=args.model, num_prompts=args.num_prompts, seed=args.seed,
                            input_len=args.burst_prompt_len, output_len=4 if args.quick else None)
    requests, _ = load_workload(workload, args.light_rate)
    mean_blocks = sum(-(-(r.prompt_len + r.output_len) // BLOCK_SIZE) for r in requests) / len(requests)
    from pie_core.shapes import resolve_model

    layers = resolve_model(args.model).num_layers
    resident = round(args.device_seqs * mean_blocks)

    def device_budget(pool: int) -> int:  # resident blocks plus the staging charge of this pool (prefetch depth 2)
        return resident + -(-PREFETCH_DEPTH * pool // layers)

    print(f"{len(requests)} requests, mean {mean_blocks:.1f} blocks each; device {resident} resident blocks "
          f"(+{device_budget(capacity) - resident} staging at the largest pool) = {args.device_seqs:g} average "
          f"sequences; dtype {dtype}", file=sys.stderr)
    runs = [("no pool", 0, False)] + [(f"static {s}", s, False) for s in sizes] + [(f"adaptive <= {capacity}", capacity, True)]
    raw, tokens = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(Path(tmp))
        for repeat, (name, pool, adaptive) in ((r, run) for r in range(args.repeats) for run in runs):
            options = {"num_pool_blocks": pool, "num_device_blocks": device_budget(pool),
                       "block_size": BLOCK_SIZE, "max_num_seqs": args.max_num_seqs, "prefetch_depth": PREFETCH_DEPTH,
                       "window_steps": args.window_steps}
            if adaptive:
                options["adaptive"] = True
                if args.max_stall_fraction is not None:
                    options["max_stall_fraction"] = args.max_stall_fraction
            settings = BenchSettings(model=args.model, workload=workload, runner="pie", dtype=dtype, device="cpu",
                                     seed=args.seed, arrivals=ArrivalSpec(request_rate=args.light_rate, seed=args.seed),
                                     save_outputs=True, runner_options=options)
            began = time.perf_counter()
            outcome = run_bench(settings, store)
            record = load_record(outcome.record_path)
            tokens[(name, repeat)] = {s.request_id: s.output_token_ids for s in record.requests}
            phases = {phase: phase_figures(record, phase, args.ttft_slo_ms / 1000, args.tpot_slo_ms / 1000, capacity)
                      for phase in PHASES}
            windows = timeline_windows(record.timeline)
            raw.append({"name": name, "repeat": repeat, "pool_blocks": pool, "adaptive": adaptive, "wall_s": time.perf_counter() - began,
                        "resident_device_blocks": outcome.telemetry.get("effective_config", {}).get("num_resident_device_blocks"),
                            "output_throughput": outcome.summary["output_throughput"],
                            "completed": outcome.summary["completed"], "phases": phases,
                            "stall_fraction": outcome.telemetry.get("stall_fraction"),
                            "preemptions": outcome.telemetry.get("num_preemptions"),
                            "peak_pool_blocks_used": outcome.telemetry.get("peak_pool_blocks_used"),
                            "moves": [(w.t_s, w.move, w.pool_limit_blocks, w.reason) for w in windows
                                      if w.move in ("grow", "shrink", "rearm")],
                            "timeline": [w.to_dict() for w in windows]})
            light, burst = phases["light"], phases["burst"]
            print(f"{name:>16} #{repeat} ({raw[-1]['resident_device_blocks']} resident): {outcome.summary['output_throughput']:7.1f} tok/s overall | light {light['goodput_req_s']:5.2f} "
                  f"good req/s, pool {light['mean_pool_share']:.0%} | burst {burst['output_tok_s']:7.1f} tok/s, "
                  f"pool {burst['mean_pool_share']:.0%} | stall {outcome.telemetry.get('stall_fraction', 0):.0%}, "
                  f"{outcome.telemetry.get('num_preemptions')} preemptions", file=sys.stderr)
    results = [aggregate([r for r in raw if r["name"] == name]) for name, _, _ in runs]
    static = [r for r in results if not r["adaptive"]]
    adaptive = next(r for r in results if r["adaptive"])
    no_pool = results[0]
    best_light = max(static, key=lambda r: r["phases"]["light"]["goodput_req_s"])
    best_burst = max(static, key=lambda r: r["phases"]["burst"]["output_tok_s"])
    checks = {
        "light_vs_best_static_goodput": adaptive["phases"]["light"]["goodput_req_s"] / best_light["phases"]["light"]["goodput_req_s"],
        "burst_vs_best_static_throughput": adaptive["phases"]["burst"]["output_tok_s"] / best_burst["phases"]["burst"]["output_tok_s"],
        "whole_run_vs_no_pool": adaptive["output_throughput"] / no_pool["output_throughput"],
    }
    targets = {"light_vs_best_static_goodput": 0.95, "burst_vs_best_static_throughput": 0.95, "whole_run_vs_no_pool": 1.1}
    adaptive_tokens = tokens[(adaptive["name"], 0)]
    for r in results:  # which requests' greedy tokens differ from the (first) adaptive run's, and where they first part
        differing = {f"{rid}#{rep}": next((i for i, (a, b) in enumerate(zip(ids, adaptive_tokens[rid])) if a != b),
                                          min(len(ids), len(adaptive_tokens[rid])))
                     for (name, rep), by_id in tokens.items() if name == r["name"]
                     for rid, ids in by_id.items() if ids != adaptive_tokens.get(rid)}
        r["requests_differing_from_adaptive"] = len(differing)
        r["first_differing_token"] = differing
    same_tokens = all(r["requests_differing_from_adaptive"] == 0 for r in results)
    met = {k: checks[k] >= targets[k] for k in checks} | {"identical_tokens": same_tokens}
    print("\n| run | overall tok/s | light good req/s | light pool share | burst tok/s | burst pool share | stall | preemptions |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        light, burst = r["phases"]["light"], r["phases"]["burst"]
        print(f"| {r['name']} | {r['output_throughput']:.1f} | {light['goodput_req_s']:.2f} | {light['mean_pool_share']:.1%} | "
              f"{burst['output_tok_s']:.1f} | {burst['mean_pool_share']:.1%} | {r['stall_fraction'] or 0:.1%} | {r['preemptions']} |")
    print(f"\nbest static: light {best_light['name']}, burst {best_burst['name']}")
    for key, value in checks.items():
        print(f"{key}: {value:.3f} (target >= {targets[key]}) {'met' if met[key] else 'MISSED'}")
    print(f"identical greedy tokens across all {len(tokens)} runs: {same_tokens}"
          + ("" if same_tokens else " (" + ", ".join(f"{r['name']}: {r['requests_differing_from_adaptive']} differ"
                                                     for r in results if r["requests_differing_from_adaptive"]) + ")"))
    write_record({"benchmark": "adaptive_phases", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "dtype": dtype,
                  "device_blocks": {str(pool): device_budget(pool) for _, pool, _ in runs}, "resident_device_blocks": resident, "mean_blocks_per_request": mean_blocks,
                  "runs": results, "raw_runs": [{k: v for k, v in r.items() if k != "timeline"} for r in raw], "checks": checks, "targets": targets, "met": met}, "adaptive_phases", args.out, args.quick)
    return 0 if all(met.values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
