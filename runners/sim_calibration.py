"""Calibrate the simulator against the real engine: replay a measured run's iterations, fit what the layers miss.

`replay(target, requests)` runs requests released all at once through `SimStepEngine`: with
no arrivals in between, the real Scheduler makes the same decisions it made in the engine, so
iteration i of the replay is iteration i of the measured run (`check_aligned` says whether
the batches match). `fit_overhead(measured, replayed)` regresses each iteration's measured
wall time less its predicted time without overhead on the batch size (non-negative least
squares): the engine's per-iteration cost outside the layers and the lm_head (scheduling,
block tables, sampling), fixed + per sequence, as `HardwareSpec.iteration_fixed_s` /
`iteration_per_seq_s` read it from a profile's `extra["engine_iteration_overhead"]`.
`step_errors` summarises decode-only and prefill iterations' errors, to see what a model misses.
Torch-free. Left out: running the real engine (the caller measures it) and writing profiles.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from runners.base import BenchRequest
from runners.sim_runner import SimStepEngine, SimTarget, VirtualClock


def replay(target: SimTarget, requests: Sequence[BenchRequest], with_overhead: bool = False) -> list[Any]:
    """The simulator's `IterationStats` for `requests` all at once (overhead terms zeroed unless asked)."""
    costs = target.costs if with_overhead else dataclasses.replace(target.costs, iteration_fixed_s=0.0, iteration_per_seq_s=0.0)
    engine = SimStepEngine(dataclasses.replace(target, costs=costs), VirtualClock())
    for request in requests:
        engine.add(request)
    while engine.scheduler.has_unfinished():
        engine.step()
    return engine.stats


def check_aligned(measured: Sequence[Any], replayed: Sequence[Any]) -> bool:
    """Whether both runs scheduled the same batches, iteration by iteration."""
    def shape(s: Any) -> tuple:
        return s.num_prefill_tokens, s.num_decode_tokens, s.num_preempted, s.pool_blocks_used

    return len(measured) == len(replayed) and all(shape(a) == shape(b) for a, b in zip(measured, replayed))


def fit_overhead(measured: Sequence[Any], replayed: Sequence[Any]) -> dict[str, float]:
    """{"fixed_s", "per_seq_s"}: measured wall - predicted, regressed on batch size (both >= 0)."""
    residual = np.array([m.wall_s - r.wall_s for m, r in zip(measured, replayed)])
    features = np.array([[1.0, float(r.batch_size)] for r in replayed])
    # Robust to a step another process slowed: drop the worst tenth of residuals before fitting.
    keep = residual <= np.quantile(residual, 0.9)
    (fixed, per_seq), _ = nnls(features[keep], np.maximum(residual[keep], 0.0))
    return {"fixed_s": float(fixed), "per_seq_s": float(per_seq)}


def step_errors(measured: Sequence[Any], replayed: Sequence[Any]) -> dict[str, Any]:
    """Median relative error (predicted / measured - 1) of decode-only and of prefill iterations, and their counts."""
    out: dict[str, Any] = {}
    for phase, chosen in (("decode", lambda s: s.num_prefill_tokens == 0), ("prefill", lambda s: s.num_prefill_tokens > 0)):
        pairs = [(m.wall_s, r.wall_s) for m, r in zip(measured, replayed) if chosen(r) and m.wall_s > 0]
        errors = [p / m - 1 for m, p in pairs]
        out[phase] = {"num_steps": len(pairs), "median_error": float(np.median(errors)) if errors else None,
                      "measured_s": float(sum(m for m, _ in pairs)), "predicted_s": float(sum(p for _, p in pairs))}
    return out
