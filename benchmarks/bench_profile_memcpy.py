"""Check `pie profile`'s memcpy figure against a plain large torch copy timed in the same process.

Runs the same profile as `pie profile --quick --model opt-125m` (CPU), and around it times a plain
`dst.copy_(src)` of the profile's largest link size (256 MiB in quick mode) with
`time.perf_counter`, before and after the profile so drift from other processes shows up on both
sides. Reports profile / plain for the H2D pinned and pageable medians at that size, and writes a
self-describing JSON (machine, commit, command, raw samples) to docs/results/.

Usage: flock /tmp/pie-heavy.lock python benchmarks/bench_profile_memcpy.py [--threads N] [--model opt-125m]
`--quick`: link sizes up to 4 MiB, three copies a side (give a tiny `--model` for seconds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.run import ProfileRequest, run_profile  # noqa: E402
from quick_mode import add_quick_argument, output_path  # noqa: E402


def plain_copy_samples(size_bytes: int, repeats: int) -> list[float]:
    source = torch.empty(size_bytes, dtype=torch.uint8).fill_(1)
    destination = torch.empty_like(source).fill_(0)
    for _ in range(2):
        destination.copy_(source)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        destination.copy_(source)
        samples.append(time.perf_counter() - start)
    return samples


def git_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return result.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--output-dir", type=Path, default=None, help="default docs/results")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    output_dir = output_path(args.output_dir, ROOT / "docs" / "results", args.quick)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    request = ProfileRequest(device="cpu", model=args.model, quick=True, threads=args.threads,
                             max_size_bytes=4 * 2**20 if args.quick else None)
    size = max(request.link_sweep()[0].sizes_bytes)
    before = plain_copy_samples(size, args.repeats)
    profile = run_profile(request)
    profile_s = time.perf_counter() - started
    after = plain_copy_samples(size, args.repeats)

    plain_gbps = size / statistics.median(before + after) / 1e9
    at_size = {(s.direction, s.host_memory): s for s in profile.link if s.size_bytes == size}
    result = {
        "benchmark": "bench_profile_memcpy",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "command": " ".join(["python", "benchmarks/bench_profile_memcpy.py", *sys.argv[1:]]),
        "fingerprint": profile.fingerprint,
        "threads": torch.get_num_threads(),
        "size_bytes": size,
        "plain_copy_gbps_median": plain_gbps,
        "plain_copy_gbps_before": size / statistics.median(before) / 1e9,
        "plain_copy_gbps_after": size / statistics.median(after) / 1e9,
        "profile_h2d_pinned_gbps": at_size[("h2d", "pinned")].median_gbps,
        "profile_h2d_pageable_gbps": at_size[("h2d", "pageable")].median_gbps,
        "ratio_h2d_pinned_to_plain": at_size[("h2d", "pinned")].median_gbps / plain_gbps,
        "ratio_h2d_pageable_to_plain": at_size[("h2d", "pageable")].median_gbps / plain_gbps,
        "profile_memory_bandwidth_gbps_read_plus_write": profile.memory_bandwidth_gbps,
        "profile_wall_s": profile_s,
        "profile_peak_rss_bytes": profile.extra["peak_rss_bytes"],
        "decode_fit_median_rel_error": profile.decode_fit.median_rel_error if profile.decode_fit else None,
        "decode_fit_max_rel_error": profile.decode_fit.max_rel_error if profile.decode_fit else None,
        "plain_copy_samples_s": {"before": before, "after": after},
        "profile_samples_s": {f"{d}_{k}": list(s.samples_s) for (d, k), s in at_size.items()},
        "within_15_percent": abs(at_size[("h2d", "pageable")].median_gbps / plain_gbps - 1) <= 0.15,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = output_dir / f"profile_memcpy_{Path(args.model).name}_{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("samples_s") and k != "fingerprint"}, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
