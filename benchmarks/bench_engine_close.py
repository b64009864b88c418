"""Closed engines give their memory back: the peak RSS of a four-point pooled sweep against one point.

Each measurement is one `pie bench` process (OPT-125m shape, seeded random weights, a short fixed
workload) with the thread copier (`-O copy_worker=thread`, whose copy thread used to keep every
engine's device KV and host pool alive): one pooled point alone, and `--sweep pool_blocks=...` of
four pooled points in one process. The peak RSS of a process is what its records say
(`peak_host_memory_bytes`, the process's ru_maxrss; the sweep's last point holds the sweep's peak).
The target: the sweep peaks at no more than 1.25x the single point. `--repo DIR` measures another
checkout too (e.g. the commit before engines closed) in the same run, interleaved.

Writes docs/results/engine_close_<machine>.json (or --out). `--quick` runs a tiny version (the
suite's check that the script works), writing to --out or a temporary folder, never docs/results. Run it alone: it measures memory, not time, but a heavy
neighbour still slows it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pie_core.fingerprint import collect_fingerprint  # noqa: E402
from quick_mode import output_path  # noqa: E402

TARGET_RATIO = 1.25


def bench_peak_bytes(repo: Path, args: list[str], results: Path) -> int:
    """The peak RSS of one `pie bench` process run from `repo`, as its records say."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    command = [sys.executable, "-m", "pie_cli.app", "bench", *args, "--results-dir", str(results), "--json"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pie bench failed in {repo}: {done.stderr.strip().splitlines()[-1:]}")
    out = json.loads(done.stdout)
    runs = out.get("runs") or [out]
    return max(int(run["summary"]["peak_host_memory_bytes"]) for run in runs)


def measure(repo: Path, common: list[str], pools: list[int], work: Path) -> dict:
    single = bench_peak_bytes(repo, [*common, "--pool-blocks", str(pools[-1])], work / "single")
    sweep = bench_peak_bytes(repo, [*common, "--sweep", "pool_blocks=" + ",".join(map(str, pools))], work / "sweep")
    return {"one_point_peak_rss_bytes": single, "sweep_peak_rss_bytes": sweep, "ratio": sweep / single}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and workload, seconds long")
    parser.add_argument("--repo", type=Path, action="append", default=[],
                        help="another checkout to measure the same way (repeatable), e.g. before engines closed")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    machine = collect_fingerprint("cpu")
    with tempfile.TemporaryDirectory(prefix="pie-close-") as scratch:
        work = Path(scratch)
        if args.quick:
            common = ["-m", "opt-125m", "--workload", "fixed", "--input-len", "16", "--output-len", "2", "-n", "2",
                      "--device-blocks", "64", "-O", "copy_worker=thread", "--dtype", "float32"]
            pools = [8, 16, 24, 32]
        else:
            common = ["-m", "opt-125m", "--workload", "fixed", "--input-len", "256", "--output-len", "32", "-n", "32",
                      "-O", "copy_worker=thread"]
            pools = [1024, 2048, 3072, 4096]
        repos = [REPO, *args.repo]
        rows: dict[str, list[dict]] = {str(repo): [] for repo in repos}
        for repeat in range(args.repeats):
            for index, repo in enumerate(repos):  # interleaved: each repeat measures every checkout once
                rows[str(repo)].append(measure(repo, common, pools, work / f"{repeat}-{index}"))
    result = {"machine": machine,
              "command": common, "sweep_pool_blocks": pools, "target_ratio": TARGET_RATIO, "quick": args.quick,
              "checkouts": rows}
    mine = rows[str(REPO)]
    result["met"] = all(row["ratio"] <= TARGET_RATIO for row in mine)
    name = str(machine.get("cpu_model", "cpu")).lower().replace(" ", "-").replace("(r)", "")
    out = output_path(args.out, REPO / "docs" / "results" / f"engine_close_{name}.json", args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for repo, measured in rows.items():
        for row in measured:
            print(f"{repo}: one point {row['one_point_peak_rss_bytes'] / 2**30:.2f} GiB, sweep of {len(pools)} "
                  f"{row['sweep_peak_rss_bytes'] / 2**30:.2f} GiB, ratio {row['ratio']:.2f} (target <= {TARGET_RATIO})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
