"""Cost model: coefficients from presets and profiles, overlap arithmetic, memory constraints."""
from __future__ import annotations

import pytest

from pie_core.errors import BadInput
from pie_core.shapes import resolve_model
from planner.budgets import WorkloadStats, decode_weighted_context
from planner.cost_model import Split, model_costs, predict, violations
from planner.hardware import PRESET_NAMES, from_profile, preset
from tests.planner_fixtures import problem, synthetic_profile


def test_presets_are_labelled_datasheet_figures():
    for name in PRESET_NAMES:
        spec = preset(name)
        assert spec.source == "preset" and "datasheet" in spec.label
    assert preset("gh200").link_h2d_gbps > 5 * preset("h100-pcie").link_h2d_gbps


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(BadInput) as err:
        preset("h300")
    assert "h100-pcie" in err.value.one_line() and "gh200" in err.value.one_line()


def test_profile_fit_is_used_unchanged_for_its_own_model():
    profile = synthetic_profile("opt-125m")
    costs = model_costs(resolve_model("opt-125m"), from_profile(profile), "bfloat16")
    assert costs.source == "fitted"
    assert costs.decode_fixed_s == pytest.approx(profile.decode_fit.fixed_s)
    assert costs.decode_per_token_s == pytest.approx(profile.decode_fit.per_token_s)
    assert costs.decode_per_kv_token_s == pytest.approx(profile.decode_fit.per_kv_token_s)
    # Rescaled to a bigger model: weight-, FLOP- and KV-proportional terms grow.
    bigger = model_costs(resolve_model("opt-1.3b"), from_profile(profile), "bfloat16")
    assert bigger.decode_fixed_s > costs.decode_fixed_s and bigger.decode_per_kv_token_s > costs.decode_per_kv_token_s


def test_no_pool_has_no_stall_and_period_equals_compute():
    p = problem("opt-13b", "h100-pcie")
    need = p.kv_need_bytes(8)
    result = predict(p, 8, 2, Split(need, 0.0, 0.0, 0.0))
    assert result.feasible and result.stall_step_s == pytest.approx(0.0, abs=1e-12)
    assert result.period_layer_s == pytest.approx(result.compute_layer_s)
    assert result.output_tok_s == pytest.approx(8 / (result.tpot_ms / 1e3))


def _pooled(p, batch, depth, fraction):
    need = p.kv_need_bytes(batch)
    pooled = need * fraction
    staging = depth * pooled / p.costs.num_layers
    return predict(p, batch, depth, Split(need - pooled, pooled, 0.0, staging))


def test_copies_hide_behind_compute_until_the_link_saturates():
    p = problem("opt-13b", "h100-pcie", host_gb=400)
    small = _pooled(p, 64, 2, 0.01)
    assert small.copy_layer_s < small.compute_layer_s
    assert small.stall_step_s == pytest.approx(small.copy_layer_s)  # only the first layer's copy is exposed
    big = _pooled(p, 64, 2, 0.9)
    assert big.copy_layer_s > big.compute_layer_s
    expected = big.copy_layer_s + p.costs.num_layers * big.copy_layer_s - p.costs.num_layers * big.compute_layer_s
    assert big.stall_step_s == pytest.approx(expected)


def test_depth_one_serialises_copy_and_compute():
    p = problem("opt-13b", "h100-pcie", host_gb=400)
    one, two = _pooled(p, 64, 1, 0.05), _pooled(p, 64, 2, 0.05)
    assert one.period_layer_s == pytest.approx(one.compute_layer_s + one.copy_layer_s)
    assert two.period_layer_s < one.period_layer_s


def test_memory_violations_are_named():
    p = problem("opt-30b", "h100-pcie", host_gb=1)
    need = p.kv_need_bytes(64)
    assert "capacity" in violations(p, 64, 2, Split(need / 2, 0.0, 0.0, 0.0))
    assert "device memory" in violations(p, 64, 2, Split(need, 0.0, 0.0, 0.0))
    assert "host memory" in violations(p, 64, 2, Split(need * 0.5, need * 0.5, 0.0, need))
    assert "staging" in violations(p, 8, 2, Split(p.kv_need_bytes(8) * 0.9, p.kv_need_bytes(8) * 0.1, 0.0, 0.0))
    gqa = problem("llama-3-8b", "h100-pcie")
    assert "rebuild allowed" in violations(gqa, 8, 2, Split(gqa.kv_need_bytes(8) * 0.5, 0.0, gqa.kv_need_bytes(8) * 0.5,
                                                          gqa.kv_need_bytes(8)))


def test_kv_arithmetic_matches_the_reference_figures():
    assert resolve_model("opt-30b").kv_bytes_per_token("float16") == 1344 * 1024
    p = problem("opt-30b", "h100-pcie")
    tokens = 161 + 338 / 2 + 16 / 2
    assert p.kv_need_bytes(10) == pytest.approx(10 * tokens * 1344 * 1024)


def test_decode_weighted_context_weighs_requests_by_their_decode_steps():
    assert decode_weighted_context([(100, 51)] * 4) == pytest.approx(125.5)  # equal lengths: p + o / 2
    assert WorkloadStats("w", 100, 51, synthetic=True).mean_context_tokens == pytest.approx(125.5)
    # one long and one short request, same means as (100, 51) each: the long one holds the batch 99 of 100 steps
    mixed = decode_weighted_context([(100, 101), (100, 1)])
    assert mixed == pytest.approx(150.5) and mixed > 100 + 51 / 2
    assert WorkloadStats("w", 100, 51, synthetic=False, decode_context_tokens=mixed).mean_context_tokens == mixed
    assert decode_weighted_context([(10, 1), (20, 1)]) is None  # no decode step at all
    with pytest.raises(BadInput):
        WorkloadStats("w", 100, 51, synthetic=False, decode_context_tokens=0.5)


def test_largest_transparent_share_is_where_the_pooled_token_time_leaves_the_tolerance():
    from planner.cost_model import decode_step_work, largest_transparent_share
    from planner.step_time import step_time

    def token_s(p, share):
        work = decode_step_work(p, 96, share * p.kv_need_bytes(96), 0.0)
        return step_time(p.costs, work, 2).total_s + p.prefill_per_step_s(96)

    gh200 = problem("opt-13b", "gh200")
    knee = largest_transparent_share(gh200, 96, 2, tolerance=0.03)
    assert 0 < knee < 1
    assert token_s(gh200, knee) <= 1.03 * token_s(gh200, 0.0) < token_s(gh200, knee + 0.01)
    assert largest_transparent_share(gh200, 96, 2, tolerance=0.10) > knee
    # over PCIe the steady evictions alone cost more than 3 %: no pooled share is transparent
    h100 = problem("opt-13b", "h100-pcie")
    assert token_s(h100, 1e-9) > 1.03 * token_s(h100, 0.0)
    assert largest_transparent_share(h100, 96, 2, tolerance=0.03) == 0.0
