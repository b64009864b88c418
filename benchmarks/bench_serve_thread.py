"""Which thread steps the engine: the one that made the process's first parallel torch call, or a second one.

Why it matters: `pie serve` runs HTTP and the engine in one process. PyTorch's OpenMP keeps a thread team
per thread that calls into it; a second team makes the process manage more OpenMP threads than it has
cores, and libgomp then stops spinning at its barriers. This measures the engine (OPT-125m shape, seeded
random weights, `--dtype`, N requests of fixed lengths, all at once) in three fresh processes each:

- `same`: the engine built and stepped on the main thread, which also made the first parallel call
  (what `pie serve` does: runners/serve/server.py `run_server`);
- `second`: a parallel op on the main thread first (as the resolve step's probes do), then the engine
  built and stepped on a second thread (what `pie serve` did before);
- `second-clean`: the engine built and stepped on a second thread, with no parallel op on the main thread.

Modes run interleaved for `--repeats` rounds; the JSON (docs/results/serve_thread_<machine>.json, or
--out) holds every run's output tok/s and cores busy (process CPU time over wall time) and the medians.
`--quick`: a tiny workload, one round. Run it alone (`flock /tmp/pie-heavy.lock ...`): it measures time.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dtype import add_dtype_argument, resolve_bench_dtype  # noqa: E402
from benchmarks.quick_mode import RESULTS, add_quick_argument, output_path  # noqa: E402

MODES = ("same", "second", "second-clean")


def child(mode: str, dtype: str, num_requests: int, input_len: int, output_len: int) -> dict:
    """One measurement in this (fresh) process: an untimed round, then a timed one."""
    import torch

    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    if mode == "second":
        torch.randn(256, 256).matmul(torch.randn(256, 256)).sum()  # a parallel op on the main thread
    result: dict = {}

    def body() -> None:
        config = EngineConfig(model="opt-125m", random_weights=True, dtype=dtype, device="cpu", seed=0,
                              num_device_blocks=max(64, num_requests * ((input_len + output_len) // 16 + 2)))
        with LLMEngine(config) as engine:
            for round_ in ("warm-up", "timed"):
                for index in range(num_requests):
                    prompt = [4 + (7 * index + j) % 1000 for j in range(input_len)]
                    engine.add_request(f"{round_}-{index}", prompt, SamplingParams(max_tokens=output_len, ignore_eos=True))
                began, cpu = time.perf_counter(), time.process_time()
                while engine.has_unfinished_requests():
                    engine.step()
                wall = time.perf_counter() - began
                result.update(output_tok_s=num_requests * output_len / wall, cores_busy=(time.process_time() - cpu) / wall,
                              wall_s=wall, threads=torch.get_num_threads())

    if mode == "same":
        body()
    else:
        thread = threading.Thread(target=body, name="engine")
        thread.start()
        thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_quick_argument(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    add_dtype_argument(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dtype, args.num_requests, args.input_len, args.output_len)))
        return
    if args.repeats < 1 or min(args.num_requests, args.input_len, args.output_len) < 1:
        parser.error("--repeats, --num-requests, --input-len and --output-len must be at least 1")
    args.dtype = resolve_bench_dtype(args.dtype, parser)
    if args.quick:
        args.repeats, args.num_requests, args.input_len, args.output_len = 1, 4, 16, 8
    from pie_core.fingerprint import collect_fingerprint

    machine = collect_fingerprint("cpu")
    runs: list[dict] = []
    for repeat in range(args.repeats):
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            command = [sys.executable, __file__, "--child", mode, "--dtype", args.dtype, "--num-requests", str(args.num_requests),
                       "--input-len", str(args.input_len), "--output-len", str(args.output_len)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode != 0:
                raise SystemExit(f"error: the {mode} run failed: {done.stderr.strip().splitlines()[-1:]}")
            run = {"mode": mode, "repeat": repeat, **json.loads(done.stdout.strip().splitlines()[-1])}
            runs.append(run)
            print(f"round {repeat} {mode:13s} {run['output_tok_s']:8.1f} tok/s  {run['cores_busy']:.2f} cores busy", file=sys.stderr)
    medians = {mode: {key: statistics.median(r[key] for r in runs if r["mode"] == mode) for key in ("output_tok_s", "cores_busy")}
               for mode in MODES}
    result = {"benchmark": "bench_serve_thread", "machine": machine, "quick": args.quick, "dtype": args.dtype,
              "workload": {"model": "opt-125m (seeded random weights)", "num_requests": args.num_requests,
                           "input_len": args.input_len, "output_len": args.output_len, "arrivals": "all at once"},
              "repeats": args.repeats, "runs": runs, "medians": medians,
              "second_over_same": medians["second"]["output_tok_s"] / medians["same"]["output_tok_s"],
              "second_clean_over_same": medians["second-clean"]["output_tok_s"] / medians["same"]["output_tok_s"]}
    slug = "-".join(re.sub(r"[^a-z0-9 ]", "", re.sub(r"\(r\)|\(tm\)", "", machine["cpu_model"].lower())).split()[:3])
    out = output_path(args.out, RESULTS / f"serve_thread_{slug}.json", args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"second thread after a parallel op on main: {result['second_over_same']:.2f}x; second thread, clean main: "
          f"{result['second_clean_over_same']:.2f}x the tok/s of the main thread; wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
