"""Where a decode step's time goes on this CPU: GEMMs, paged attention, lm_head and argmax, as the engine runs them.

One decode step of `--batch` sequences over OPT-125m-shaped layers (default: 96 sequences, contexts of
`--context` tokens, 12 layers with weights of their own, prepacked as the engine prepacks them, and a tied
50,272 x 768 lm_head), the KV cache allocated as the engine allocates it (2 MiB pages) with scattered
blocks, each layer reading its own KV, so nothing is served from cache that a real step would read from
memory. Per layer: the q/k/v GEMM, attention, the out, fc1 (+ReLU) and fc2 GEMMs; then the lm_head and
the greedy argmax. Each round times every entry point of the engine's C library for bf16 decode attention
(`paged_decode_bf16`, which takes the AVX512-BF16 head-by-head path where it applies, and
`paged_decode_bf16_generic`, the token-by-token path every other build runs), each GEMM layout the
engine can run here (oneDNN-prepacked, and the engine's AMX GEMM where AMX is in effect: the same weights
in each layout), and both argmaxes (the C library's and PyTorch's `max(dim=-1)`), interleaved, medians
over `--repeats` rounds; where AMX is in effect, also a step whose lm_head keeps greedy's argmax in its
epilogue instead of writing the logits (`Linear.greedy_tokens`, checked against the C argmax of the
logits), in a step of its own each round. Beside the step, the
prefill attention of one layer for `--prefill-seqs` prompts of `--prefill-len` tokens (the step's prefill,
16 x 128 tokens by default) both ways `attention.prefill_attention` can take: PyTorch's flash attention
(bf16 prompts without a prefix) and the explicit fp32 path (prefixed or fp32 prompts).
Run it alone: `flock /tmp/pie-heavy.lock python benchmarks/bench_decode_step.py`. `--quick`: tiny sizes.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quick_mode import add_quick_argument, output_path
from runners.engine.kernels import resolve_kernels
from pie_core.fingerprint import collect_fingerprint
from runners.engine import attention as engine_attention
from runners.engine import c_kernels, host_memory
from runners.engine.models.linear import Linear
from runners.engine.sampler import greedy_tokens

ATTENTION = ("paged_decode_bf16", "paged_decode_bf16_generic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--context", type=int, default=192, help="tokens of context per sequence")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--prefill-seqs", type=int, default=16)
    parser.add_argument("--prefill-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the medians as JSON here (default: print only)")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.context, args.layers, args.hidden, args.heads, args.ffn, args.vocab, args.repeats = \
            4, 40, 2, 64, 2, 128, 512, 2  # a vocabulary on the AMX tiles, so the fused lm_head runs too
        args.prefill_seqs, args.prefill_len = 2, 16
    for name in ("batch", "context", "layers", "hidden", "heads", "ffn", "vocab", "block_size", "repeats", "prefill_seqs",
                 "prefill_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    library = c_kernels.load()
    if library is None:
        sys.exit(f"error: {c_kernels.load_error()}; this benchmark times the C library's kernels (install a C compiler)")
    torch.manual_seed(args.seed)
    batch, hidden, heads, head_dim, bs = args.batch, args.hidden, args.heads, args.hidden // args.heads, args.block_size
    blocks_per_seq = -(-args.context // bs)
    total_blocks = batch * blocks_per_seq * args.layers
    cache = host_memory.zeros((total_blocks, 2, bs, heads, head_dim), torch.bfloat16)
    for start in range(0, total_blocks, 4096):  # filled in slices: no full-size fp32 copy
        cache[start:start + 4096].normal_()
    order = list(range(total_blocks))
    random.Random(args.seed).shuffle(order)
    per_layer = batch * blocks_per_seq
    tables = [torch.tensor(order[layer * per_layer:(layer + 1) * per_layer]).view(batch, blocks_per_seq)
              for layer in range(args.layers)]
    lens = torch.tensor([args.context - (row % bs) for row in range(batch)], dtype=torch.int64)

    # GEMM layouts: oneDNN's, and the AMX GEMM's where this machine's engine would run it (same weights in each)
    layouts = {"onednn": True, **({"amx": "amx"} if resolve_kernels("cpu", "bfloat16").linear == "amx" else {})}

    def linear(rows: int, cols: int, bias: bool = True) -> dict[str, Linear]:
        weight = torch.randn(rows, cols, dtype=torch.bfloat16) * 0.02
        zeros = torch.zeros(rows, dtype=torch.bfloat16) if bias else None
        return {name: Linear(weight, zeros, prepack=prepack) for name, prepack in layouts.items()}

    layers = [(linear(3 * hidden, hidden), linear(hidden, hidden), linear(args.ffn, hidden), linear(hidden, args.ffn))
              for _ in range(args.layers)]
    lm_head = linear(args.vocab, hidden, bias=False)
    x = torch.randn(batch, hidden, dtype=torch.bfloat16)
    out = torch.empty(batch, heads, head_dim, dtype=torch.bfloat16)
    kv_bytes = int(lens.sum()) * args.layers * 2 * hidden * 2

    def step(entry: str, layout: str, times: dict[str, list[float]], fused: bool = False) -> None:
        attention = getattr(library, entry)
        gemm = attend = 0.0
        for layer, gemms in enumerate(layers):
            qkv, proj, fc1, fc2 = (g[layout] for g in gemms)
            began = time.perf_counter()
            qkv_out = qkv(x)
            q = qkv_out[:, :hidden]  # read in place, at the fused rows' stride, as the engine does
            middle = time.perf_counter()
            attention(q.data_ptr(), cache.data_ptr(), tables[layer].data_ptr(), lens.data_ptr(), out.data_ptr(), batch,
                      heads, heads, head_dim, bs, blocks_per_seq, total_blocks, args.context, head_dim ** -0.5, 1,
                      qkv_out.stride(0))
            after = time.perf_counter()
            fc2(fc1(proj(out.view(batch, hidden)), relu=True))
            gemm += middle - began + time.perf_counter() - after
            attend += after - middle
        if fused:  # the AMX lm_head keeping greedy's argmax in its epilogue, after the same layers as the others
            began = time.perf_counter()
            tokens = lm_head[layout].greedy_tokens(x)
            times[f"lm_head+argmax:{layout} fused"].append(time.perf_counter() - began)
            assert tokens == greedy_tokens(lm_head[layout](x), c_kernels.default_variant()), "fused argmax disagrees"
            return
        began = time.perf_counter()
        logits = lm_head[layout](x)
        middle = time.perf_counter()
        c_tokens = greedy_tokens(logits, c_kernels.default_variant())
        after = time.perf_counter()
        torch_tokens = greedy_tokens(logits, None)
        done = time.perf_counter()
        assert c_tokens == torch_tokens, "the C argmax and PyTorch's disagree"
        for key, seconds in ((f"gemm:{layout}", gemm), (f"attention:{entry}", attend), (f"lm_head:{layout}", middle - began),
                             ("argmax:c", after - middle), ("argmax:torch", done - after),
                             (f"lm_head+argmax:{layout}", after - began)):
            times[key].append(seconds)

    prompt = torch.randn(args.prefill_seqs * args.prefill_len, 3, heads, head_dim).to(torch.bfloat16).unbind(1)
    bounds = [index * args.prefill_len for index in range(args.prefill_seqs + 1)]

    def prefill(times: dict[str, list[float]]) -> None:
        for path, dtypes in (("flash", engine_attention._SDPA_DTYPES), ("explicit", ())):
            saved, engine_attention._SDPA_DTYPES = engine_attention._SDPA_DTYPES, dtypes
            try:
                began = time.perf_counter()
                engine_attention.prefill_attention(*prompt, bounds, head_dim ** -0.5)
                times[f"prefill_attention:{path}"].append(time.perf_counter() - began)
            finally:
                engine_attention._SDPA_DTYPES = saved

    print(f"batch {batch}, context {args.context}, {args.layers} layers, KV read {kv_bytes / 1e6:.0f} MB per step, "
          f"threads {torch.get_num_threads()}, C build {c_kernels.default_variant()}, GEMMs {', '.join(layouts)}",
          file=sys.stderr)
    times: dict[str, list[float]] = defaultdict(list)
    for entry in ATTENTION:  # warm-up: page faults, primitive creation
        for layout in layouts:
            step(entry, layout, defaultdict(list))
    prefill(defaultdict(list))
    for round_index in range(args.repeats):
        for entry in (ATTENTION if round_index % 2 else ATTENTION[::-1]):
            for layout in (list(layouts) if round_index % 2 else list(layouts)[::-1]):
                step(entry, layout, times)
        if "amx" in layouts and lm_head["amx"].amx is not None:  # (a vocabulary off the tiles stays on oneDNN)
            # the fused lm_head in a step of its own: a step just before it would leave the lm_head's weights in L3
            step(ATTENTION[0], "amx", times, fused=True)
        prefill(times)
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"{'part':<40} {'median ms':>10}")
    for key, seconds in medians.items():
        extra = f"  ({kv_bytes / seconds / 1e9:.1f} GB/s of KV)" if key.startswith("attention") else ""
        print(f"{key:<40} {seconds * 1e3:>10.2f}{extra}")
    if args.out or args.quick:
        path = output_path(args.out, Path("decode_step.json"), args.quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "benchmark": "decode_step", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": collect_fingerprint("cpu"), "args": {k: str(v) for k, v in vars(args).items()},
            "threads": torch.get_num_threads(), "c_variant": c_kernels.default_variant(), "gemm_layouts": list(layouts),
            "kv_bytes_per_step": kv_bytes,
            "prefill": {"sequences": args.prefill_seqs, "tokens_each": args.prefill_len},
            "median_s": medians, "rounds_s": dict(times)}, indent=2))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
