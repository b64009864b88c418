"""Decode-attention kernels on this machine: the C kernel vs the PyTorch gather path, in GB/s.

One batch of decode queries (default: batch 64, OPT-125m heads, contexts = prompt 16-512 plus
0-256 generated tokens, seeded) over a bf16 paged cache with scattered blocks. Prints the
median and best time of each path and the KV bytes read per second, next to a memcpy of the
same bytes (the bandwidth a kernel that reads the KV once could approach), and with `--out` writes
them as JSON. Run it alone: `flock /tmp/pie-heavy.lock python benchmarks/bench_decode_kernel.py`.
`--quick`: batch 4, two repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dtype import add_dtype_argument, resolve_bench_dtype
from benchmarks.quick_mode import add_quick_argument, output_path
from pie_core.fingerprint import collect_fingerprint
from runners.engine.attention import kernel_name, paged_decode_attention


def timed(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up: builds the C kernel, faults pages in
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2], samples[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here (default: print only)")
    add_dtype_argument(parser)
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 2
    dtype = getattr(torch, resolve_bench_dtype(args.dtype, parser))
    rng = random.Random(args.seed)
    lens = [rng.randint(16, 512) + rng.randint(0, 256) for _ in range(args.batch)]
    blocks = [-(-n // args.block_size) for n in lens]
    cache = torch.randn(sum(blocks), 2, args.block_size, args.kv_heads, args.head_dim).to(dtype)
    free = list(range(sum(blocks)))
    rng.shuffle(free)
    table = torch.zeros(args.batch, max(blocks), dtype=torch.long)
    for row, count in enumerate(blocks):
        table[row, :count] = torch.tensor([free.pop() for _ in range(count)])
    q = torch.randn(args.batch, args.heads, args.head_dim).to(dtype)
    context_lens = torch.tensor(lens)
    kv_bytes = sum(lens) * 2 * args.kv_heads * args.head_dim * cache.element_size()
    scale = args.head_dim ** -0.5
    source, target = torch.empty(kv_bytes // 4, dtype=torch.int32), torch.empty(kv_bytes // 4, dtype=torch.int32)
    print(f"batch {args.batch}, mean context {sum(lens) / len(lens):.0f}, KV read {kv_bytes / 1e6:.1f} MB, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    rows = []
    for variant in (None, "torch"):  # this machine's own C build (the PyTorch path where it cannot run), then PyTorch
        rows.append((f"paged_decode_attention [{kernel_name(q, cache, variant)}]",
                     *timed(lambda v=variant: paged_decode_attention(q, cache, table, context_lens, scale, v), args.repeats)))
    rows.append(("memcpy of the same bytes", *timed(lambda: target.copy_(source), args.repeats)))
    print(f"{'path':<34} {'median ms':>10} {'best ms':>8} {'GB/s (median)':>14}")
    for name, median_s, best_s in rows:
        print(f"{name:<34} {median_s * 1e3:>10.2f} {best_s * 1e3:>8.2f} {kv_bytes / median_s / 1e9:>14.1f}")
    if args.out or args.quick:
        out = output_path(args.out, Path("decode_kernel.json"), args.quick)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "decode_kernel", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": collect_fingerprint("cpu"), "args": {k: str(v) for k, v in vars(args).items()},
            "threads": torch.get_num_threads(), "mean_context": sum(lens) / len(lens), "kv_bytes": kv_bytes,
            "rows": [{"path": name, "median_s": median_s, "best_s": best_s, "gbps_median": kv_bytes / median_s / 1e9}
                     for name, median_s, best_s in rows]}, indent=2))
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
