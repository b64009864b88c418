"""Say in words why the plan is what it is: which constraint binds, and what the pool buys.

Each sentence names the constraint and puts the numbers behind it side by side, e.g.
"link-bound: pooled bytes per decode step need 31 ms at 52 GB/s; compute hides 24 ms".
Left out: finding the plan (search.py) and rendering (the CLI).
"""
from __future__ import annotations

from pie_core.sizes import GIB, MIB
from planner.cost_model import Prediction, Problem, eviction_bytes
from planner.search import TIE_FRACTION, SearchResult

STALL_NOTICE_FRACTION = 0.01  # a stall under 1% of the step counts as hidden


def _bytes(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / MIB:.1f} MiB"


def _copy_compute_ms(problem: Problem, prediction: Prediction) -> tuple[float, float]:
    layers = problem.costs.num_layers
    return prediction.copy_layer_s * layers * 1e3, prediction.compute_layer_s * layers * 1e3


def _evictions(problem: Problem, best: Prediction) -> str:
    """The steady evictions a pooled step pays before its forward (cost_model.eviction_bytes), in words."""
    moved = float(eviction_bytes(problem, best.batch_size, best.split.copied_kv_bytes, best.split.rebuilt_kv_bytes))
    return (f"; evicting the new tokens' K/V to the pool ({_bytes(moved)} per step) adds "
            f"{moved / problem.costs.link_bytes_per_s * 1e3:.2f} ms before each forward")


def link_sentence(problem: Problem, best: Prediction) -> tuple[str, str]:
    binding, sentence = _link_sentence(problem, best)
    return binding, sentence + (_evictions(problem, best) if best.pooled_bytes > 0 else "")


def _link_sentence(problem: Problem, best: Prediction) -> tuple[str, str]:
    gbps = problem.costs.link_bytes_per_s / 1e9
    copy_ms, compute_ms = _copy_compute_ms(problem, best)
    if best.pooled_bytes <= 0:
        return "device-only", (f"no pool: the batch's KV ({_bytes(problem.kv_need_bytes(best.batch_size))}) fits in device "
                               f"memory, so nothing crosses the link")
    if not problem.costs.copies_overlap:
        return "link-bound", (f"memcpy pool: on a CPU-only machine the copies share the cores, so pooled bytes per decode "
                              f"step ({_bytes(best.streamed_bytes_per_step)}) add {copy_ms:.1f} ms at {gbps:.0f} GB/s to "
                              f"{compute_ms:.1f} ms of compute")
    if best.copy_layer_s > best.compute_layer_s or best.stall_step_s > best.copy_layer_s * 1.01 + 1e-9:
        return "link-bound", (f"link-bound: pooled bytes per decode step ({_bytes(best.streamed_bytes_per_step)}) need "
                              f"{copy_ms:.1f} ms at {gbps:.0f} GB/s; compute hides {compute_ms:.1f} ms, so each step "
                              f"stalls {best.stall_step_s * 1e3:.1f} ms (prefetch depth {best.prefetch_depth})")
    return "transparent", (f"transparent: pooled bytes per decode step ({_bytes(best.streamed_bytes_per_step)}) need "
                           f"{copy_ms:.1f} ms at {gbps:.0f} GB/s, hidden behind {compute_ms:.1f} ms of compute; only the "
                           f"first layer's copy ({best.stall_step_s * 1e3:.2f} ms) is exposed (prefetch depth {best.prefetch_depth})")


def batch_sentence(problem: Problem, result: SearchResult, max_tpot_ms: float | None) -> tuple[str, str]:
    best = result.best
    faster = [p for p in result.latency_rejected if p.output_tok_s > best.output_tok_s]
    if faster:
        top = max(faster, key=lambda p: p.output_tok_s)
        return "latency", (f"latency-bound: batch {top.batch_size} would give {top.output_tok_s:,.0f} tok/s at "
                           f"{top.tpot_ms:.1f} ms per token, above --max-tpot-ms {max_tpot_ms:g}; batch "
                           f"{best.batch_size} keeps {best.tpot_ms:.1f} ms")
    larger = [p for p in result.predictions if p.batch_size > best.batch_size]
    if not larger:
        if result.infeasible_batch is not None:
            b = result.infeasible_batch
            return "memory", (f"memory-bound: batch {b} would hold {_bytes(problem.kv_need_bytes(b))} of KV; the device "
                              f"has {_bytes(max(0.0, problem.device_free_bytes(b)))} for KV and staging after "
                              f"{_bytes(problem.costs.weight_bytes)} of weights, the pool "
                              f"{_bytes(problem.budgets.host_memory_bytes)}")
        return "batch cap", (f"batch-capped: batch {best.batch_size} is the largest allowed (--max-num-seqs or "
                             f"max_num_batched_tokens {problem.budgets.max_num_batched_tokens})")
    nxt = min(larger, key=lambda p: (p.batch_size, -p.output_tok_s))
    flat = [p for p in larger if p.output_tok_s >= best.output_tok_s * (1 - TIE_FRACTION)]
    if flat:
        top = max(flat, key=lambda p: p.output_tok_s)
        return "flat", (f"throughput is flat beyond batch {best.batch_size}: batch {top.batch_size} predicts "
                        f"{top.output_tok_s:,.0f} tok/s, within {TIE_FRACTION:.1%}, so the smaller pool and batch are kept")
    rebuilds_more = nxt.split.rebuilt_kv_bytes > best.split.rebuilt_kv_bytes * 1.001 + 1.0
    if nxt.stall_step_s > best.stall_step_s * 1.05 + 1e-6 or rebuilds_more or nxt.copy_layer_s >= 0.98 * nxt.compute_layer_s:
        copy_ms, compute_ms = _copy_compute_ms(problem, nxt)
        rebuilt = (f" (which includes rebuilding {_bytes(nxt.split.rebuilt_kv_bytes)} of pooled KV to shed link bytes)"
                   if rebuilds_more and nxt.pooled_bytes > 0 else "")
        return "link", (f"link-bound beyond batch {best.batch_size}: at batch {nxt.batch_size} the pooled bytes per step "
                        f"({_bytes(nxt.streamed_bytes_per_step)}) need {copy_ms:.1f} ms at "
                        f"{problem.costs.link_bytes_per_s / 1e9:.0f} GB/s against {compute_ms:.1f} ms of compute{rebuilt}, "
                        f"a {nxt.stall_step_s * 1e3:.1f} ms stall per step: {nxt.output_tok_s:,.0f} tok/s against "
                        f"{best.output_tok_s:,.0f}")
    return "throughput peak", (f"throughput peaks at batch {best.batch_size}: batch {nxt.batch_size} predicts "
                               f"{nxt.output_tok_s:,.0f} tok/s because per-step attention and prefill time grow "
                               f"faster than the batch")


def memory_sentences(problem: Problem, best: Prediction) -> list[tuple[str, str]]:
    out = []
    split = best.split
    used = problem.costs.weight_bytes + split.device_kv_bytes + split.staging_bytes + problem.workspace_bytes(best.batch_size)
    out.append(("device memory", f"device memory: weights {_bytes(problem.costs.weight_bytes)} + KV {_bytes(split.device_kv_bytes)} "
                f"+ staging {_bytes(split.staging_bytes)} + activations {_bytes(problem.workspace_bytes(best.batch_size))} "
                f"= {_bytes(used)} of {_bytes(problem.budgets.usable_device_bytes())} usable "
                f"({problem.budgets.fragmentation_fraction:.0%} kept for fragmentation)"))
    host_used = best.streamed_bytes_per_step
    if best.pooled_bytes > 0 and host_used >= problem.budgets.host_memory_bytes * 0.999:
        out.append(("host memory", f"host-memory-bound: the pool fills all {_bytes(problem.budgets.host_memory_bytes)} of --cpu-memory"))
    return out


def rebuild_sentence(problem: Problem, best: Prediction) -> tuple[str, str] | None:
    shape = problem.shape
    if not problem.costs.rebuild_allowed:
        return ("no rebuild", f"no rebuild: hidden {shape.hidden_size} >= 2 x kv_heads x head_dim = {2 * shape.kv_dim}, "
                f"so activations would move as many bytes as K/V or more")
    if best.pooled_bytes <= 0:
        return None
    share = best.split.rebuilt_kv_bytes / best.pooled_bytes
    if share <= 0:
        return ("copy only", f"copy only: rebuilding K/V would halve the bytes ({problem.costs.activation_ratio:.2f} of KV) but the "
                f"projections cost more compute than the link time they save at this batch")
    return ("rebuild", f"rebuild {share:.0%} of the pool from activations ({problem.costs.activation_ratio:.2f} of the KV "
            f"bytes), trading link time for projection compute")


def baseline_sentence(best: Prediction, baseline: Prediction) -> str:
    ratio = best.output_tok_s / baseline.output_tok_s if baseline.output_tok_s > 0 else float("inf")
    return (f"against no pool at the same device budget (batch {baseline.batch_size}, {baseline.output_tok_s:,.0f} tok/s, "
            f"{baseline.tpot_ms:.1f} ms/token): {ratio:.2f}x throughput at {best.tpot_ms:.1f} ms/token")


def explain(problem: Problem, result: SearchResult, baseline: Prediction, max_tpot_ms: float | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(binding constraint names, sentences)."""
    best = result.best
    parts = [link_sentence(problem, best), batch_sentence(problem, result, max_tpot_ms), *memory_sentences(problem, best)]
    rebuild = rebuild_sentence(problem, best)
    if rebuild:
        parts.append(rebuild)
    names = {name for name, _ in parts}
    device_binds = best.pooled_bytes > 0 or "memory" in names
    binding = tuple(name for name, _ in parts if name in ("link-bound", "link", "latency", "memory", "host memory",
                                                           "throughput peak", "batch cap") or (name == "device memory" and device_binds))
    lines = tuple(text for _, text in parts) + (baseline_sentence(best, baseline),)
    return binding, lines
