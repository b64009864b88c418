"""Enumerate candidate batch limits and prefetch depths, solve their LPs, keep the best.

FlexGen-style: the batch limit `b` and prefetch depth `d` are chosen outside the LP; for each
candidate the LP (lp.py) places the KV bytes; the cost model (cost_model.py) predicts the
throughput of each placement, and the best one within the latency bound wins. The same search
with a zero host budget gives the no-pool baseline at the same device budget.
Left out: the Plan file (plan.py) and the words (explain.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pie_core.errors import BadInput
from pie_core.formatting import round_up
from pie_core.sizes import format_bytes
from planner.cost_model import Prediction, Problem, candidate_batch_sizes, predict
from planner.lp import CandidateSolution, solve_candidates

PREFETCH_DEPTHS = (1, 2, 3, 4)
NO_POOL_DEPTH = 2  # depth is irrelevant without a pool; the engine's default
MAX_REFINE_SIZES = 32  # batch sizes solved between the best coarse candidate's neighbours
TIE_FRACTION = 0.001  # throughputs this close count as equal


@dataclass(frozen=True)
class SearchResult:
    best: Prediction | None  # None only inside a refinement pass that found nothing
    best_binding: tuple[str, ...]
    predictions: tuple[Prediction, ...]  # every feasible candidate, in enumeration order
    infeasible_batch: int | None  # smallest enumerated batch that fits nowhere (None if all fit)
    latency_rejected: tuple[Prediction, ...]  # feasible but over --max-tpot-ms
    lp_solve_s: float  # all CBC calls together
    lp_build_s: float
    lp_solve_s_each: tuple[float, ...]  # one per CBC call
    num_candidates: int
    num_variables: int


def capacity_bound_bytes(problem: Problem, batch_size: int) -> float:
    """Most KV any placement can hold for this batch (device plus pool at its cheapest encoding)."""
    ratio = min(1.0, problem.costs.activation_ratio) if problem.costs.rebuild_allowed else 1.0
    return problem.device_free_bytes(batch_size) + problem.budgets.host_memory_bytes / ratio


def batch_limit(problem: Problem, max_batch_size: int | None = None) -> int:
    return min(max_batch_size or problem.budgets.max_num_batched_tokens, problem.budgets.max_num_batched_tokens)


def enumerate_candidates(problem: Problem, max_batch_size: int | None = None,
                         batch_sizes: list[int] | None = None) -> tuple[list[tuple[int, int]], int | None]:
    """(batch, depth) pairs worth solving, and the first batch that cannot fit anywhere."""
    pairs, infeasible = [], None
    for b in batch_sizes or candidate_batch_sizes(batch_limit(problem, max_batch_size)):
        if problem.device_free_bytes(b) < problem.tail_bytes(b) or problem.kv_need_bytes(b) > capacity_bound_bytes(problem, b):
            infeasible = b
            break
        if problem.kv_need_bytes(b) <= problem.device_free_bytes(b) or problem.budgets.host_memory_bytes == 0:
            pairs.append((b, NO_POOL_DEPTH))
        else:
            pairs.extend((b, d) for d in PREFETCH_DEPTHS)
    return pairs, infeasible


def search(problem: Problem, max_tpot_ms: float | None = None, max_batch_size: int | None = None) -> SearchResult:
    """The best candidate by predicted output throughput, within the latency bound if one is given."""
    pairs, infeasible = enumerate_candidates(problem, max_batch_size)
    if not pairs:
        free = problem.device_free_bytes(1)
        raise BadInput(f"not even one sequence fits: after weights ({format_bytes(problem.costs.weight_bytes)}) and "
                       f"activations the device budget leaves {format_bytes(free)}, one sequence needs "
                       f"{format_bytes(problem.kv_need_bytes(1))} of KV", "raise --gpu-memory or --cpu-memory")
    coarse = _solve(problem, pairs, max_tpot_ms)
    # Refine: every batch size between the best coarse candidate's neighbours, in a second LP.
    sizes = sorted({b for b, _ in pairs})
    position = sizes.index(coarse.best.batch_size)
    low = sizes[max(0, position - 1)]
    high = sizes[position + 1] if position + 1 < len(sizes) else (infeasible or sizes[-1])
    between = [b for b in range(low + 1, high) if b not in sizes]
    if len(between) > MAX_REFINE_SIZES:
        between = sorted({between[round(i * (len(between) - 1) / (MAX_REFINE_SIZES - 1))] for i in range(MAX_REFINE_SIZES)})
    fine_pairs, _ = enumerate_candidates(problem, batch_sizes=between) if between else ([], None)
    if not fine_pairs:
        return dataclasses.replace(coarse, infeasible_batch=infeasible)
    fine = _solve(problem, fine_pairs, max_tpot_ms, required=False)
    merged = {**coarse.__dict__, "infeasible_batch": infeasible,
              "lp_solve_s": coarse.lp_solve_s + fine.lp_solve_s, "lp_build_s": coarse.lp_build_s + fine.lp_build_s,
              "lp_solve_s_each": coarse.lp_solve_s_each + fine.lp_solve_s_each,
              "num_candidates": coarse.num_candidates + fine.num_candidates,
              "num_variables": coarse.num_variables + fine.num_variables,
              "predictions": tuple(sorted(coarse.predictions + fine.predictions, key=lambda p: (p.batch_size, p.prefetch_depth))),
              "latency_rejected": coarse.latency_rejected + fine.latency_rejected}
    if fine.best is not None:
        best, binding = _pick([(coarse.best, coarse.best_binding), (fine.best, fine.best_binding)])
        merged.update(best=best, best_binding=binding)
    return SearchResult(**merged)


def _pick(options: list[tuple[Prediction, tuple]]) -> tuple[Prediction, tuple]:
    """Highest throughput; within TIE_FRACTION of it, the smaller pool, then the smaller batch."""
    top = max(p.output_tok_s for p, _ in options)
    return min((o for o in options if o[0].output_tok_s >= top * (1 - TIE_FRACTION)),
               key=lambda o: (o[0].pooled_bytes, o[0].batch_size))


def _solve(problem: Problem, pairs: list[tuple[int, int]], max_tpot_ms: float | None, required: bool = True) -> SearchResult:
    result = solve_candidates(problem, pairs)
    feasible: list[tuple[Prediction, CandidateSolution]] = []
    for solution in result.solutions:
        if solution.shortfall_bytes > 1e-6 * problem.kv_need_bytes(1):
            continue
        prediction = predict(problem, solution.batch_size, solution.prefetch_depth, solution.split)
        if prediction.feasible:
            feasible.append((prediction, solution))
    within = [(p, s) for p, s in feasible if max_tpot_ms is None or p.tpot_ms <= max_tpot_ms]
    rejected = tuple(p for p, _ in feasible if max_tpot_ms is not None and p.tpot_ms > max_tpot_ms)
    if required and not feasible:
        raise BadInput("no candidate batch fits the memory budgets", "raise --gpu-memory or --cpu-memory")
    if required and not within:
        fastest = min((p for p, _ in feasible), key=lambda p: p.tpot_ms)
        raise BadInput(f"--max-tpot-ms {max_tpot_ms:g} cannot be met: the best achievable is {fastest.tpot_ms:.3g} ms per "
                       f"token (batch {fastest.batch_size}) on this hardware and budget",
                       f"use --max-tpot-ms {round_up(fastest.tpot_ms * 1.05)} or more")
    best, binding = _pick([(p, s.binding) for p, s in within]) if within else (None, ())
    return SearchResult(best=best, best_binding=binding, predictions=tuple(p for p, _ in feasible),
                        infeasible_batch=None, latency_rejected=rejected, lp_solve_s=result.solve_s,
                        lp_build_s=result.build_s, lp_solve_s_each=(result.solve_s,), num_candidates=len(pairs), num_variables=result.num_variables)


def without_pool(problem: Problem) -> Problem:
    """The same problem with no host budget: the no-pool baseline at the same device budget."""
    return dataclasses.replace(problem, budgets=dataclasses.replace(problem.budgets, host_memory_bytes=0))
