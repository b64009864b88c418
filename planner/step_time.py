"""One engine iteration's predicted time: the step-time function the planner and the simulator share.

An iteration (one `Scheduler.schedule()` and one forward pass) is an `IterationWork`: prefill
chunks (their tokens, and their causal attention pairs `sum((prefix + chunk)^2 - prefix^2)`,
which is `len^2` for a whole prompt, the fit's feature), decodes and the tokens they attend over,
rows sent to the lm_head, pooled bytes streamed back over the link (all layers), pooled tokens
rebuilt from activations, and bytes moved between tiers before the forward (restores, evictions).

Per layer, compute = the layer's fixed cost once (its weights are read once per forward pass,
whatever it holds: the larger of the decode and prefill fits' fixed terms when both run) + the
decode fit's per-token and per-KV-token terms + the prefill fit's per-token and attention terms
+ rebuild compute; copy = streamed bytes / L / link. Copies overlap compute through `d` staging
slots, so the layer period is `max(compute, copy, (compute + copy) / d)` (d = 1 where copies share
the cores: a CPU-only machine), and the layers cost `copy + L * period` (the first layer's copy is
exposed). On top: the lm_head (fixed + per row), the engine's measured per-iteration overhead
(fixed + per scheduled sequence; 0 until an engine calibration measures it), and tier moves,
copied synchronously at link speed. Works on floats and numpy arrays alike, so the planner's
exhaustive check evaluates this very code. Left out: batch-shape effects the linear fits miss
(kernel tiling steps, cache effects), and copies of moves overlapping anything.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

ModelCosts = Any  # planner.cost_model.ModelCosts, which imports this module (so not imported back)


class IterationWork(NamedTuple):
    """What one iteration does (counts over the whole batch; bytes over all layers)."""

    num_decode: float = 0  # decoding sequences (one token each)
    decode_context_tokens: float = 0  # sum over decodes of the tokens each attends over
    num_prefill_tokens: float = 0  # sum of prefill chunk lengths
    prefill_attention_pairs: float = 0  # sum over chunks of (prefix + chunk)^2 - prefix^2
    num_sampled: float = 0  # rows through the lm_head (every decode, prefills that end their prompt)
    streamed_bytes: float = 0  # pooled bytes copied back for this forward (KV and rebuild activations)
    rebuilt_tokens: float = 0  # pooled tokens whose K/V are recomputed (per layer)
    moved_bytes: float = 0  # restores and evictions before the forward


class StepTime(NamedTuple):
    total_s: float
    compute_layer_s: float  # one layer's compute
    copy_layer_s: float  # one layer's streamed bytes over the link
    period_layer_s: float
    layers_s: float  # copy + L * period
    forward_s: float  # layers without their stall, plus the lm_head (what the engine counts as compute)
    stall_s: float  # time the layers waited on copies: layers_s - L * compute
    overhead_s: float  # per-iteration engine work outside the forward
    moves_s: float  # tier moves before the forward


def decode_layer_s(costs: ModelCosts, num_decode, context_tokens):
    """The decode fit's per-token and per-KV-token terms of one layer (no fixed term)."""
    return costs.decode_per_token_s * num_decode + costs.decode_per_kv_token_s * context_tokens


def prefill_layer_s(costs: ModelCosts, num_tokens, attention_pairs):
    """The prefill fit's per-token and attention terms of one layer (no fixed term)."""
    return costs.prefill_per_token_s * num_tokens + costs.prefill_per_token_sq_s * attention_pairs


def layer_fixed_s(costs: ModelCosts, has_decode, has_prefill):
    """The layer's fixed cost, paid once per forward pass: the larger fit's when both phases run."""
    return np.maximum(costs.decode_fixed_s * has_decode, costs.prefill_fixed_s * has_prefill)


def head_s(costs: ModelCosts, num_sampled):
    return costs.head_fixed_s * (num_sampled > 0) + costs.head_per_token_s * num_sampled


def overhead_s(costs: ModelCosts, num_sequences):
    return costs.iteration_fixed_s + costs.iteration_per_seq_s * num_sequences


def overlap(costs: ModelCosts, compute_layer, copy_layer, depth: int) -> tuple:
    """(period, layers) under the prefetch overlap rule: period = max(compute, copy, (compute + copy) / d)."""
    period = np.maximum(np.maximum(compute_layer, copy_layer), (compute_layer + copy_layer) / costs.overlap_depth(depth))
    return period, copy_layer + costs.num_layers * period


def step_time(costs: ModelCosts, work: IterationWork, depth: int, num_sequences=None) -> StepTime:
    """Predicted time of one iteration; `num_sequences` (default: decodes + sampled prefills) prices the overhead."""
    has_decode = work.num_decode > 0
    has_prefill = work.num_prefill_tokens > 0
    compute = (layer_fixed_s(costs, has_decode, has_prefill) + decode_layer_s(costs, work.num_decode, work.decode_context_tokens)
               + prefill_layer_s(costs, work.num_prefill_tokens, work.prefill_attention_pairs)
               + costs.rebuild_per_token_s * work.rebuilt_tokens)
    copy = work.streamed_bytes / costs.num_layers / costs.link_bytes_per_s
    period, layers = overlap(costs, compute, copy, depth)
    head = head_s(costs, work.num_sampled)
    overhead = overhead_s(costs, work.num_sampled if num_sequences is None else num_sequences)
    moves = work.moved_bytes / costs.link_bytes_per_s
    stall = layers - costs.num_layers * compute
    return StepTime(total_s=layers + head + overhead + moves, compute_layer_s=compute, copy_layer_s=copy,
                    period_layer_s=period, layers_s=layers, forward_s=costs.num_layers * compute + head, stall_s=stall,
                    overhead_s=overhead, moves_s=moves)


def decode_work(num_decode, mean_context_tokens, streamed_bytes=0.0, rebuilt_tokens=0.0) -> IterationWork:
    """A decode-only iteration of `num_decode` sequences at a mean context (the planner's steady state)."""
    return IterationWork(num_decode=num_decode, decode_context_tokens=num_decode * mean_context_tokens,
                         num_sampled=num_decode, streamed_bytes=streamed_bytes, rebuilt_tokens=rebuilt_tokens)
