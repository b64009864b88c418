"""Performance transparency in steady state: the pool held at a share of the KV for the whole window.

bench_engine_transparency.py sends 64 requests at once and runs them to completion, so as they
finish the engine moves pooled blocks back to the freed device blocks and the pooled share falls
after the peak. This benchmark holds it instead: a closed loop keeps `--requests` requests in
flight (a finished one is replaced at once; lengths uniform within half to one and a half times
`--input-len` / `--output-len`, seeded, random token ids, EOS ignored), so the KV in use stays near
its peak, the device stays full and nothing is promoted.

- `pool-off`: a device budget that holds every block; its window measures the KV in use (the
  largest per-iteration count), which sizes the others;
- `pool-<share>` (`--pool-share`, default 0.5) for each CPU copy worker (team, thread): the pool
  holds that share of the KV in use, the device the rest plus 5 % slack and the staging charge.

Each configuration runs `--repeats` times, interleaved, each on a fresh engine: `--settle-steps`
iterations unmeasured, then `--window-steps` measured. Reports output tok/s (tokens of the window
over its wall time), each pool's ratio to pool-off (medians), the stall fraction, and the pooled
share of the KV averaged over the window. Writes
docs/results/engine_transparency_steady_<machine>.json. Run it alone:
`flock /tmp/pie-heavy.lock python benchmarks/bench_engine_transparency_steady.py`. `--quick`: 4 short
requests in flight, windows of a few steps, one repeat, on `--model`.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_transparency import BLOCK_SIZE, machine, mean_pooled_share, write_record  # noqa: E402
from benchmarks.bench_dtype import parse_args_with_dtype  # noqa: E402
from quick_mode import add_quick_argument  # noqa: E402
from runners.engine.config import COPY_WORKERS, EngineConfig  # noqa: E402
from runners.engine.llm_engine import LLMEngine  # noqa: E402
from runners.online_tuner import ClosedLoop  # noqa: E402


def run_window(config: EngineConfig, args: argparse.Namespace) -> dict:
    engine = LLMEngine(config)
    loop = ClosedLoop(engine, config.shape.vocab_size, args.input_len, args.output_len, args.requests, args.seed)
    loop.settle(args.settle_steps)
    began = time.perf_counter()
    stats = [loop.step() for _ in range(args.window_steps)]
    wall_s = time.perf_counter() - began
    engine.check_invariants()
    engine.close()  # the next configuration's engine does not share the machine with this one's cache
    stall_s = sum(stat.stall_s for stat in stats)
    busy_s = stall_s + sum(stat.compute_s for stat in stats)
    output_tokens = sum(stat.batch_size for stat in stats)  # one token per scheduled sequence
    return {
        "wall_s": wall_s, "output_tokens": output_tokens, "output_tok_s": output_tokens / wall_s,
        "stall_fraction": stall_s / busy_s if busy_s else 0.0,
        "kv_in_use_blocks": max(stat.device_blocks_used + stat.pool_blocks_used for stat in stats),
        "mean_pooled_share": mean_pooled_share(stats),
        "mean_running": statistics.fmean(stat.num_running for stat in stats),
        "h2d_bytes": sum(stat.h2d_bytes for stat in stats),
        "num_preempted": sum(stat.num_preempted for stat in stats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-125m", help="registry name (random weights) or local model directory")
    parser.add_argument("--requests", type=int, default=64, help="requests kept in flight")
    parser.add_argument("--input-len", type=int, default=264, help="mean prompt tokens (ShareGPT-like 16-512: 264)")
    parser.add_argument("--output-len", type=int, default=144, help="mean output tokens (ShareGPT-like 32-256: 144)")
    parser.add_argument("--pool-share", type=float, default=0.5)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--settle-steps", type=int, default=200)
    parser.add_argument("--window-steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    add_quick_argument(parser)
    args = parse_args_with_dtype(parser)
    dtype = args.dtype
    if args.quick:
        args.requests, args.input_len, args.output_len, args.settle_steps, args.window_steps, args.repeats = 4, 16, 8, 4, 4, 1

    base = EngineConfig(model=args.model, dtype=dtype, block_size=BLOCK_SIZE, max_num_seqs=args.requests,
                        random_weights=True, seed=args.seed)
    longest = -(-(args.input_len * 3 // 2 + args.output_len * 3 // 2 + 2) // BLOCK_SIZE)
    configs = {"pool-off": base.replace(num_device_blocks=args.requests * longest + 64)}
    runs: dict[str, list[dict]] = {"pool-off": [run_window(configs["pool-off"], args)]}
    in_use = runs["pool-off"][0]["kv_in_use_blocks"]
    pooled = int(in_use * args.pool_share)
    staging = -(-args.depth * pooled // base.shape.num_layers)
    for worker in COPY_WORKERS["cpu"]:
        name = f"pool-{args.pool_share:g}-{worker}"
        configs[name] = base.replace(num_device_blocks=in_use - pooled + in_use // 20 + staging, num_pool_blocks=pooled,
                                     prefetch_depth=args.depth, copy_worker=worker)
        runs[name] = []
    names = list(configs)
    order = names[1:] + [name for i in range(1, args.repeats) for name in (reversed(names) if i % 2 else names)]
    for name in order:
        runs[name].append(run_window(configs[name], args))
        run = runs[name][-1]
        print(f"{name}: {run['output_tok_s']:.1f} out tok/s, stall {run['stall_fraction']:.1%}, "
              f"pooled {run['mean_pooled_share']:.1%} of the KV, preempted {run['num_preempted']}", file=sys.stderr)
    median = {name: statistics.median(r["output_tok_s"] for r in runs[name]) for name in names}
    print(f"\nSteady state, {args.requests} requests in flight, KV in use {in_use} blocks, depth {args.depth}")
    print(f"{'config':<20} {'out tok/s (median)':>18} {'ratio':>7} {'stall %':>8} {'pooled %':>9} {'running':>8}")
    for name in names:
        rows = runs[name]
        print(f"{name:<20} {median[name]:>18.1f} {median[name] / median['pool-off']:>7.3f} "
              f"{statistics.median(r['stall_fraction'] for r in rows) * 100:>8.2f} "
              f"{statistics.median(r['mean_pooled_share'] for r in rows) * 100:>9.1f} "
              f"{statistics.median(r['mean_running'] for r in rows):>8.1f}")
    fingerprint = machine()
    record = {"benchmark": "engine_transparency_steady", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": fingerprint, "model": f"{args.model} (random {dtype} weights)",
              "workload": {"closed_loop_requests": args.requests, "mean_input_len": args.input_len,
                           "mean_output_len": args.output_len, "seed": args.seed, "synthetic": True},
              "settle_steps": args.settle_steps, "window_steps": args.window_steps, "kv_in_use_blocks": in_use,
              "configs": {name: dataclasses.asdict(config) for name, config in configs.items()}, "runs": runs,
              "median_output_tok_s": median,
              "ratio_to_pool_off": {name: median[name] / median["pool-off"] for name in names[1:]}}
    write_record(record, "engine_transparency_steady", args.out, args.quick)


if __name__ == "__main__":
    main()
