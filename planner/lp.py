"""The LP (PuLP, CBC): how to split each candidate's KV between device, copied pool and rebuilt pool.

Candidate batch limits and prefetch depths are enumerated outside the LP (FlexGen-style); each
candidate (b, d) gets its own block of named variables and constraints, one helper per
constraint group. The blocks share nothing, so one CBC call solves every candidate's LP at
once (the sum of independent minimisations is minimised block by block). A shortfall
variable per block, priced far above any time, keeps a candidate that cannot hold its KV from
making the whole LP infeasible; such candidates are reported as infeasible. Units inside the
LP are GiB and milliseconds so CBC sees well-scaled numbers. Left out: choosing among
candidates (search.py) and wording (explain.py).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import pulp

from pie_core.errors import RuntimeFailure
from pie_core.sizes import GIB
from planner.cost_model import Problem, Split

SHORTFALL_PENALTY_MS_PER_GIB = 1e7


@dataclass(frozen=True)
class CandidateSolution:
    batch_size: int
    prefetch_depth: int
    split: Split
    shortfall_bytes: float  # KV that fits nowhere; > 0 means the candidate is infeasible
    binding: tuple[str, ...]  # names of constraint groups with (near) zero slack


@dataclass(frozen=True)
class _Block:
    batch_size: int
    depth: int
    device_kv: pulp.LpVariable
    copied_kv: pulp.LpVariable
    rebuilt_kv: pulp.LpVariable
    staging: pulp.LpVariable
    shortfall: pulp.LpVariable
    period_ms: pulp.LpVariable
    constraints: dict


def _variables(lp: pulp.LpProblem, problem: Problem, tag: str) -> dict:
    upper_rebuilt = None if problem.costs.rebuild_allowed else 0.0
    # PuLP >= 3.3 attaches variables to the problem; older PuLP builds them free-standing.
    new = lp.add_variable if hasattr(lp, "add_variable") else (lambda name, low, up=None: pulp.LpVariable(name, low, up))
    return {
        "device_kv": new(f"device_kv_gib_{tag}", 0),
        "copied_kv": new(f"pooled_copied_kv_gib_{tag}", 0),
        "rebuilt_kv": new(f"pooled_rebuilt_kv_gib_{tag}", 0, upper_rebuilt),
        "staging": new(f"staging_gib_{tag}", 0),
        "shortfall": new(f"kv_shortfall_gib_{tag}", 0),
        "period_ms": new(f"layer_period_ms_{tag}", 0),
    }


def _cbc() -> pulp.LpSolver:
    """The CBC build bundled with PuLP (the only one installed here; PuLP 3.3 marks it deprecated for 4.0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False)


def _streamed(problem: Problem, v: dict):
    return v["copied_kv"] + problem.costs.activation_ratio * v["rebuilt_kv"]


def _capacity_constraints(problem: Problem, b: int, v: dict) -> dict:
    return {"capacity": v["device_kv"] + v["copied_kv"] + v["rebuilt_kv"] + v["shortfall"] >= problem.kv_need_bytes(b) / GIB,
            "tail blocks": v["device_kv"] >= problem.tail_bytes(b) / GIB}


def _memory_constraints(problem: Problem, b: int, v: dict) -> dict:
    return {"device memory": v["device_kv"] + v["staging"] <= problem.device_free_bytes(b) / GIB,
            "host memory": _streamed(problem, v) <= problem.budgets.host_memory_bytes / GIB}


def _staging_constraints(problem: Problem, d: int, v: dict) -> dict:
    return {"staging": v["staging"] >= d / problem.costs.num_layers * _streamed(problem, v)}


def _time_terms(problem: Problem, b: int, v: dict) -> tuple:
    """(compute ms, copy ms) of one layer as linear expressions."""
    costs = problem.costs
    rebuild_ms_per_gib = costs.rebuild_per_token_s * 1e3 * GIB / (costs.kv_bytes_per_token_layer * costs.num_layers)
    copy_ms_per_gib = 1e3 * GIB / (costs.num_layers * costs.link_bytes_per_s)
    compute = problem.compute_layer_base_s(b) * 1e3 + rebuild_ms_per_gib * v["rebuilt_kv"]
    return compute, copy_ms_per_gib * _streamed(problem, v)


def _time_constraints(problem: Problem, b: int, d: int, v: dict) -> dict:
    compute, copy = _time_terms(problem, b, v)
    return {"compute-bound": v["period_ms"] >= compute,
            "link-bound": v["period_ms"] >= copy,
            "prefetch depth": problem.costs.overlap_depth(d) * v["period_ms"] >= compute + copy}


def _objective(problem: Problem, b: int, v: dict):
    """Layers' time per decode step (ms): the first layer's copy, then L periods; plus the shortfall price."""
    _, copy = _time_terms(problem, b, v)
    return problem.costs.num_layers * v["period_ms"] + copy + SHORTFALL_PENALTY_MS_PER_GIB * v["shortfall"]


@dataclass(frozen=True)
class SolveResult:
    solutions: tuple[CandidateSolution, ...]
    solve_s: float  # CBC wall time
    build_s: float  # building the PuLP model
    num_variables: int
    num_constraints: int


def solve_candidates(problem: Problem, candidates: list[tuple[int, int]]) -> SolveResult:
    """Solve the split LP of every (batch_size, prefetch_depth) candidate in one CBC call."""
    start = time.perf_counter()
    lp = pulp.LpProblem("pie_kv_pool_plan", pulp.LpMinimize)
    blocks, objective, constraint_names = [], [], []
    for b, d in candidates:
        v = _variables(lp, problem, f"b{b}_d{d}")
        constraints = {**_capacity_constraints(problem, b, v), **_memory_constraints(problem, b, v),
                       **_staging_constraints(problem, d, v), **_time_constraints(problem, b, d, v)}
        for name, constraint in constraints.items():
            constraint_name = f"{name.replace(' ', '_').replace('-', '_')}_b{b}_d{d}"
            lp += constraint, constraint_name
            constraint_names.append(constraint_name)
        objective.append(_objective(problem, b, v))
        blocks.append(_Block(b, d, v["device_kv"], v["copied_kv"], v["rebuilt_kv"], v["staging"], v["shortfall"],
                             v["period_ms"], constraints))
    lp += pulp.lpSum(objective)
    built = time.perf_counter()
    status = lp.solve(_cbc())
    solved = time.perf_counter()
    if pulp.LpStatus[status] != "Optimal":
        raise RuntimeFailure(f"the planning LP ended {pulp.LpStatus[status]}", "rerun with PIE_DEBUG=1 and report it")
    solutions = tuple(_read_block(problem, block) for block in blocks)
    return SolveResult(solutions, solve_s=solved - built, build_s=built - start,
                       num_variables=len(lp.variables()), num_constraints=len(constraint_names))


def _value(variable: pulp.LpVariable) -> float:
    return max(0.0, float(variable.value() or 0.0)) * GIB


def _read_block(problem: Problem, block: _Block) -> CandidateSolution:
    copied, rebuilt = _value(block.copied_kv), _value(block.rebuilt_kv)
    # Staging and device KV cost no time, so the LP may leave them anywhere feasible: take the least
    # staging the depth needs, and give the rest of device memory to device KV.
    staging = block.depth * (copied + problem.costs.activation_ratio * rebuilt) / problem.costs.num_layers
    device = max(_value(block.device_kv), problem.device_free_bytes(block.batch_size) - staging)
    binding = tuple(name for name, c in block.constraints.items()
                    if name not in ("capacity", "tail blocks") and abs(c.slack or 0.0) < 1e-6)
    return CandidateSolution(block.batch_size, block.depth, Split(device, copied, rebuilt, staging),
                             shortfall_bytes=_value(block.shortfall), binding=binding)
