"""Prediction against reality: cost-model throughput from a profile of this machine vs the Pie engine.

For three engine configurations (no pool at two batch limits, and a pooled one whose device
budget holds about half the batch's KV) the cost model predicts output throughput from a
`pie profile` of this machine, and the engine measures it: `2 x batch` requests of fixed
length (random token ids, greedy, ignore_eos) run to completion after a warm-up, throughput =
output tokens / wall time. Two predictions per case: from the profile alone, and from the
profile plus an engine calibration measured on three other configurations (batch 4 and 24
without pool: the engine's per-step overhead outside the layers and lm_head, fixed + per
sequence; batch 24 pooled against batch 24 without a pool, both measured: the engine's effective
pooled copy rate). Writes
docs/results/prediction.json with each prediction, each measurement and the relative error. Run it under `flock /tmp/pie-heavy.lock`.

Run: flock /tmp/pie-heavy.lock python benchmarks/bench_prediction.py --profile PROFILE.json
`--quick`: requests of 16 prompt and 8 output tokens, one repeat (give a tiny `--model` and its profile).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pie_core.shapes import resolve_model
from planner.budgets import Budgets, WorkloadStats
from planner.cost_model import Problem, Split, model_costs, predict
from planner.hardware import from_profile
from profiler.hardware_profile import EngineOverhead, HardwareProfile
from quick_mode import add_quick_argument, output_path


@dataclass(frozen=True)
class Case:
    name: str
    batch_size: int
    device_share: float  # share of the batch's peak KV that the device budget holds (>= 1: no pool)
    prefetch_depth: int = 2


CASES = (Case("no pool, batch 16", 16, 1.5), Case("no pool, batch 48", 48, 1.5), Case("pool, batch 48", 48, 0.55))
# Calibration runs, distinct from the cases: engine overhead per step (two batch sizes, no pool)
# and the engine's effective pooled copy rate (one pooled run).
CALIBRATION = (Case("calibration, batch 4", 4, 1.5), Case("calibration, batch 24", 24, 1.5),
               Case("calibration, pool, batch 24", 24, 0.55))


def engine_config(model: str, dtype: str, case: Case, input_len: int, output_len: int, block_size: int = 16):
    from runners.engine.config import EngineConfig

    shape = resolve_model(model)
    blocks_per_seq = -(-(input_len + output_len) // block_size)
    need_blocks = case.batch_size * blocks_per_seq
    device_blocks = int(need_blocks * case.device_share)
    pool_blocks = 0 if case.device_share >= 1 else need_blocks - device_blocks + case.batch_size
    staging = -(-case.prefetch_depth * pool_blocks // shape.num_layers) if pool_blocks else 0
    return EngineConfig(model=model, dtype=dtype, block_size=block_size, num_device_blocks=device_blocks + staging,
                        num_pool_blocks=pool_blocks, prefetch_depth=case.prefetch_depth, max_num_seqs=case.batch_size,
                        max_num_batched_tokens=max(2048, case.batch_size * input_len), seed=0)


def predicted(profile: HardwareProfile, config, case: Case, input_len: int, output_len: int):
    shape = resolve_model(config.model)
    hardware = from_profile(profile)  # reads the calibration from profile.extra when present
    block_bytes = shape.kv_bytes_per_token(config.dtype) * config.block_size
    workload = WorkloadStats("fixed", input_len, output_len, synthetic=True)
    budgets = Budgets(hardware.device_memory_bytes // 4, hardware.host_memory_bytes // 4, block_size=config.block_size,
                      max_num_batched_tokens=config.max_num_batched_tokens)
    problem = Problem(shape, config.dtype, model_costs(shape, hardware, config.dtype), budgets, workload)
    need = problem.kv_need_bytes(case.batch_size)
    staging_blocks = -(-config.prefetch_depth * config.num_pool_blocks // shape.num_layers) if config.num_pool_blocks else 0
    resident = (config.num_device_blocks - staging_blocks) * block_bytes
    pooled = max(0.0, need - resident)
    split = Split(need - pooled, pooled, 0.0, staging_blocks * block_bytes)
    return predict(problem, case.batch_size, config.prefetch_depth, split)


def warm_engine(config, input_len: int):
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    engine = LLMEngine(config)
    rng = np.random.default_rng(0)
    engine.generate([rng.integers(0, engine.model.shape.vocab_size, input_len).tolist() for _ in range(4)],
                    SamplingParams(max_tokens=8, ignore_eos=True))
    return engine


def run_once(engine, case: Case, input_len: int, output_len: int, seed: int) -> dict:
    """`2 x batch` fixed-length requests to completion on a warm engine."""
    from runners.engine.sampling_params import SamplingParams

    rng = np.random.default_rng(seed)
    vocab = engine.model.shape.vocab_size
    first = len(engine.stats)
    prompts = [rng.integers(0, vocab, input_len).tolist() for _ in range(2 * case.batch_size)]
    start = time.perf_counter()
    outputs = engine.generate(prompts, SamplingParams(max_tokens=output_len, ignore_eos=True))
    wall = time.perf_counter() - start
    stats = engine.stats[first:]
    tokens = sum(len(o.output_token_ids) for o in outputs)
    busy = sum(s.compute_s + s.stall_s for s in stats)
    prefill = [s for s in stats if s.num_prefill_tokens > 0]
    decode = [s for s in stats if s.num_prefill_tokens == 0]
    return {"output_tok_s": tokens / wall, "wall_s": wall, "output_tokens": tokens, "num_steps": len(stats),
            "prefill_steps": len(prefill), "prefill_steps_wall_s": sum(s.wall_s for s in prefill),
            "decode_steps_wall_s": sum(s.wall_s for s in decode), "decode_stall_s": sum(s.stall_s for s in decode),
            "median_decode_h2d_bytes": float(np.median([s.h2d_bytes for s in decode])) if decode else 0.0,
            "slowest_steps_ms": sorted((round(s.wall_s * 1e3, 1) for s in stats), reverse=True)[:4],
            "stall_fraction": sum(s.stall_s for s in stats) / busy if busy else 0.0,
            "max_pool_blocks_used": max(s.pool_blocks_used for s in stats),
            "max_batch_size": max(s.batch_size for s in stats), "preemptions": sum(s.num_preempted for s in stats),
            "median_decode_step_ms": 1e3 * float(np.median([s.wall_s for s in decode]))}


def measure_all(configs: dict, input_len: int, output_len: int, repeats: int) -> dict:
    """Every case `repeats` times, interleaved, on warm engines; the median run per case and all samples.

    The machine is shared: a run another process disturbs is slow by seconds, so the median of
    interleaved repeats is reported, with every sample kept.
    """
    engines = {name: warm_engine(config, input_len) for name, (config, _) in configs.items()}
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    for repeat in range(repeats):
        for name, (_, case) in configs.items():
            samples[name].append(run_once(engines[name], case, input_len, output_len, seed=repeat + 1))
    for engine in engines.values():
        engine.close()
    result = {}
    for name, runs in samples.items():
        ordered = sorted(runs, key=lambda r: r["output_tok_s"])
        median = ordered[len(ordered) // 2]
        result[name] = {**median, "samples_output_tok_s": [r["output_tok_s"] for r in runs],
                        "samples_median_decode_step_ms": [r["median_decode_step_ms"] for r in runs]}
    return result


def calibrate(profile: HardwareProfile, model: str, input_len: int, output_len: int, measured: dict) -> tuple[dict, list]:
    """The engine's per-step overhead (fixed + per sequence) and its pooled copy rate, from the calibration runs."""
    residuals, runs = [], []
    for case in CALIBRATION[:2]:
        config = engine_config(model, profile.dtype, case, input_len, output_len)
        model_step_ms = predicted(profile, config, case, input_len, output_len).decode_step_s * 1e3
        residuals.append((case.batch_size, measured[case.name]["median_decode_step_ms"] - model_step_ms))
        runs.append({"case": asdict(case), "measured": measured[case.name], "model_decode_step_ms": model_step_ms})
    (b1, r1), (b2, r2) = residuals
    per_seq_ms = max(0.0, (r2 - r1) / (b2 - b1))
    fixed_ms = max(0.0, r1 - per_seq_ms * b1)
    overhead = {"fixed_s": fixed_ms / 1e3, "per_seq_s": per_seq_ms / 1e3}
    case = CALIBRATION[2]
    pooled_run = measured[case.name]
    # The copy's cost per step: the pooled run against the measured run without a pool at the same batch
    # (not against a prediction, whose own error would land in the copy rate).
    same_batch = next(c for c in CALIBRATION[:2] if c.batch_size == case.batch_size)
    copy_ms = max(1e-3, pooled_run["median_decode_step_ms"] - measured[same_batch.name]["median_decode_step_ms"])
    layers = resolve_model(model).num_layers
    # The cost model charges (L + 1) / L of the streamed bytes per step where copies do not overlap.
    overhead["pooled_copy_gbps"] = pooled_run["median_decode_h2d_bytes"] * (layers + 1) / layers / (copy_ms / 1e3) / 1e9
    runs.append({"case": asdict(case), "measured": pooled_run, "copy_ms_per_step": copy_ms})
    return overhead, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="a `pie profile` of this machine for --model")
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/prediction.json")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.input_len, args.output_len, args.repeats = 16, 8, 1
    args.out = output_path(args.out, Path("docs/results/prediction.json"), args.quick)
    profile = HardwareProfile.load(args.profile)
    configs = {case.name: (engine_config(args.model, profile.dtype, case, args.input_len, args.output_len), case)
               for case in CALIBRATION + CASES}
    measured_all = measure_all(configs, args.input_len, args.output_len, args.repeats)
    overhead, calibration_runs = calibrate(profile, args.model, args.input_len, args.output_len, measured_all)
    print(f"calibration (engine runs distinct from the cases): {overhead}")
    calibrated = dataclasses.replace(profile, engine_overhead=EngineOverhead.from_dict(overhead))
    rows = []
    for case in CASES:
        config = engine_config(args.model, profile.dtype, case, args.input_len, args.output_len)
        raw = predicted(profile, config, case, args.input_len, args.output_len)
        prediction = predicted(calibrated, config, case, args.input_len, args.output_len)
        measured = measured_all[case.name]
        error = prediction.output_tok_s / measured["output_tok_s"] - 1
        raw_error = raw.output_tok_s / measured["output_tok_s"] - 1
        rows.append({"case": asdict(case), "engine": {k: v for k, v in asdict(config).items() if k != "random_weights"},
                     "predicted_output_tok_s": prediction.output_tok_s, "predicted_decode_step_ms": prediction.decode_step_s * 1e3,
                     "predicted_stall_ms_per_step": prediction.stall_step_s * 1e3, "measured": measured, "relative_error": error,
                     "profile_only_output_tok_s": raw.output_tok_s, "profile_only_relative_error": raw_error,
                     "prediction_violations": list(prediction.violations)})
        print(f"{case.name:20s} predicted {prediction.output_tok_s:8.1f} tok/s (profile only {raw.output_tok_s:8.1f})  "
              f"measured {measured['output_tok_s']:8.1f} tok/s  error {error:+.1%} (profile only {raw_error:+.1%})  "
              f"(decode step predicted {prediction.decode_step_s * 1e3:.1f} ms, measured median {measured['median_decode_step_ms']:.1f} ms)")
        print("   ", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in measured.items()}))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "prediction", "created_at": datetime.now(timezone.utc).isoformat(),
                                    "git_commit": commit, "machine": platform.platform(), "profile": str(args.profile),
                                    "profile_created_at": profile.created_at, "model": args.model,
                                    "input_len": args.input_len, "output_len": args.output_len,
                                    "calibration": {"engine_iteration_overhead": overhead, "runs": calibration_runs},
                                    "max_abs_relative_error": max(abs(r["relative_error"]) for r in rows),
                                    "max_abs_profile_only_error": max(abs(r["profile_only_relative_error"]) for r in rows),
                                    "rows": rows},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
