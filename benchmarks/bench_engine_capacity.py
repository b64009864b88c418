"""Capacity effect: a device KV budget that fits ~4 running sequences, with and without the CPU pool.

Same model and workload as bench_engine_transparency.py (OPT-125m-shaped random bf16 weights,
64 ShareGPT-like requests, all at once, `max_num_seqs` 32). Two series, one table of output
tok/s against the number of sequences that actually ran (mean over iterations):

- `pool`: the device budget stays at ~4 average sequences' worth of blocks (staging included:
  a pool of P blocks at depth d takes ceil(d * P / L) of it) and the pool grows, letting more
  sequences run; the largest pool leaves the device just enough resident blocks for the
  longest request (the engine refuses a request the resident device blocks cannot hold whole, so
  that a sequence left alone always finishes) and one more. Prefill is chunked, so a prompt
  need not be resident at once: earlier chunks' full blocks move to the pool.
- `device`: no pool, the device budget itself grows (what more device memory would buy).

The headline ratio is the best `pool` point over the `pool`-series point with no pool at the
same device budget. Writes docs/results/engine_capacity_<machine>.json. Run it alone:
`flock /tmp/pie-heavy.lock python benchmarks/bench_engine_capacity.py`. `--quick`: 8 short requests
(prompts 4-24, outputs 2-8), two pool sizes, one device point, on `--model`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_transparency import (  # noqa: E402
    BLOCK_SIZE,
    OUTPUT_RANGE,
    PROMPT_RANGE,
    QUICK_OUTPUT_RANGE,
    QUICK_PROMPT_RANGE,
    machine,
    make_requests,
    run_once,
    write_record,
)
from benchmarks.bench_dtype import parse_args_with_dtype  # noqa: E402
from quick_mode import add_quick_argument  # noqa: E402
from runners.engine.config import EngineConfig  # noqa: E402


def mean_running(result_stats: list) -> float:
    return statistics.fmean(stat.num_running for stat in result_stats) if result_stats else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-125m", help="registry name (random weights) or local model directory")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--device-seqs", type=float, default=4.0, help="device budget in average sequences")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--pool-points", type=int, default=4, help="pool sizes between 0 and the largest")
    parser.add_argument("--device-series", default="8,16", help="no-pool device budgets, in average sequences")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    add_quick_argument(parser)
    args = parse_args_with_dtype(parser)
    dtype = args.dtype
    ranges = (QUICK_PROMPT_RANGE, QUICK_OUTPUT_RANGE) if args.quick else (PROMPT_RANGE, OUTPUT_RANGE)
    if args.quick:
        args.requests, args.max_num_seqs, args.device_seqs, args.pool_points, args.device_series = 8, 2, 4.0, 2, "6"

    base = EngineConfig(model=args.model, dtype=dtype, device=args.device, block_size=BLOCK_SIZE,
                        max_num_seqs=args.max_num_seqs, random_weights=True, seed=args.seed)
    requests = make_requests(args.requests, args.seed, base.shape.vocab_size, *ranges)
    blocks = [-(-(len(prompt) + output) // BLOCK_SIZE) for prompt, output in requests]
    mean_blocks = statistics.fmean(blocks)
    budget = int(round(args.device_seqs * mean_blocks))
    layers = base.shape.num_layers
    # Resident blocks must hold the longest request whole (LLMEngine refuses it otherwise) and every
    # running sequence's tail block.
    floor = max(max(blocks), args.max_num_seqs) + 1
    largest_pool = (budget - floor) * layers // args.depth
    if largest_pool <= 0:
        raise SystemExit(f"device budget {budget} blocks leaves no room for a pool (needs > {floor} resident)")
    pools = [0] + [largest_pool * (i + 1) // args.pool_points for i in range(args.pool_points)]
    points = [("pool", budget, pool) for pool in pools]
    points += [("device", int(round(float(seqs) * mean_blocks)), 0) for seqs in args.device_series.split(",") if seqs]

    rows = []
    for series, device_blocks, pool in points:
        config = base.replace(num_device_blocks=device_blocks, num_pool_blocks=pool,
                              prefetch_depth=args.depth if pool else base.prefetch_depth)
        result, engine = run_once(config, requests)
        stats = engine.stats[-result["iterations"]:]
        result.update(series=series, num_device_blocks=device_blocks, num_pool_blocks=pool,
                      resident_device_blocks=engine.num_device_blocks, mean_running=mean_running(stats))
        rows.append(result)
        print(f"{series} device {device_blocks} pool {pool}: {result['output_tok_s']:.1f} out tok/s, "
              f"mean running {result['mean_running']:.1f}, wall {result['wall_s']:.1f} s", file=sys.stderr)
        del engine

    print(f"\nCapacity, {args.requests} requests, mean request {mean_blocks:.1f} blocks, device budget "
          f"{budget} blocks (~{args.device_seqs:g} sequences), depth {args.depth}")
    print(f"{'series':<8} {'device blk':>10} {'resident':>9} {'pool blk':>9} {'mean run':>9} {'peak run':>9} "
          f"{'out tok/s':>10} {'stall %':>8} {'preempt':>8}")
    for row in rows:
        print(f"{row['series']:<8} {row['num_device_blocks']:>10} {row['resident_device_blocks']:>9} "
              f"{row['num_pool_blocks']:>9} {row['mean_running']:>9.1f} {row['peak_running']:>9} "
              f"{row['output_tok_s']:>10.1f} {row['stall_fraction'] * 100:>8.2f} {row['num_preempted']:>8}")
    pool_rows = [row for row in rows if row["series"] == "pool"]
    best = max(pool_rows[1:], key=lambda row: row["output_tok_s"])
    ratio = best["output_tok_s"] / pool_rows[0]["output_tok_s"]
    print(f"\nratio best pool / pool off at the same device budget: {ratio:.2f}  (target >= 1.4); "
          f"mean running {pool_rows[0]['mean_running']:.1f} -> {best['mean_running']:.1f}")
    fingerprint = machine()
    for row in rows:
        row.pop("first_tokens", None)
    record = {
        "benchmark": "engine_capacity", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": fingerprint, "model": f"{args.model} (random {dtype} weights)",
        "workload": {"requests": args.requests, "seed": args.seed, "prompt_range": list(ranges[0]), "output_range": list(ranges[1]),
                     "arrivals": "all at once", "synthetic": True},
        "device_budget_blocks": budget, "mean_request_blocks": mean_blocks, "prefetch_depth": args.depth,
        "max_num_seqs": args.max_num_seqs, "rows": rows, "ratio_best_pool_over_off": ratio,
    }
    write_record(record, "engine_capacity", args.out, args.quick)


if __name__ == "__main__":
    main()
