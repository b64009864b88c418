"""Fit the per-layer cost coefficients to measured layer timings, and judge them on held-out points.

Decode:  t(b, ctx) = fixed_s + per_token_s * b + per_kv_token_s * b * ctx
Prefill: t(n, s)   = fixed_s + per_token_s * n + per_token_sq_s * s   (n tokens, s = sum of squared lengths)

The grid is split deterministically: a point is held out when (batch rank + 2 * context rank)
mod 3 == 1, which spreads the held-out third over the grid's diagonals while the training
points keep its corners. Coefficients are fitted by non-negative least squares on relative
error (every row divided by its measured time), so a 2 ms point counts as much as a 2 s one and
no coefficient comes out negative (the planner divides by them). The reported error is
|predicted - measured| / measured on the held-out points only, and the coefficients returned
are the training-subset ones that error was measured for.

Torch-free. Left out: choosing the model form (fixed by the HardwareProfile contract).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from pie_core.errors import RuntimeFailure
from profiler.hardware_profile import DecodeLayerFit, LayerTiming, PrefillLayerFit

MIN_FIT_POINTS = 3
MIN_HOLDOUT_POINTS = 1


@dataclass(frozen=True)
class FitResult:
    coefficients: tuple[float, ...]
    median_rel_error: float  # held-out
    max_rel_error: float  # held-out
    num_fit_points: int
    num_holdout_points: int
    holdout_errors: tuple[float, ...]


def holdout_mask(timings: Sequence[LayerTiming]) -> list[bool]:
    """True for points held out of the fit: (batch rank + 2 * context rank) % 3 == 1."""
    batches = sorted({t.batch_size for t in timings})
    contexts = sorted({t.context_len for t in timings})
    mask = [(batches.index(t.batch_size) + 2 * contexts.index(t.context_len)) % 3 == 1 for t in timings]
    if sum(mask) < MIN_HOLDOUT_POINTS and len(timings) > MIN_FIT_POINTS:
        mask[len(mask) // 2] = True  # a grid too thin for the pattern still gets one held-out point
    return mask


def relative_errors(features: np.ndarray, times: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    return np.abs(features @ coefficients - times) / times


def fit_relative_nnls(features: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the sum of squared relative errors."""
    weights = 1.0 / times
    scale = np.abs(features * weights[:, None]).max(axis=0)
    scale[scale == 0] = 1.0  # a column of zeros (e.g. a single batch size) keeps its coefficient at 0
    scaled = features * weights[:, None] / scale
    solution, _residual = nnls(scaled, np.ones_like(times))
    return solution / scale


def fit_and_validate(features: np.ndarray, times: np.ndarray, held_out: Sequence[bool], what: str) -> FitResult:
    held_out = np.asarray(held_out, dtype=bool)
    train = ~held_out
    if train.sum() < MIN_FIT_POINTS or held_out.sum() < MIN_HOLDOUT_POINTS:
        raise RuntimeFailure(f"{what} fit needs at least {MIN_FIT_POINTS} training and {MIN_HOLDOUT_POINTS} held-out "
                             f"points, got {int(train.sum())} and {int(held_out.sum())}",
                             "profile a larger grid (drop --quick, or free memory for bigger batches)")
    if np.any(times <= 0):
        raise RuntimeFailure(f"{what} fit got a non-positive time")
    coefficients = fit_relative_nnls(features[train], times[train])
    errors = relative_errors(features[held_out], times[held_out], coefficients)
    return FitResult(coefficients=tuple(float(c) for c in coefficients), median_rel_error=float(np.median(errors)),
                     max_rel_error=float(errors.max()), num_fit_points=int(train.sum()),
                     num_holdout_points=int(held_out.sum()), holdout_errors=tuple(float(e) for e in errors))


def decode_features(timings: Sequence[LayerTiming]) -> np.ndarray:
    return np.array([[1.0, t.batch_size, t.batch_size * t.context_len] for t in timings], dtype=float)


def prefill_features(timings: Sequence[LayerTiming]) -> np.ndarray:
    return np.array([[1.0, t.batch_size * t.context_len, t.batch_size * t.context_len**2] for t in timings], dtype=float)


def fit_decode(timings: Sequence[LayerTiming], layer_weight_bytes: int, layer_flops_per_token: int,
               kv_bytes_per_token_layer: int) -> tuple[DecodeLayerFit, FitResult]:
    decode = [t for t in timings if t.phase == "decode"]
    result = fit_and_validate(decode_features(decode), np.array([t.median_s for t in decode]), holdout_mask(decode), "decode-layer")
    fixed, per_token, per_kv_token = result.coefficients
    fit = DecodeLayerFit(fixed_s=fixed, per_token_s=per_token, per_kv_token_s=per_kv_token,
                         layer_weight_bytes=layer_weight_bytes, layer_flops_per_token=layer_flops_per_token,
                         kv_bytes_per_token_layer=kv_bytes_per_token_layer,
                         median_rel_error=result.median_rel_error, max_rel_error=result.max_rel_error,
                         num_fit_points=result.num_fit_points, num_holdout_points=result.num_holdout_points)
    return fit, result


def fit_prefill(timings: Sequence[LayerTiming]) -> tuple[PrefillLayerFit, FitResult]:
    prefill = [t for t in timings if t.phase == "prefill"]
    result = fit_and_validate(prefill_features(prefill), np.array([t.median_s for t in prefill]), holdout_mask(prefill), "prefill-layer")
    fixed, per_token, per_token_sq = result.coefficients
    return PrefillLayerFit(fixed_s=fixed, per_token_s=per_token, per_token_sq_s=per_token_sq,
                           median_rel_error=result.median_rel_error), result
