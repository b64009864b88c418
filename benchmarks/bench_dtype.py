"""`--dtype auto|NAME` for the benchmarks: the same resolution as the CLI's, said once on stderr.

auto is what this machine multiplies natively (pie_core/capability.py: bfloat16 with AVX-512 BF16,
AMX or ARM bf16, float32 on other CPUs); a named dtype the CPU only emulates runs with a warning
that gives the measured matmul rate of each dtype.
"""
from __future__ import annotations

import argparse
import sys

from pie_core.errors import PieError


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto",
                        help="auto (default: what this CPU multiplies natively), bfloat16, float16 or float32")


def resolve_bench_dtype(text: str, parser: argparse.ArgumentParser, device: str = "cpu") -> str:
    """The dtype to benchmark in; bad names and dtypes the device cannot run end the script (exit 2)."""
    from pie_core.capability import resolve_dtype
    from pie_core.device_probe import detect_capability
    from profiler.memory import emulated_dtype_warning

    cap = detect_capability(device)
    try:
        resolution = resolve_dtype(text, cap)
    except PieError as err:
        parser.error(err.one_line())
    if resolution.support == "emulated":
        print(f"warning: {emulated_dtype_warning(resolution.dtype, device, cap)}", file=sys.stderr)
    print(f"{resolution.message()}; {cap.summary()}", file=sys.stderr)
    return resolution.dtype


def parse_args_with_dtype(parser: argparse.ArgumentParser, device: str = "cpu") -> argparse.Namespace:
    """`parser.parse_args()` with `--dtype` added and resolved (args.dtype is then a dtype name)."""
    add_dtype_argument(parser)
    args = parser.parse_args()
    args.dtype = resolve_bench_dtype(args.dtype, parser, device)
    return args
