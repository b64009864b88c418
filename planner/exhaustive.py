"""Exhaustive enumeration over the same cost model: the reference the LP is checked against.

For every (batch, depth) candidate the search enumerates, a fine grid over the pooled share of
the KV and the rebuilt share of the pool fixes the byte variables (copied C, rebuilt R, device
G at the least the placement needs, staging S at the least the depth needs); the cost model's
own `memory_slacks` and `step_times` (evaluated on numpy arrays) judge each point. It is slow
by design and only used by tests and benchmarks. Left out: anything the LP does not model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost_model import Prediction, Problem, Split, memory_slacks, predict, step_times
from planner.search import batch_limit, enumerate_candidates


@dataclass(frozen=True)
class GridSize:
    pooled_steps: int = 400  # pooled share of the batch's KV, 0..1
    rebuilt_steps: int = 20  # rebuilt share of the pool, 0..1 (only where rebuilding saves bytes)


def best_by_enumeration(problem: Problem, max_tpot_ms: float | None = None, grid: GridSize = GridSize(),
                        max_batch_size: int | None = None, every_batch: bool = False) -> Prediction | None:
    """Highest predicted throughput over the grid (None when nothing is feasible).

    With `every_batch`, every integer batch size up to the limit is tried, not just the
    planner's candidate list, so the planner's batch enumeration is checked too.
    """
    sizes = list(range(1, batch_limit(problem, max_batch_size) + 1)) if every_batch else None
    pairs, _ = enumerate_candidates(problem, max_batch_size, batch_sizes=sizes)
    pooled_share = np.linspace(0.0, 1.0, grid.pooled_steps + 1)
    rebuilt_share = np.linspace(0.0, 1.0, grid.rebuilt_steps + 1) if problem.costs.rebuild_allowed else np.zeros(1)
    pooled_grid, rebuilt_grid = np.meshgrid(pooled_share, rebuilt_share, indexing="ij")
    best: Prediction | None = None
    for b, d in pairs:
        need = problem.kv_need_bytes(b)
        copied = need * pooled_grid * (1 - rebuilt_grid)
        rebuilt = need * pooled_grid * rebuilt_grid
        staging = d * (copied + problem.costs.activation_ratio * rebuilt) / problem.costs.num_layers
        device = np.maximum(need - copied - rebuilt, problem.tail_bytes(b))
        slacks = memory_slacks(problem, b, d, device, copied, rebuilt, staging)
        tolerance = 1e-9 * max(need, 1.0)
        ok = np.ones_like(pooled_grid, dtype=bool)
        for slack in slacks.values():
            ok &= np.asarray(slack) >= -tolerance
        if not ok.any():
            continue
        _, _, _, layers_s = step_times(problem, b, d, copied, rebuilt)
        tpot_s = layers_s + problem.head_s(b) + problem.prefill_per_step_s(b)
        throughput = np.where(ok, b / tpot_s, -np.inf)
        if max_tpot_ms is not None:
            throughput = np.where(tpot_s * 1e3 <= max_tpot_ms, throughput, -np.inf)
        index = np.unravel_index(int(np.argmax(throughput)), throughput.shape)
        if not np.isfinite(throughput[index]):
            continue
        split = Split(float(device[index]), float(copied[index]), float(rebuilt[index]), float(staging[index]))
        candidate = predict(problem, b, d, split)
        if candidate.feasible and (best is None or candidate.output_tok_s > best.output_tok_s):
            best = candidate
    return best
