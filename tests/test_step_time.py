"""planner/step_time.py: the one step-time function; the planner's predictions are made of it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost_model import Split, predict
from planner.step_time import IterationWork, decode_work, step_time
from tests.planner_fixtures import problem


def test_planner_prediction_is_the_step_time_of_its_decode_iteration():
    p = problem("opt-13b", "h100-pcie", host_gb=400)
    need = p.kv_need_bytes(64)
    split = Split(need * 0.9, need * 0.1, 0.0, 2 * need * 0.1 / p.costs.num_layers)
    prediction = predict(p, 64, 2, split)
    # with a pool in use the device is full: each decode's new token evicts a token's worth of K/V first
    tokens = 64 * (1 + p.workload.mean_input_tokens / p.workload.mean_output_tokens)  # decodes and new prompts
    work = decode_work(64, p.workload.mean_context_tokens, need * 0.1)._replace(moved_bytes=tokens * p.kv_bytes_per_token)
    step = step_time(p.costs, work, 2)
    assert prediction.decode_step_s == pytest.approx(step.total_s)
    assert step.moves_s == pytest.approx(tokens * p.kv_bytes_per_token / p.costs.link_bytes_per_s)
    unpooled = predict(p, 64, 2, Split(need, 0.0, 0.0, 0.0))  # no pool, no evictions
    assert unpooled.decode_step_s == pytest.approx(step_time(p.costs, decode_work(64, p.workload.mean_context_tokens), 2).total_s)
    assert prediction.stall_step_s == pytest.approx(step.stall_s)
    assert prediction.output_tok_s == pytest.approx(64 / (step.total_s + p.prefill_per_step_s(64)))


def test_overlap_rule_hides_a_short_copy_and_exposes_a_long_one():
    costs = problem("opt-13b", "h100-pcie").costs
    short = step_time(costs, decode_work(64, 500, streamed_bytes=1e6), 2)
    assert short.copy_layer_s < short.compute_layer_s
    assert short.stall_s == pytest.approx(short.copy_layer_s)  # only the first layer's copy waits
    long = step_time(costs, decode_work(64, 500, streamed_bytes=1e11), 2)
    assert long.period_layer_s == pytest.approx(long.copy_layer_s)
    serial = step_time(dataclasses.replace(costs, copies_overlap=False), decode_work(64, 500, streamed_bytes=1e6), 4)
    assert serial.period_layer_s == pytest.approx(serial.compute_layer_s + serial.copy_layer_s)


def test_fixed_layer_cost_is_paid_once_per_forward_and_prefix_attention_costs_more():
    costs = problem("opt-13b", "h100-pcie").costs
    decode = step_time(costs, decode_work(16, 300), 2)
    prefill = step_time(costs, IterationWork(num_prefill_tokens=256, prefill_attention_pairs=256**2, num_sampled=1), 2)
    mixed = step_time(costs, IterationWork(num_decode=16, decode_context_tokens=16 * 300, num_prefill_tokens=256,
                                           prefill_attention_pairs=256**2, num_sampled=17), 2)
    assert mixed.total_s < decode.total_s + prefill.total_s
    after_prefix = step_time(costs, IterationWork(num_prefill_tokens=256, prefill_attention_pairs=(512 + 256)**2 - 512**2,
                                                  num_sampled=1), 2)
    assert after_prefix.total_s > prefill.total_s


def test_moves_and_overhead_add_and_arrays_work():
    costs = dataclasses.replace(problem("opt-13b", "h100-pcie").costs, iteration_fixed_s=1e-3, iteration_per_seq_s=1e-5)
    base = step_time(costs, decode_work(8, 100), 2)
    moved = step_time(costs, decode_work(8, 100)._replace(moved_bytes=costs.link_bytes_per_s * 0.01), 2)
    assert moved.total_s - base.total_s == pytest.approx(0.01)
    assert base.overhead_s == pytest.approx(1e-3 + 8e-5)
    batches = np.array([1.0, 8.0, 64.0])
    times = step_time(costs, decode_work(batches, 100), 2).total_s
    assert times.shape == (3,) and np.all(np.diff(times) > 0)
    assert times[1] == pytest.approx(base.total_s)
