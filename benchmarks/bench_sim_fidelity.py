"""Simulator fidelity on this machine: `--runner sim` against the real Pie engine, same workloads, same run.

1. Calibration (a workload distinct from the cases): 40 requests (uniform 80/40 tokens +-80%)
   all at once on the real engine, three times: no pool with 1024 device blocks (full batches) and
   with 24 (small batches, preemptions), and 64 device and 96 pool blocks (it pools and preempts);
   each replayed iteration by iteration through the simulator (runners/sim_calibration.py). The
   two runs without a pool give the engine's layer scales against the profiled single layer and its
   per-iteration overhead; the pooled run, priced with those, its pooled-copy rate. They are written
   into a copy of the profile (`engine_overhead`) that the cases' simulations read.
2. Cases: three workloads (all at once; Poisson near saturation, at SATURATION_SHARE of the
   first case's measured request throughput; a device budget tight enough that requests
   preempt, or pool), each with the pool off and on, on `--runner pie` (measured) and on
   `--runner sim --profile CALIBRATED` (and, for comparison, the uncalibrated profile), all
   through `runners.bench.run_bench`, so every run is an ordinary record in the results store.
The machine is shared, so (calibration, six cases) is run `--rounds` times; every metric's
relative error (sim / measured - 1) is kept per round, and its median over rounds is judged
against the targets: output throughput within 10%, median TTFT and median TPOT within 15%.
Writes docs/results/sim_fidelity_<machine>.json.

The profile must describe this machine: without `--profile` one is taken now (and saved beside
the results); a given profile whose fingerprint names another CPU (model, family, stepping,
cores or capability record) is refused, since its coefficients price that machine.

Run: flock /tmp/pie-bench.lock python benchmarks/bench_sim_fidelity.py [--profile PROFILE.json]
`--quick`: one round of short requests, a few per case (QUICK_SCALE), on `--model` (a quick profile of it
when none is given); never judged.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from pie_core.fingerprint import cpu_model
from profiler.hardware_profile import EngineOverhead, HardwareProfile
from results.store import ResultsStore
from runners.arrivals import ArrivalSpec
from runners.base import RunnerSpec
from runners.bench import BenchSettings, run_bench
from runners.sim_calibration import check_aligned, fit_calibration, replay, step_errors
from runners.sim_runner import sim_target
from runners.workloads import WorkloadSpec, load_workload
from quick_mode import add_quick_argument, output_path

METRICS = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "mean_ttft_ms", "mean_tpot_ms", "p99_ttft_ms",
           "p99_tpot_ms", "median_itl_ms", "median_e2el_ms", "request_throughput")
TARGETS = {"output_throughput": 0.10, "median_ttft_ms": 0.15, "median_tpot_ms": 0.15}
MODEL, DTYPE = "opt-125m", "bfloat16"
# Poisson rate as a share of the measured all-at-once request throughput. Near saturation, queueing
# amplifies a service-rate error by 1 / (1 - load): at 0.8 a 5% error moves waiting times ~25%.
SATURATION_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big a run is: the model, the cases' mean lengths and counts, and the calibration workload."""

    model: str = MODEL
    input_len: int = 128  # the cases' mean prompt, uniform within +-50 %
    output_len: int = 64
    num_prompts: tuple[int, int] = (48, 32)  # the all-at-once and Poisson cases, the tight-device cases
    calibration: tuple[int, int, int] = (40, 80, 40)  # prompts, mean prompt and output lengths (+-80 %)


QUICK_SCALE = Scale(input_len=24, output_len=8, num_prompts=(8, 6), calibration=(12, 24, 8))


def machine_name() -> str:
    import torch

    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


def workload(num_prompts: int, scale: Scale, seed: int = 0) -> WorkloadSpec:
    return WorkloadSpec(name="uniform", model=scale.model, num_prompts=num_prompts, seed=seed, input_len=scale.input_len,
                        output_len=scale.output_len, range_ratio=0.5)


def calibrate(profile_path: Path, out_path: Path, scale: Scale) -> dict:
    """Measure the calibration workload on the engine without a pool (roomy and tight device) and with one, replay
    each, fit the overhead (runners/sim_calibration.py), write the calibrated profile."""
    import numpy as np

    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    runs = {"no pool": {"max_num_seqs": 16, "num_device_blocks": 1024},
            "no pool, tight device": {"max_num_seqs": 16, "num_device_blocks": 24},
            "pooled": {"max_num_seqs": 16, "num_device_blocks": 64, "num_pool_blocks": 96}}
    num_prompts, input_len, output_len = scale.calibration
    spec = WorkloadSpec(name="uniform", model=scale.model, num_prompts=num_prompts, seed=7, input_len=input_len,
                        output_len=output_len, range_ratio=0.8)
    requests, _ = load_workload(spec)

    def target(options: dict, profile: Path):
        return sim_target(RunnerSpec(model=scale.model, dtype=DTYPE, options={**options, "profile": str(profile)}))

    targets = {name: target(options, profile_path) for name, options in runs.items()}  # the profile read once each

    def measure(name: str) -> tuple[list, object]:
        options = runs[name]
        with LLMEngine(EngineConfig(model=scale.model, dtype=DTYPE, **options)) as engine:
            engine.generate([list(requests[0].prompt_token_ids)] * 2, SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
            first = len(engine.stats)
            engine.generate([list(r.prompt_token_ids) for r in requests],
                            [SamplingParams(max_tokens=r.output_len, ignore_eos=True) for r in requests])
            measured = engine.stats[first:]
        replayed = replay(targets[name], requests)
        if not check_aligned(measured, replayed.stats):
            raise SystemExit("calibration: the replay did not schedule the engine's batches; the scheduler is not deterministic")
        return measured, replayed

    measured = {name: measure(name) for name in runs}
    overhead = fit_calibration([measured["no pool"], measured["no pool, tight device"]], targets["no pool"].hardware,
                               pooled=measured["pooled"])
    profile = HardwareProfile.load(profile_path)
    calibrated = dataclasses.replace(profile, engine_overhead=EngineOverhead.from_dict(overhead))
    calibrated.save(out_path)
    report: dict = {"workload": dataclasses.asdict(spec), "runs": runs, "overhead": overhead, "calibrated_profile": str(out_path)}
    for name, options in runs.items():
        stats, replayed = measured[name]
        after = replay(target(options, out_path), requests, with_overhead=True).stats
        report[name] = {"num_steps": len(stats), "measured_wall_s": sum(s.wall_s for s in stats),
                        "median_decode_step_ms": 1e3 * float(np.median([s.wall_s for s in stats if s.num_prefill_tokens == 0])),
                        "steps_before": step_errors(stats, replayed.stats), "steps_after": step_errors(stats, after)}
    return report


def cases(saturation_rate: float | None, scale: Scale) -> list[tuple[str, dict, float, int]]:
    """(name, runner options, request rate, prompts); the Poisson rate comes from the first case's measurement."""
    rate = saturation_rate or 1.0
    many, few = scale.num_prompts
    ample, pooled = {"num_device_blocks": 1024}, {"num_device_blocks": 96, "num_pool_blocks": 128}
    tight_off, tight_on = {"num_device_blocks": 40}, {"num_device_blocks": 40, "num_pool_blocks": 96}
    return [("all at once, pool off", ample, math.inf, many), ("all at once, pool on", pooled, math.inf, many),
            ("poisson near saturation, pool off", ample, rate, many), ("poisson near saturation, pool on", pooled, rate, many),
            ("tight device, pool off", tight_off, math.inf, few), ("tight device, pool on", tight_on, math.inf, few)]


def run_case(store: ResultsStore, runner: str, options: dict, rate: float, num_prompts: int, profile: Path,
             scale: Scale) -> dict:
    options = {**options, "max_num_seqs": 16, **({"profile": str(profile)} if runner == "sim" else {})}
    settings = BenchSettings(model=scale.model, workload=workload(num_prompts, scale), runner=runner, dtype=DTYPE, device="cpu",
                             runner_options=options, arrivals=ArrivalSpec(request_rate=rate, seed=0), label="sim-fidelity")
    began = time.perf_counter()
    outcome = run_bench(settings, store)
    keep = ("num_steps", "compute_s", "stall_s", "num_preemptions", "peak_pool_blocks_used", "mean_batch_size", "h2d_bytes")
    return {"run_id": outcome.run_id, "wall_s": time.perf_counter() - began,
            "metrics": {k: outcome.summary.get(k) for k in METRICS},
            "telemetry": {k: outcome.telemetry.get(k) for k in keep}, "load_avg_1m": os.getloadavg()[0]}


def errors_of(sim: dict, measured: dict) -> dict[str, float]:
    return {k: sim["metrics"][k] / measured["metrics"][k] - 1 for k in METRICS if measured["metrics"].get(k)}


def median_errors(per_round: list[dict[str, float]]) -> dict[str, float]:
    import numpy as np

    return {k: float(np.median([e[k] for e in per_round])) for k in per_round[0]}


CPU_KEYS = ("cpu_model", "cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping", "cpu_cores")


def differing_cpu(recorded: dict, here: dict) -> list[str]:
    """The CPU fields in which a profile's fingerprint differs from this machine's (fields both record)."""
    keys = [key for key in CPU_KEYS if recorded.get(key) is not None and here.get(key) is not None]
    differing = [f"{key} {recorded[key]!r} != {here[key]!r}" for key in keys if recorded[key] != here[key]]
    if (recorded.get("capability") or {}) != (here.get("capability") or {}) and recorded.get("capability"):
        differing.append("capability record")
    return differing


def this_machines_profile(given: Path | None, fresh_path: Path, model: str = MODEL, quick: bool = False) -> Path:
    """`given` when it was measured on this CPU (else exit naming the difference); without one, a fresh profile of
    `model` (`quick`: `pie profile --quick`'s grid and link sizes up to 4 MiB)."""
    from pie_core.fingerprint import collect_fingerprint

    here = collect_fingerprint("cpu")
    if given is not None:
        differing = differing_cpu(HardwareProfile.load(given).fingerprint or {}, here)
        if differing:
            raise SystemExit(f"{given} was measured on another CPU ({'; '.join(differing)}); its coefficients describe "
                             "that machine. Leave out --profile to take one of this machine now.")
        return given
    from profiler.run import ProfileRequest, run_profile

    print(f"profiling this machine for {model} ({DTYPE}) ...", flush=True)
    profile = run_profile(ProfileRequest(device="cpu", dtype=DTYPE, model=model, quick=quick,
                                         max_size_bytes=4 * 2**20 if quick else None))
    fresh_path.parent.mkdir(parents=True, exist_ok=True)
    return profile.save(fresh_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=None,
                        help="a `pie profile` of this machine for opt-125m (bfloat16); default: take one now. "
                             "A profile of another CPU is refused: its coefficients describe that machine")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (calibration, every case); errors are the median")
    parser.add_argument("--results-dir", type=Path, default=None, help="default .pie/results (--quick: beside --out)")
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/sim_fidelity_<machine>.json")
    parser.add_argument("--model", default=MODEL, help="registry name (random weights) or local model directory")
    add_quick_argument(parser)
    args = parser.parse_args()
    import torch

    scale = dataclasses.replace(QUICK_SCALE if args.quick else Scale(), model=args.model)
    if args.quick:
        args.rounds = 1
    slug = "-".join((*cpu_model().lower().split()[:2], torch.backends.cpu.get_cpu_capability().lower()))
    out = output_path(args.out, Path(f"docs/results/sim_fidelity_{slug}.json"), args.quick)
    began = time.perf_counter()
    fresh = out.with_name(f"profile_{'quick' if args.quick else 'full'}_{Path(scale.model).name}_cpu_{slug}.json")
    args.profile = this_machines_profile(args.profile, fresh, scale.model, args.quick)
    store = ResultsStore(args.results_dir or (out.parent / "store" if args.quick else Path(".pie/results")))
    calibrations, runs, saturation = [], [[] for _ in range(6)], None
    for round_index in range(args.rounds):
        calibrated = out.with_name(f"profile_{Path(scale.model).name}_cpu_calibrated_{slug}_round{round_index}.json")
        calibrations.append(calibrate(args.profile, calibrated, scale))
        print(f"round {round_index} calibration:", json.dumps(calibrations[-1]["overhead"]), flush=True)
        for index in range(6):
            name, options, rate, num_prompts = cases(saturation, scale)[index]
            measured = run_case(store, "pie", options, rate, num_prompts, calibrated, scale)
            sim = run_case(store, "sim", options, rate, num_prompts, calibrated, scale)
            raw = run_case(store, "sim", options, rate, num_prompts, args.profile, scale)  # the profile alone, uncalibrated
            if saturation is None:  # Poisson at SATURATION_SHARE of round 0's all-at-once request throughput
                saturation = SATURATION_SHARE * measured["metrics"]["request_throughput"]
            runs[index].append({"round": round_index, "measured": measured, "simulated": sim, "simulated_profile_only": raw,
                                "errors": errors_of(sim, measured), "errors_profile_only": errors_of(raw, measured)})
            print(f"  {name:36s} " + "  ".join(f"{k} {runs[index][-1]['errors'][k]:+.1%}" for k in TARGETS)
                  + f"  (tok/s real {measured['metrics']['output_throughput']:.1f}, sim {sim['metrics']['output_throughput']:.1f};"
                  f" load {measured['load_avg_1m']:.1f})", flush=True)
    rows = []
    for index, case_runs in enumerate(runs):
        name, options, rate, num_prompts = cases(saturation, scale)[index]
        errors = median_errors([r["errors"] for r in case_runs])
        rows.append({"case": name, "options": options, "request_rate": None if math.isinf(rate) else rate,
                     "num_prompts": num_prompts, "median_errors": errors,
                     "median_errors_profile_only": median_errors([r["errors_profile_only"] for r in case_runs]),
                     "within_target": {k: abs(errors[k]) <= t for k, t in TARGETS.items()}, "rounds": case_runs})
        print(f"{name:36s} median over {args.rounds} rounds: " + "  ".join(f"{k} {errors[k]:+.1%}" for k in TARGETS))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "sim_fidelity", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "machine": machine_name(), "platform": platform.platform(), "profile": str(args.profile),
        "model": scale.model, "dtype": DTYPE, "quick": args.quick, "targets": TARGETS, "saturation_share": SATURATION_SHARE,
        "poisson_request_rate": saturation, "calibrations": calibrations, "cases": rows,
        "all_within_target": all(all(r["within_target"].values()) for r in rows), "bench_wall_s": time.perf_counter() - began},
        indent=2))
    print(f"wrote {out} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
