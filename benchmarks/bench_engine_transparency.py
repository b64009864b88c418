"""Performance transparency on this machine: the same batch with the pool off and with part of the KV pooled.

OPT-125m-shaped model with seeded random weights in `--dtype` (auto: bf16 where native, else fp32); 64 requests with ShareGPT-like lengths
(prompts 16-512, outputs 32-256 tokens, seeded, random token ids), all arriving at once, EOS
ignored. The engine runs the same requests at the same batch (all 64 running):

- `pool-off`: the device budget holds every block; this run also measures the KV in use at the peak;
- `pool-<share>` for each of `--pool-shares` (default 0.5, 0.25, 0.1): the pool holds that share of
  the peak KV, the resident device blocks the rest (plus 5 % slack and the staging charge), and
  every pooled block is streamed back layer by layer each iteration (prefetch depth `--depth`).
  As requests finish, the engine moves pooled blocks back to the freed device blocks, so the
  pooled share falls after the peak; its mean over iterations is reported (`pooled %`);
- on a CPU, each pool also with the copy thread (`pool-<share>-thread`, `--copy-workers`), the GPU's
  discipline, beside the default team copy (runners/engine/prefetcher.py).

Each configuration runs `--repeats` times, interleaved, after a warm-up that is not timed.
Reports output tok/s (median and spread), each pool's ratio to pool-off (medians), the stall
fraction (time the layer loop waited on a copy) and the bytes streamed, and writes
docs/results/engine_transparency_<machine>.json. Run it alone:
`flock /tmp/pie-heavy.lock python benchmarks/bench_engine_transparency.py`. `--quick`: 4 short requests
(prompts 4-24, outputs 2-8), one pool share, one repeat, on `--model`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dtype import parse_args_with_dtype  # noqa: E402
from pie_core.fingerprint import collect_fingerprint  # noqa: E402
from quick_mode import add_quick_argument, output_path  # noqa: E402
from runners.engine.config import COPY_WORKERS, EngineConfig  # noqa: E402
from runners.engine.llm_engine import LLMEngine  # noqa: E402
from runners.engine.sampling_params import SamplingParams  # noqa: E402

BLOCK_SIZE = 16
PROMPT_RANGE, OUTPUT_RANGE = (16, 512), (32, 256)
QUICK_PROMPT_RANGE, QUICK_OUTPUT_RANGE = (4, 24), (2, 8)


def make_requests(count: int, seed: int, vocab: int, prompt_range=PROMPT_RANGE, output_range=OUTPUT_RANGE) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(4, vocab) for _ in range(rng.randint(*prompt_range))], rng.randint(*output_range))
            for _ in range(count)]


def peak_blocks(requests: list[tuple[list[int], int]]) -> int:
    return sum(-(-(len(prompt) + output) // BLOCK_SIZE) for prompt, output in requests)


def machine() -> dict:
    return collect_fingerprint("cpu")


def machine_name(fingerprint: dict) -> str:
    return "cuda" if fingerprint.get("gpu_name") else "cpu"


def mean_pooled_share(stats: list) -> float:
    """The KV's pooled share per iteration, averaged (pooled blocks move back once the device has room)."""
    return statistics.fmean(stat.pool_blocks_used / max(1, stat.pool_blocks_used + stat.device_blocks_used)
                            for stat in stats)


def write_record(record: dict, stem: str, out: Path | None, quick: bool = False) -> None:
    """Write a benchmark's JSON to `out`, else docs/results/<stem>_<machine>.json (quick: a temporary folder), and say where."""
    out = output_path(out, REPO / "docs" / "results" / f"{stem}_{machine_name(record['machine'])}.json", quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", file=sys.stderr)


def run_once(config: EngineConfig, requests: list[tuple[list[int], int]], engine: LLMEngine | None = None) -> tuple[dict, LLMEngine]:
    """Run all requests at once; returns measured figures (the engine is reused between repeats)."""
    engine = engine or LLMEngine(config)
    if not engine.stats:  # warm-up, not timed
        engine.generate([requests[0][0][:64]], SamplingParams(max_tokens=4, ignore_eos=True))
    first = len(engine.stats)
    params = [SamplingParams(max_tokens=output, ignore_eos=True) for _, output in requests]
    began = time.perf_counter()
    outputs = engine.generate([prompt for prompt, _ in requests], params)
    wall_s = time.perf_counter() - began
    stats = engine.stats[first:]
    engine.check_invariants()
    output_tokens = sum(len(output.output_token_ids) for output in outputs)
    stall_s = sum(stat.stall_s for stat in stats)
    compute_s = sum(stat.compute_s for stat in stats)
    return {
        "wall_s": wall_s,
        "output_tokens": output_tokens,
        "output_tok_s": output_tokens / wall_s,
        "stall_s": stall_s,
        "compute_s": compute_s,
        "stall_fraction": stall_s / (stall_s + compute_s) if stall_s + compute_s else 0.0,
        "h2d_bytes": sum(stat.h2d_bytes for stat in stats),
        "d2h_bytes": sum(stat.d2h_bytes for stat in stats),
        "peak_running": max(stat.num_running for stat in stats),
        "peak_pool_blocks": max(stat.pool_blocks_used for stat in stats),
        "mean_pooled_share": mean_pooled_share(stats),
        "peak_device_blocks": max(stat.device_blocks_used for stat in stats),
        "num_preempted": sum(stat.num_preempted for stat in stats),
        "iterations": len(stats),
        "errors": sum(output.finish_reason == "error" for output in outputs),
        "first_tokens": [output.output_token_ids[:8] for output in outputs[:4]],
    }, engine


def summarize(runs: list[dict]) -> dict:
    rates = [run["output_tok_s"] for run in runs]
    return {"median_output_tok_s": statistics.median(rates), "min_output_tok_s": min(rates),
            "max_output_tok_s": max(rates), "runs": runs}


def print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    print(f"{'config':<18} {'out tok/s (median)':>18} {'spread':>16} {'running':>8} {'pool blk':>9} "
          f"{'pooled %':>9} {'stall %':>8} {'H2D GB':>8} {'preempt':>8}")
    for name, summary in rows:
        run = summary["runs"][0]
        stall = statistics.median(r["stall_fraction"] for r in summary["runs"]) * 100
        print(f"{name:<18} {summary['median_output_tok_s']:>18.1f} "
              f"{summary['min_output_tok_s']:>7.1f}-{summary['max_output_tok_s']:<8.1f} {run['peak_running']:>8} "
              f"{run['peak_pool_blocks']:>9} {run['mean_pooled_share'] * 100:>9.1f} {stall:>8.2f} "
              f"{run['h2d_bytes'] / 1e9:>8.2f} {run['num_preempted']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-125m", help="registry name (random weights) or local model directory")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=2, help="prefetch depth (staging slots)")
    parser.add_argument("--pool-shares", default="0.5,0.25,0.1", help="shares of the peak KV held in the pool")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--copy-workers", default=None,
                        help="comma-separated copy workers to measure (default: every one the device has)")
    parser.add_argument("--out", type=Path, default=None)
    add_quick_argument(parser)
    args = parse_args_with_dtype(parser)
    dtype = args.dtype
    ranges = (QUICK_PROMPT_RANGE, QUICK_OUTPUT_RANGE) if args.quick else (PROMPT_RANGE, OUTPUT_RANGE)
    if args.quick:
        args.requests, args.pool_shares, args.repeats = 4, "0.5", 1

    base = EngineConfig(model=args.model, dtype=dtype, device=args.device, block_size=BLOCK_SIZE,
                        max_num_seqs=args.requests, random_weights=True, seed=args.seed)
    requests = make_requests(args.requests, args.seed, base.shape.vocab_size, *ranges)
    peak = peak_blocks(requests)
    layers = base.shape.num_layers
    configs = {"pool-off": base.replace(num_device_blocks=peak + 64)}
    engines: dict[str, LLMEngine | None] = {"pool-off": None}
    runs: dict[str, list[dict]] = {"pool-off": []}

    def measure(name: str) -> None:
        result, engines[name] = run_once(configs[name], requests, engines[name])
        runs[name].append(result)
        print(f"{name}: {result['output_tok_s']:.1f} out tok/s, wall {result['wall_s']:.1f} s, "
              f"stall {result['stall_fraction'] * 100:.2f} %, peak pool {result['peak_pool_blocks']} blocks",
              file=sys.stderr)

    # The pool-off run measures the KV actually in use at the peak; each pool then takes a share of it.
    measure("pool-off")
    in_use = runs["pool-off"][0]["peak_device_blocks"]
    margin = in_use // 20  # resident slack so admission order stays the same as with the pool off
    shares = [float(share) for share in args.pool_shares.split(",")]
    pools = {}
    workers = args.copy_workers.split(",") if args.copy_workers else list(COPY_WORKERS[args.device.split(":")[0]])
    for share in shares:
        for worker in workers:
            name = f"pool-{share:g}" + ("" if worker == workers[0] else f"-{worker}")
            pooled = int(in_use * share)
            staging = -(-args.depth * pooled // layers)
            configs[name] = base.replace(num_device_blocks=in_use - pooled + margin + staging, num_pool_blocks=pooled,
                                         prefetch_depth=args.depth, copy_worker=worker)
            engines[name], runs[name], pools[name] = None, [], pooled
    names = list(configs)
    order = names[1:] + [name for i in range(1, args.repeats) for name in (reversed(names) if i % 2 else names)]
    for name in order:
        measure(name)
    for engine in engines.values():
        if engine is not None:
            engine.close()
    summaries = {name: summarize(runs[name]) for name in configs}
    off = summaries["pool-off"]["median_output_tok_s"]
    ratios = {name: summaries[name]["median_output_tok_s"] / off for name in names[1:]}
    stall = {name: statistics.median(r["stall_fraction"] for r in runs[name]) for name in names[1:]}
    same_tokens = all(runs[name][0]["first_tokens"] == runs["pool-off"][0]["first_tokens"] for name in names[1:])
    print_table(f"Transparency, {args.requests} requests, peak KV in use {in_use} blocks, depth {args.depth}",
                list(summaries.items()))
    print()
    for name in names[1:]:
        print(f"{name}: pool {pools[name]} blocks ({pools[name] / in_use:.0%} of the peak KV), "
              f"ratio to pool-off {ratios[name]:.3f}, stall fraction {stall[name] * 100:.2f} %")
    headline = f"pool-{0.5:g}"
    if headline in ratios:
        print(f"\nratio pool-0.5 / pool-off (median output tok/s, {configs[headline].copy_worker} copy): "
              f"{ratios[headline]:.3f}  (target >= 0.9)")
    print(f"greedy tokens identical across configurations: {same_tokens}")
    fingerprint = machine()
    record = {
        "benchmark": "engine_transparency", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": fingerprint, "model": f"{args.model} (random {dtype} weights)",
        "workload": {"requests": args.requests, "seed": args.seed, "prompt_range": list(ranges[0]), "output_range": list(ranges[1]),
                     "arrivals": "all at once", "synthetic": True},
        "configs": {name: dataclasses.asdict(config) for name, config in configs.items()},
        "peak_kv_in_use_blocks": in_use, "pool_blocks": pools, "stall_fraction": stall,
        "results": summaries, "ratio_to_pool_off": ratios, "same_greedy_tokens": same_tokens,
    }
    write_record(record, "engine_transparency", args.out, args.quick)


if __name__ == "__main__":
    main()
