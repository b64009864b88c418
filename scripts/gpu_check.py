"""One short run of everything pie's CUDA paths need measured, sized to a GPU machine lent for minutes.

    python scripts/gpu_check.py OUT_DIR --wheels WHEEL_DIR [--steps a,b] [--dry-run | --rehearse]

A lent GPU comes for 15 minutes in all, start-up included, and a start costs minutes; so the step
limits (`STEPS`) add up to `TOTAL_BUDGET_S`, at most 6 minutes, and a failed first run can be run
again within the same lease. Each step runs in its own child process under its limit (cut to what
is left of the total), writes OUT_DIR/steps/NAME.json as it measures (a step killed by its limit
keeps what it had), and OUT_DIR/gpu_check.json is rewritten after every step. Everything a step
prints, pytest's output among it, goes to OUT_DIR/gpu_check.log as it happens.

- `install`: the modules pie needs that this Python lacks (`REQUIRED`; the machines described to us
  lack PuLP), installed from the wheel folder with `pip install --no-index` (gpu_check.sh's header
  gives the `pip download` line that makes the folder);
- `environment`: versions, the GPU, and the kernels the engine resolves for the two geometries below
  (the Triton start-up trial compiles every variant here, so the later steps' processes find them
  in Triton's cache), with the number of compiled variants;
- `gpu_tests`: the suite's `gpu`-marked tests, output streamed test by test;
- `profile`: `pie profile --device cuda --quick --model opt-1.3b`: link bandwidth pinned and pageable,
  host-to-device, device-to-host and both at once, HBM bandwidth, the layer grid;
- `kernels`: decode attention's read rate as a fraction of the profiled HBM bandwidth for MHA fp16
  head_dim 64 (OPT-1.3b) and GQA bf16 head_dim 128 (Llama-3-8B), Triton over PyTorch for decode and
  prefill, and that no kernel compiled inside the timed calls;
- `correctness`: greedy tokens of the engine equal transformers' on the GPU (tiny OPT and GQA Llama,
  fp32; pool off, copy stream, rebuild 0.5);
- `transparency`: OPT-1.3b shape, random fp16 weights, a full batch with 0, 1, 2, 5, 10 and 25 % of its
  KV pooled: throughput against pool-off, stall, streamed GB/s, the knee;
- `plan_and_bench`: `pie tune --profile` on that profile, then `pie bench --plan`: predicted and
  measured output throughput.

`--dry-run` (the suite, on a CPU): parses, says what `install` would run, runs `environment` and the
`pie tune` half of `plan_and_bench` (on the built-in `h100-pcie` sheet), records the GPU steps as skipped
with their limits, and writes the JSON and log. `--rehearse` (the suite, slow, on a CPU) runs every step's
code as the GPU run would, on the CPU at small sizes (OPT-125m, a batch of 4, Triton under its
interpreter; each step gets `REHEARSAL_SLOWDOWN` times its limit), so a step that would crash on the GPU
machine crashes here first; its figures mean nothing.
Left out: multi-GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
from gpu_check_steps import BATCH, MODEL, REHEARSAL, STEP_FUNCTIONS, env  # noqa: E402 - beside this script

REHEARSAL_SLOWDOWN = 4  # a rehearsal's steps get 4x their limits: a 2-core CPU under Triton's interpreter
TOTAL_BUDGET_S = 360  # at most 6 minutes: two starts and two runs fit in a 15-minute lease
STEPS = {  # name: (limit in seconds, needs a GPU)
    "install": (25, False), "environment": (25, False), "gpu_tests": (50, True), "profile": (55, True),
    "kernels": (35, True), "correctness": (35, True), "transparency": (70, True), "plan_and_bench": (60, False),
}
assert sum(limit for limit, _ in STEPS.values()) <= TOTAL_BUDGET_S
# module -> distribution: what pie and its tests import (torch and Triton must be there already).
REQUIRED = {"pulp": "pulp", "pytest_timeout": "pytest-timeout", "typer": "typer", "rich": "rich", "pandas": "pandas",
            "numpy": "numpy", "scipy": "scipy", "matplotlib": "matplotlib", "aiohttp": "aiohttp",
            "transformers": "transformers", "safetensors": "safetensors", "pytest": "pytest"}


def step_install(out: Path, dry: bool, wheels: Path, limit_s: float) -> dict:
    missing = sorted(REQUIRED[name] for name in REQUIRED if importlib.util.find_spec(name) is None)
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *missing]
    if dry or not missing:
        print(f"{'dry run / rehearsal: ' if dry else ''}missing here: {missing or 'nothing'}; would run: {' '.join(command)}", flush=True)
        return {"missing": missing, "installed": False, "command": " ".join(command)}
    done = subprocess.run(command, check=False, timeout=limit_s - 3)
    still = sorted(REQUIRED[name] for name in REQUIRED if importlib.util.find_spec(name) is None)
    if done.returncode != 0 or still:
        raise RuntimeError(f"pip exited {done.returncode}; still missing {still} (is the wheel folder for this Python?)")
    return {"missing": missing, "installed": True, "command": " ".join(command)}


def run_step(name: str, out: Path, dry: bool, wheels: Path, limit_s: float) -> None:
    """Child process: run one step within `limit_s`; it and `record` write OUT/steps/NAME.json."""
    began = time.perf_counter()
    path = out / "steps" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)

    def record(result: dict, status: str = "partial") -> None:
        path.write_text(json.dumps({"status": status, "seconds": time.perf_counter() - began, "result": result},
                                   indent=2, default=str))

    if name == "install":
        result = step_install(out, dry or REHEARSAL, wheels, limit_s)
    else:
        result = STEP_FUNCTIONS[name](out, dry, record, limit_s)
    record(result, "ok")


def _stored(out: Path, name: str) -> dict:
    path = out / "steps" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--wheels", type=Path, default=None, help="folder of wheels for what this Python lacks")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: parse, find the steps, run the CPU ones")
    parser.add_argument("--rehearse", action="store_true", help="no GPU: every step's code on the CPU at small sizes")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--limit-s", type=float, help=argparse.SUPPRESS)  # internal: that step's time limit
    args = parser.parse_args(argv)
    chosen = args.steps.split(",")
    unknown = [name for name in chosen if name not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; expected some of {', '.join(STEPS)}")
    if "install" in chosen and (args.wheels is None or not args.wheels.is_dir()):
        parser.error(f"--wheels must be an existing folder for the install step, got {args.wheels}")
    if args.dry_run and args.rehearse:
        parser.error("--dry-run and --rehearse exclude each other")
    if args.rehearse:  # read by gpu_check_steps in the children, before Triton is imported there
        os.environ.update(PIE_GPU_CHECK_REHEARSAL="1", TRITON_INTERPRET="1")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step:
        run_step(args.step, args.out, args.dry_run, args.wheels, args.limit_s or STEPS[args.step][0])
        return 0
    began = time.monotonic()
    deadline = began + TOTAL_BUDGET_S * (REHEARSAL_SLOWDOWN if args.rehearse else 1)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
              "rehearsal": args.rehearse,
              "total_budget_s": sum(STEPS[name][0] for name in chosen),
              "step_limits_s": {name: STEPS[name][0] for name in chosen}, "model": MODEL, "batch": BATCH, "steps": {}}
    for name in chosen:  # results of an earlier run in this folder must not pass for this one's
        (args.out / "steps" / f"{name}.json").unlink(missing_ok=True)
    with (args.out / "gpu_check.log").open("a") as log:
        for name in chosen:
            limit, needs_gpu = STEPS[name]
            left = deadline - time.monotonic()
            if args.dry_run and needs_gpu:
                entry = {"status": "skipped", "why": "dry run (needs a GPU)", "limit_s": limit}
            elif left < 5:
                entry = {"status": "skipped", "why": f"total budget spent ({TOTAL_BUDGET_S} s)", "limit_s": limit}
            else:
                timeout = REHEARSAL_SLOWDOWN * limit if args.rehearse else min(limit, left)
                command = [sys.executable, __file__, str(args.out), "--step", name, "--steps", name,
                           "--limit-s", f"{timeout:.0f}"]
                command += ["--wheels", str(args.wheels)] if args.wheels else []
                command += ["--dry-run"] if args.dry_run else []
                print(f"== {name} (limit {timeout:.0f} s)", file=log, flush=True)
                step_began = time.monotonic()
                try:
                    done = subprocess.run(command, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                          timeout=timeout, check=False)
                    entry = _stored(args.out, name)
                    if done.returncode != 0 or entry.get("status") != "ok":
                        entry = {**entry, "status": "failed", "exit_code": done.returncode, "why": "see gpu_check.log"}
                except subprocess.TimeoutExpired:
                    entry = {**_stored(args.out, name), "status": "timeout", "why": "what it measured before is kept"}
                entry.update(limit_s=limit, wall_s=time.monotonic() - step_began)
            print(f"{name}: {entry['status']}", file=sys.stderr, flush=True)
            report["steps"][name] = entry
            report["wall_s"] = time.monotonic() - began
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    failed = [name for name, entry in report["steps"].items() if entry["status"] in ("failed", "timeout")]
    print(f"wrote {args.out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
