"""Calibrate the simulator against the real engine: replay a measured run's iterations, fit what the profile misses.

`replay(target, requests)` runs requests released all at once through `SimStepEngine`: with
no arrivals in between, the real Scheduler makes the same decisions it made in the engine, so
iteration i of the replay is iteration i of the measured run (`check_aligned` says whether
the batches match). `fit_calibration` regresses each iteration's measured
wall time, less the predicted parts it does not scale (the lm_head), on the predicted
decode-layer time, prefill-layer time, copy time (the layers' wait on pooled blocks, and tier
moves) and the batch size
(non-negative least squares, refitted without the tenth of iterations that fit worst: steps
another process slowed). "Worst" is relative to the iteration's measured time, and prefill and
decode-only iterations are trimmed each against their own kind: by absolute misfit, the few long
prefill iterations of a short run were at times all dropped, which left the prefill scale
unconstrained at 0, a value a profile refuses. A layer scale the fit still puts at 0 keeps the
profile's own (`kept_profile` names it). The results are what `planner.hardware.from_profile` reads from a
profile's `engine_overhead` (profiler/hardware_profile.py `EngineOverhead`): `decode_scale` and `prefill_scale` (the
engine's layers against the profiled single layer, on the machine as it is now),
`pooled_copy_gbps` (the rate the engine copies pooled blocks at; the profile's sustained
memcpy rate when the fit gives copies no weight), and
`per_seq_s` (the engine's per-iteration work outside the layers and the lm_head: scheduling,
block tables, sampling). A fixed per-iteration cost is not fitted: in one run it cannot be told
from the decode layers' fixed term (both are paid once per iteration), so `decode_scale` carries
it and `fixed_s` stays 0 (a free intercept took all decode time in a trial and then missed other
batch sizes; docs/simulator.md). `step_errors` summarises decode-only and prefill
iterations' errors.

`fit_calibration(runs, hardware, pooled=...)` fits in two stages: the layer scales and the
per-sequence term on `runs` (measured and replayed runs without a pool, so nothing copies and
nothing else can take the layers' time; one with a roomy device for full batches, one with a
tight device for small batches and preemptions), then only the copy rate on `pooled`, its layers
priced by those scales. In one pooled run alone the copy term is weakly identified: on a Xeon (AMX,
torch AVX512) the pooled engine's extra compute went into the layer scales and the simulator priced
pool-off runs about 10% slow; fitted on the roomy run alone, the layers missed a preempting run's
small batches by 11%; fitted on all runs at once, the pooled runs pulled the layer scales up again
(docs/simulator.md). Torch-free. Left out: running the engine (the caller measures it) and files.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from planner.step_time import decode_layer_s, prefill_layer_s
from runners.base import BenchRequest
from runners.sim_runner import SimStepEngine, SimTarget, VirtualClock

TRIM_QUANTILE = 0.9


def replay(target: SimTarget, requests: Sequence[BenchRequest], with_overhead: bool = False) -> SimStepEngine:
    """The simulator after running `requests` all at once (overhead terms zeroed unless asked); see `.stats`, `.works`."""
    costs = target.costs if with_overhead else dataclasses.replace(target.costs, iteration_fixed_s=0.0, iteration_per_seq_s=0.0)
    engine = SimStepEngine(dataclasses.replace(target, costs=costs), VirtualClock(), keep_work=True)
    for request in requests:
        engine.add(request)
    while engine.scheduler.has_unfinished():
        engine.step()
    return engine


def check_aligned(measured: Sequence[Any], replayed: Sequence[Any]) -> bool:
    """Whether both runs scheduled the same batches, iteration by iteration."""
    def shape(s: Any) -> tuple:
        return s.num_prefill_tokens, s.num_decode_tokens, s.num_preempted, s.pool_blocks_used

    return len(measured) == len(replayed) and all(shape(a) == shape(b) for a, b in zip(measured, replayed))


def _features(engine: SimStepEngine) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: [decode-layer s, prefill-layer s, copy s, batch size], and the predicted seconds left unscaled."""
    costs = engine.executor.costs
    layers = costs.num_layers
    rows, rest = [], []
    for (work, predicted), stats in zip(engine.works, engine.stats):
        has_prefill = work.num_prefill_tokens > 0
        decode = layers * (decode_layer_s(costs, work.num_decode, work.decode_context_tokens)
                           + (costs.decode_fixed_s if work.num_decode and not has_prefill else 0.0))
        prefill = layers * (prefill_layer_s(costs, work.num_prefill_tokens, work.prefill_attention_pairs)
                            + (costs.prefill_fixed_s if has_prefill else 0.0))
        copy = float(predicted.stall_s + predicted.moves_s)
        rows.append([decode, prefill, copy, float(stats.batch_size)])
        rest.append(float(predicted.total_s) - decode - prefill - copy)
    return np.array(rows), np.array(rest)


def _trimmed_nnls(features: np.ndarray, target: np.ndarray, wall: np.ndarray, groups: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative least squares, refitted without the tenth of rows that fit worst (misfit over the row's measured
    `wall` seconds) within each of `groups` (a label per row), so every group keeps rows; the solution, rows kept."""
    keep = np.ones(len(target), dtype=bool)
    for _ in range(2):
        solution, _ = nnls(features[keep], target[keep])
        misfit = np.abs(features @ solution - target) / np.maximum(wall, 1e-12)
        for group in np.unique(groups):
            member = groups == group
            keep[member] = misfit[member] <= np.quantile(misfit[member], TRIM_QUANTILE)
    return solution, keep


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Every run's iterations stacked: features, targets (measured seconds less the unscaled predicted parts) and
    measured seconds."""
    features: np.ndarray
    target: np.ndarray
    wall: np.ndarray

    @property
    def prefilled(self) -> np.ndarray:
        """Whether each iteration prefilled (the trimming's groups)."""
        return self.features[:, 1] > 0

    def fit(self, columns: list[int], target: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The trimmed fit on `columns` (of target, default the rows' own); the solution and how many rows it kept."""
        solution, keep = _trimmed_nnls(self.features[:, columns], self.target if target is None else target,
                                       self.wall, self.prefilled)
        return solution, int(keep.sum())


def _stacked(runs: Sequence[tuple[Sequence[Any], SimStepEngine]]) -> _Rows:
    features, targets, walls = [], [], []
    for measured, engine in runs:
        rows, rest = _features(engine)
        wall = np.array([m.wall_s for m in measured])
        features.append(rows)
        targets.append(wall - rest)
        walls.append(wall)
    return _Rows(np.vstack(features), np.concatenate(targets), np.concatenate(walls))


def fit_calibration(runs: Sequence[tuple[Sequence[Any], SimStepEngine]], hardware: Any,
                    pooled: tuple[Sequence[Any], SimStepEngine] | None = None) -> dict[str, Any]:
    """{"decode_scale", "prefill_scale", "pooled_copy_gbps", "fixed_s" (0), "per_seq_s", "num_steps_fitted",
    "kept_profile"} for the profile the replays used (`hardware`, its HardwareSpec: the new scales multiply its own).
    A run that never copied keeps its link rate; a layer scale fitted at 0 keeps the profile's (named in "kept_profile").
    `runs`: (measured stats, replayed engine) pairs; with `pooled`, they must not pool (the module docstring)."""
    rows = _stacked(runs)
    if pooled is None:
        solution, kept = rows.fit([0, 1, 2, 3])
        scale_decode, scale_prefill, scale_copy, per_seq = (float(v) for v in solution)
        copied = rows.features[:, 2].sum() > 0 and scale_copy > 0
    else:
        if rows.features[:, 2].sum() > 0:
            raise ValueError("calibration: a run for the layers copied pooled blocks; give runs without a pool")
        layers, kept = rows.fit([0, 1, 3])
        scale_decode, scale_prefill, per_seq = (float(v) for v in layers)
        pooled_rows = _stacked([pooled])
        copy, kept_pooled = pooled_rows.fit([2], pooled_rows.target - pooled_rows.features[:, [0, 1, 3]] @ layers)
        scale_copy, kept = float(copy[0]), kept + kept_pooled
        copied = pooled_rows.features[:, 2].sum() > 0 and scale_copy > 0
    fitted = {"decode_scale": scale_decode, "prefill_scale": scale_prefill}
    kept_profile = [name for name, value in fitted.items() if not value > 0]  # a layer never costs nothing
    scales = {name: getattr(hardware, name) * (value if value > 0 else 1.0) for name, value in fitted.items()}
    return {**scales, "pooled_copy_gbps": hardware.link_h2d_gbps / scale_copy if copied else hardware.link_h2d_gbps,
            "fixed_s": 0.0, "per_seq_s": per_seq, "num_steps_fitted": kept, "kept_profile": kept_profile}


def step_errors(measured: Sequence[Any], replayed: Sequence[Any]) -> dict[str, Any]:
    """Median relative error (predicted / measured - 1) of decode-only and of prefill iterations, and their totals."""
    out: dict[str, Any] = {}
    for phase, chosen in (("decode", lambda s: s.num_prefill_tokens == 0), ("prefill", lambda s: s.num_prefill_tokens > 0)):
        pairs = [(m.wall_s, r.wall_s) for m, r in zip(measured, replayed) if chosen(r) and m.wall_s > 0]
        errors = [p / m - 1 for m, p in pairs]
        out[phase] = {"num_steps": len(pairs), "median_error": float(np.median(errors)) if errors else None,
                      "measured_s": float(sum(m for m, _ in pairs)), "predicted_s": float(sum(p for _, p in pairs))}
    return out
