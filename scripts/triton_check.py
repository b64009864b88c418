"""Check the Triton attention kernels against the engine's PyTorch paths; print the max abs error per dtype.

    TRITON_INTERPRET=1 python scripts/triton_check.py --device cpu     # on a CPU, through Triton's interpreter
    python scripts/triton_check.py --device cuda                       # on a GPU, compiled

Cases (tiny shapes, so the interpreter stays fast): ragged context lengths with partly filled
blocks, padding entries in the block tables (-1, 0 and a huge index), staged blocks (indices at
the top of the cache, as staging slots are), GQA and MHA, block sizes 8 and 16, split and
unsplit decode, and chunked prefill over a paged prefix next to a prefill without one. Every
case runs in fp32, fp16 and bf16. The last line of output is one JSON object:
`{"device", "interpreter", "max_abs_error": {dtype: float}, "tolerance": {dtype: float}, "cases", "passed"}`,
also written to `--out` when given; the exit status is 1 when any error is above its dtype's tolerance.
`--quick`: float32 only, the first decode and the first prefill case.
Left out: timing (gpu_check.py's kernel step measures that).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from runners.engine import triton_attention
from runners.engine.attention import paged_decode_attention_torch, prefill_attention

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


def _table(lens: list[int], block_size: int, num_blocks: int, generator: torch.Generator, staged_from: int) -> torch.Tensor:
    """A fragmented table per sequence; every third sequence's later blocks are 'staged' (top of the cache)."""
    width = max(-(-n // block_size) for n in lens) + 1  # one more column: a padding entry for everyone
    free = torch.randperm(staged_from, generator=generator).tolist()
    staged = list(range(staged_from, num_blocks))
    table = torch.empty(len(lens), width, dtype=torch.int64)
    paddings = (-1, 0, 10**9)
    for row, n in enumerate(lens):
        used = -(-n // block_size)
        for col in range(width):
            if col >= used:
                table[row, col] = paddings[(row + col) % len(paddings)]
            elif row % 3 == 0 and col % 2 == 1 and staged:
                table[row, col] = staged.pop()
            else:
                table[row, col] = free.pop()
    return table


def decode_case(dtype: torch.dtype, device: str, heads: int, kv_heads: int, head_dim: int, block_size: int,
                lens: list[int], splits: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // block_size) for n in lens) + 8
    cache = torch.randn(num_blocks, 2, block_size, kv_heads, head_dim, generator=generator).to(device, dtype)
    table = _table(lens, block_size, num_blocks, generator, staged_from=num_blocks - 6).to(device)
    q = torch.randn(len(lens), heads, head_dim, generator=generator).to(device, dtype)
    context = torch.tensor(lens, dtype=torch.int64, device=device)
    scale = head_dim ** -0.5
    expected = paged_decode_attention_torch(q, cache, table, context, scale)
    got = triton_attention.paged_decode(q, cache, table, context, scale, num_splits=splits)
    return float((got.float() - expected.float()).abs().max())


def prefill_case(dtype: torch.dtype, device: str, heads: int, kv_heads: int, head_dim: int, block_size: int,
                 chunks: list[int], pasts: list[int], seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-p // block_size) for p in pasts) + 8
    cache = torch.randn(num_blocks, 2, block_size, kv_heads, head_dim, generator=generator).to(device, dtype)
    table = _table([max(p, 1) for p in pasts], block_size, num_blocks, generator, staged_from=num_blocks - 6).to(device)
    total = sum(chunks)
    q = torch.randn(total, heads, head_dim, generator=generator).to(device, dtype)
    k = torch.randn(total, kv_heads, head_dim, generator=generator).to(device, dtype)
    v = torch.randn(total, kv_heads, head_dim, generator=generator).to(device, dtype)
    cu = torch.tensor([0, *torch.tensor(chunks).cumsum(0).tolist()], dtype=torch.int64, device=device)
    scale = head_dim ** -0.5
    prefixes = []
    for row, past in enumerate(pasts):  # the reference gathers each prefix, as the model runner's torch path does
        if not past:
            prefixes.append(None)
            continue
        blocks = cache[table[row, :-(-past // block_size)]]
        flat = blocks.transpose(0, 1).reshape(2, -1, kv_heads, head_dim)[:, :past]
        prefixes.append((flat[0], flat[1]))
    expected = prefill_attention(q, k, v, cu, scale, prefixes)
    lens = torch.tensor(pasts, dtype=torch.int64, device=device)
    got = triton_attention.prefill(q, k, v, cu, scale, cache, table, lens)
    plain = triton_attention.prefill(q, k, v, cu, scale)  # no prefix at all: a first chunk everywhere
    error = float((got.float() - expected.float()).abs().max())
    reference = prefill_attention(q, k, v, cu, scale)
    return max(error, float((plain.float() - reference.float()).abs().max()))


CASES = (  # (name, kind, arguments)
    ("decode gqa bs16 ragged", "decode", {"heads": 8, "kv_heads": 2, "head_dim": 32, "block_size": 16,
                                             "lens": [1, 3, 16, 17, 40, 70, 9], "splits": 1}),
    ("decode mha bs8 split", "decode", {"heads": 4, "kv_heads": 4, "head_dim": 16, "block_size": 8,
                                           "lens": [5, 8, 33, 90, 2], "splits": 3}),
    ("decode gqa6 dh40 bs8", "decode", {"heads": 12, "kv_heads": 2, "head_dim": 40, "block_size": 8,
                                           "lens": [12, 65, 1], "splits": 2}),
    ("prefill gqa bs16 prefix", "prefill", {"heads": 8, "kv_heads": 2, "head_dim": 32, "block_size": 16,
                                               "chunks": [5, 70, 1], "pasts": [0, 20, 33]}),
    ("prefill mha bs8 prefix", "prefill", {"heads": 4, "kv_heads": 4, "head_dim": 16, "block_size": 8,
                                              "chunks": [9, 3], "pasts": [16, 0]}),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default=None, help=f"comma-separated (default: {','.join(DTYPES)}; --quick: float32)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument("--quick", action="store_true", help="float32, one decode and one prefill case")
    args = parser.parse_args(argv)
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    if args.device == "cpu" and not interpreter:
        parser.error("on the CPU the kernels run only under TRITON_INTERPRET=1")
    names = (args.dtypes or ("float32" if args.quick else ",".join(DTYPES))).split(",")
    unknown = sorted(set(names) - set(DTYPES))
    if unknown:
        parser.error(f"unknown dtypes {unknown}; choose from {', '.join(DTYPES)}")
    cases = [CASES[0], next(c for c in CASES if c[1] == "prefill")] if args.quick else list(CASES)
    errors: dict[str, float] = {}
    for name in names:
        dtype = DTYPES[name]
        worst = 0.0
        for seed, (case, kind, kwargs) in enumerate(cases):
            run = decode_case if kind == "decode" else prefill_case
            error = run(dtype, args.device, seed=seed, **kwargs)
            print(f"{name:9s} {case:28s} max abs error {error:.3g}", flush=True)
            worst = max(worst, error)
        errors[name] = worst
    passed = all(errors[name] <= TOLERANCE[name] for name in errors)
    summary = json.dumps({"device": args.device, "interpreter": interpreter, "max_abs_error": errors,
                          "tolerance": {name: TOLERANCE[name] for name in errors}, "cases": [c[0] for c in cases],
                          "passed": passed})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summary + "\n")
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
