"""The cost model: pure functions from (model shape, hardware, dtype, workload, budgets) to time.

A decode layer takes `t(b, ctx) = fixed + per_token * b + per_kv_token * b * ctx` (fitted by
`pie profile`, rescaled to this model by weight bytes, FLOPs and KV bytes; the roofline of a
datasheet preset otherwise). A candidate runs `b` sequences with a prefetch ring of depth `d`
and splits the KV bytes into G (on the device), C (pooled, copied back each step), R (pooled
as layer-input activations, rebuilt with the K/V projections) and S (device staging).
Per layer, copies of the pooled bytes overlap compute through `d` slots, so the layer period is
`max(compute, copy, (compute + copy) / d)` and a decode step costs `copy + L * period + head`.
On a CPU-only machine the "link" is a memcpy on the same cores and memory bus as the compute,
so copies are not overlapped (the period is compute + copy whatever the depth). The step itself
is priced by planner/step_time.py, the one function the simulator (runners/sim_runner.py) uses
too, so plans and simulations cannot drift apart. Everything here is linear in (G, C, R, S) for
a fixed (b, d) except the max, which the LP writes as three inequalities.
Left out: solving (lp.py), words (explain.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pie_core.dtypes import dtype_bytes
from pie_core.shapes import ModelShape
from planner.budgets import Budgets, WorkloadStats, activation_workspace_bytes
from planner.hardware import HardwareSpec
from planner.step_time import (
    IterationWork,
    decode_layer_s,
    decode_work,
    head_s,
    overhead_s,
    prefill_layer_s,
    step_time,
)

GB = 1e9
TOLERANCE = 1e-6


@dataclass(frozen=True)
class ModelCosts:
    """Per-layer time coefficients of one model on one machine (seconds, bytes)."""

    num_layers: int
    kv_bytes_per_token_layer: int
    activation_ratio: float  # activation bytes per KV byte (h / (2 * kv_heads * head_dim))
    rebuild_allowed: bool
    weight_bytes: int
    decode_fixed_s: float
    decode_per_token_s: float
    decode_per_kv_token_s: float
    rebuild_per_token_s: float  # per layer, per pooled token rebuilt (K and V projections)
    head_fixed_s: float  # lm_head per decode step
    head_per_token_s: float
    prefill_fixed_s: float  # per layer, per prefill call
    prefill_per_token_s: float  # per layer
    prefill_per_token_sq_s: float  # per layer, times sum of squared prompt lengths
    link_bytes_per_s: float
    source: str  # "fitted" | "roofline"
    copies_overlap: bool = True  # False on a CPU-only machine: the "link" is a memcpy on the same cores
    iteration_fixed_s: float = 0.0  # engine work per step outside layers and lm_head (measured, else 0)
    iteration_per_seq_s: float = 0.0

    def overlap_depth(self, depth: int) -> int:
        """Depth that hides copies: the prefetch depth, or 1 (copy, then compute) where copies cannot overlap."""
        return depth if self.copies_overlap else 1


def model_costs(shape: ModelShape, hardware: HardwareSpec, dtype: str) -> ModelCosts:
    """Coefficients for `shape`: the profile's fit rescaled to this model, or the preset roofline."""
    p = dtype_bytes(dtype)
    layer_weight = shape.layer_weight_bytes(dtype)
    layer_flops = shape.layer_flops_per_token()
    kv_layer = shape.kv_bytes_per_token_per_layer(dtype)
    head_params = shape.vocab_size * shape.hidden_size
    common = dict(num_layers=shape.num_layers, kv_bytes_per_token_layer=kv_layer,
                  activation_ratio=shape.hidden_size / (2 * shape.kv_dim),
                  rebuild_allowed=shape.rebuild_saves_bytes, weight_bytes=shape.weight_bytes(dtype),
                  link_bytes_per_s=hardware.link_h2d_gbps * GB, copies_overlap=not hardware.link_is_memcpy,
                  iteration_fixed_s=hardware.iteration_fixed_s, iteration_per_seq_s=hardware.iteration_per_seq_s)
    fit = hardware.decode_fit
    if fit is None:
        flops_per_s = hardware.matmul_tflops * 1e12
        bytes_per_s = hardware.memory_bandwidth_gbps * GB
        return ModelCosts(**common, decode_fixed_s=layer_weight / bytes_per_s, decode_per_token_s=layer_flops / flops_per_s,
                          decode_per_kv_token_s=kv_layer / bytes_per_s,
                          rebuild_per_token_s=4 * shape.hidden_size * shape.kv_dim / flops_per_s,
                          head_fixed_s=head_params * p / bytes_per_s, head_per_token_s=2 * head_params / flops_per_s,
                          prefill_fixed_s=0.0, prefill_per_token_s=layer_flops / flops_per_s,
                          prefill_per_token_sq_s=2 * shape.hidden_size / flops_per_s, source="roofline")
    # Rescaled to this model, and by an engine calibration's scale where one was measured (hardware.py).
    weight_ratio = layer_weight / fit.layer_weight_bytes
    flops_ratio = layer_flops / fit.layer_flops_per_token
    kv_ratio = kv_layer / fit.kv_bytes_per_token_layer
    decode_scale, prefill_scale = hardware.decode_scale, hardware.prefill_scale
    # Achieved FLOP/s of the fitted layer, used for the parts the fit does not cover (head, rebuild).
    flops_per_s = fit.layer_flops_per_token / fit.per_token_s if fit.per_token_s > 0 else hardware.matmul_tflops * 1e12
    prefill = hardware.prefill_fit
    if prefill is not None:
        prefill_terms = dict(prefill_fixed_s=prefill.fixed_s * weight_ratio * prefill_scale,
                             prefill_per_token_s=prefill.per_token_s * flops_ratio * prefill_scale,
                             prefill_per_token_sq_s=prefill.per_token_sq_s * kv_ratio * prefill_scale)
    else:
        prefill_terms = dict(prefill_fixed_s=0.0, prefill_per_token_s=layer_flops / flops_per_s,
                             prefill_per_token_sq_s=2 * shape.hidden_size / flops_per_s)
    # The lm_head is one matmul: reading its weights at the measured memory bandwidth, and its FLOPs at
    # the measured matmul rate. (The layer fit's fixed term also holds a layer's dozens of small ops'
    # launch costs, so scaling it by weight bytes overpriced OPT-125m's head several times; docs/simulator.md.)
    return ModelCosts(**common, decode_fixed_s=fit.fixed_s * weight_ratio * decode_scale,
                      decode_per_token_s=fit.per_token_s * flops_ratio * decode_scale,
                      decode_per_kv_token_s=fit.per_kv_token_s * kv_ratio * decode_scale,
                      rebuild_per_token_s=4 * shape.hidden_size * shape.kv_dim / flops_per_s,
                      head_fixed_s=head_params * p / (hardware.memory_bandwidth_gbps * GB),
                      head_per_token_s=2 * head_params / (hardware.matmul_tflops * 1e12),
                      **prefill_terms, source="fitted")


@dataclass(frozen=True)
class Problem:
    """Everything fixed while the planner searches: model, costs, budgets, workload."""

    shape: ModelShape
    dtype: str
    costs: ModelCosts
    budgets: Budgets
    workload: WorkloadStats

    @property
    def kv_bytes_per_token(self) -> int:
        return self.costs.kv_bytes_per_token_layer * self.costs.num_layers

    @property
    def block_bytes(self) -> int:
        """One KV block across all layers (the engine's block unit)."""
        return self.kv_bytes_per_token * self.budgets.block_size

    def kv_need_bytes(self, batch_size: int) -> float:
        """KV held by `batch_size` running sequences: mean context plus half a block of rounding each."""
        tokens = self.workload.mean_context_tokens + self.budgets.block_size / 2
        return batch_size * tokens * self.kv_bytes_per_token

    def tail_bytes(self, batch_size: int) -> float:
        """Each sequence's tail block stays on the device."""
        return batch_size * self.block_bytes

    def workspace_bytes(self, batch_size: int) -> float:
        return activation_workspace_bytes(self.shape, dtype_bytes(self.dtype), batch_size, self.budgets.max_num_batched_tokens)

    def device_free_bytes(self, batch_size: int) -> float:
        """Device bytes left for KV and staging after weights, activations and fragmentation headroom."""
        return self.budgets.usable_device_bytes() - self.costs.weight_bytes - self.workspace_bytes(batch_size)

    def compute_layer_base_s(self, batch_size: int) -> float:
        """One decode layer of `batch_size` sequences at the mean context, before rebuild compute (step_time.py)."""
        c = self.costs
        return c.decode_fixed_s + decode_layer_s(c, batch_size, batch_size * self.workload.mean_context_tokens)

    def head_s(self, batch_size: int) -> float:
        """Per decode step outside the layers: the lm_head, plus measured engine overhead if any."""
        return head_s(self.costs, batch_size) + overhead_s(self.costs, batch_size)

    def prefill_request_s(self) -> float:
        """Prefill of one mean-length prompt over all layers (the fixed part shared by a chunk of prompts)."""
        c, n = self.costs, self.workload.mean_input_tokens
        prompts_per_chunk = max(1, self.budgets.max_num_batched_tokens // max(1, int(n)))
        return c.num_layers * (c.prefill_fixed_s / prompts_per_chunk + prefill_layer_s(c, n, n * n))

    def prefill_per_step_s(self, batch_size: int) -> float:
        """Prefill time spread over decode steps: b / out new prompts start per step in steady state."""
        return batch_size / self.workload.mean_output_tokens * self.prefill_request_s()


@dataclass(frozen=True)
class Split:
    """Byte placement of a candidate's KV (totals over all layers)."""

    device_kv_bytes: float  # G
    copied_kv_bytes: float  # C: pooled, copied back as K/V
    rebuilt_kv_bytes: float  # R: pooled as activations (R * activation_ratio bytes), rebuilt
    staging_bytes: float  # S


@dataclass(frozen=True)
class Prediction:
    batch_size: int
    prefetch_depth: int
    split: Split
    feasible: bool
    violations: tuple[str, ...]
    compute_layer_s: float
    copy_layer_s: float
    period_layer_s: float
    decode_step_s: float
    stall_step_s: float
    prefill_step_s: float
    tpot_ms: float
    output_tok_s: float
    pooled_bytes: float
    streamed_bytes_per_step: float
    details: dict = field(default_factory=dict)


def streamed_bytes(problem: Problem, split: Split) -> float:
    """Bytes crossing the link each decode step (all layers): copied KV plus rebuild activations."""
    return split.copied_kv_bytes + problem.costs.activation_ratio * split.rebuilt_kv_bytes


def memory_slacks(problem: Problem, batch_size: int, depth: int, g, c, r, s) -> dict:
    """Slack of each memory constraint (>= 0 when it holds). Works on floats and numpy arrays alike."""
    streamed = c + problem.costs.activation_ratio * r
    return {
        "capacity": g + c + r - problem.kv_need_bytes(batch_size),
        "tail blocks": g - problem.tail_bytes(batch_size),
        "device memory": problem.device_free_bytes(batch_size) - (g + s),
        "host memory": problem.budgets.host_memory_bytes - streamed,
        "staging": s - depth * streamed / problem.costs.num_layers,
        "rebuild allowed": (0.0 if problem.costs.rebuild_allowed else -r) + 0 * g,
    }


def step_times(problem: Problem, batch_size: int, depth: int, c, r) -> tuple:
    """(compute, copy, period) per layer and the layers' total per decode step, in seconds.

    Works on floats and numpy arrays alike, so exhaustive enumeration evaluates this very code.
    """
    time = step_time(problem.costs, decode_step_work(problem, batch_size, c, r), depth)
    return time.compute_layer_s, time.copy_layer_s, time.period_layer_s, time.layers_s


def decode_step_work(problem: Problem, batch_size: int, c, r) -> IterationWork:
    """The planner's steady decode iteration: `batch_size` sequences at the mean context, C copied and R rebuilt.

    With part of the KV pooled the device is full (the scheduler restores pooled blocks whenever
    it has room), so every new token's K/V needs device room that an eviction makes: as much older
    K/V (or its activations, for the rebuilt share) goes to the pool, a tier move copied before
    the forward (`eviction_bytes`).
    """
    costs = problem.costs
    rebuilt_tokens = r / (costs.kv_bytes_per_token_layer * costs.num_layers)
    work = decode_work(batch_size, problem.workload.mean_context_tokens, c + costs.activation_ratio * r, rebuilt_tokens)
    return work._replace(moved_bytes=eviction_bytes(problem, batch_size, c, r))


def eviction_bytes(problem: Problem, batch_size: int, c, r):
    """Bytes evicted to the pool per steady decode step, in the pooled kinds' mix (0 with no pool): the
    tokens written per step, one per decoding sequence plus the new prompts' (b / out prompts start
    per step in steady state, as `Problem.prefill_per_step_s` spreads their prefill)."""
    pooled = c + r
    mix = (c + problem.costs.activation_ratio * r) / np.maximum(pooled, 1e-30)
    workload = problem.workload
    tokens = batch_size * (1 + workload.mean_input_tokens / workload.mean_output_tokens)
    return np.where(pooled > 0, tokens * problem.kv_bytes_per_token * mix, 0.0)


def violations(problem: Problem, batch_size: int, depth: int, split: Split) -> list[str]:
    """Which memory constraints a candidate breaks (empty when feasible)."""
    g, c, r, s = split.device_kv_bytes, split.copied_kv_bytes, split.rebuilt_kv_bytes, split.staging_bytes
    tolerance = TOLERANCE * max(1.0, problem.kv_need_bytes(batch_size), problem.budgets.usable_device_bytes())
    out = [name for name, slack in memory_slacks(problem, batch_size, depth, g, c, r, s).items() if slack < -tolerance]
    if min(g, c, r, s) < -tolerance:
        out.append("negative bytes")
    if batch_size > problem.budgets.max_num_batched_tokens:
        out.append("batch above max batched tokens")
    return out


def predict(problem: Problem, batch_size: int, depth: int, split: Split) -> Prediction:
    """Predicted decode step, stall, per-token latency and output throughput of one candidate."""
    time = step_time(problem.costs, decode_step_work(problem, batch_size, split.copied_kv_bytes, split.rebuilt_kv_bytes), depth)
    compute, copy, period, layers_s = (float(t) for t in (time.compute_layer_s, time.copy_layer_s, time.period_layer_s, time.layers_s))
    decode_step = float(time.total_s)
    prefill_step = problem.prefill_per_step_s(batch_size)
    tpot_s = decode_step + prefill_step
    broken = violations(problem, batch_size, depth, split)
    return Prediction(batch_size=batch_size, prefetch_depth=depth, split=split, feasible=not broken,
                      violations=tuple(broken), compute_layer_s=compute, copy_layer_s=copy, period_layer_s=period,
                      decode_step_s=decode_step, stall_step_s=layers_s - problem.costs.num_layers * compute,
                      prefill_step_s=prefill_step, tpot_ms=tpot_s * 1e3,
                      output_tok_s=batch_size / tpot_s if not broken else 0.0,
                      pooled_bytes=split.copied_kv_bytes + split.rebuilt_kv_bytes,
                      streamed_bytes_per_step=streamed_bytes(problem, split))


def candidate_batch_sizes(max_batch: int) -> list[int]:
    """Batch limits to try: every size to 8, then steps of about 12%, and the limit itself (FlexGen-style)."""
    sizes, b = [], 1
    while b <= max_batch:
        sizes.append(b)
        b = b + 1 if b < 8 else max(b + 1, int(math.ceil(b * 1.12)))
    if sizes and sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def largest_transparent_share(problem: Problem, batch_size: int, depth: int, tolerance: float = 0.03) -> float:
    """The largest share of a batch's KV that may be pooled while the time per output token stays within
    `tolerance` of the same batch without a pool (throughput within it): where pooling stops being
    transparent (the knee).

    Priced as `predict` prices a plan: the planner's own step time (`decode_step_work`: the share
    streamed back each step under the overlap rule, hidden while copy <= min(1, d - 1) * compute,
    and the steady evictions before the forward, never hidden) plus the prefill spread over the
    steps. 0 when the evictions alone cost more than the tolerance (a slow link), 1 when even a
    whole pooled KV stays within it.
    """
    need = problem.kv_need_bytes(batch_size)
    prefill_s = problem.prefill_per_step_s(batch_size)

    def step_s(share: float) -> float:
        work = decode_step_work(problem, batch_size, share * need, 0.0)
        return float(step_time(problem.costs, work, depth).total_s) + prefill_s

    limit = (1 + tolerance) * step_s(0.0)
    if step_s(1e-9) > limit:
        return 0.0
    if step_s(1.0) <= limit:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if step_s(middle) <= limit else (low, middle)
    return low
