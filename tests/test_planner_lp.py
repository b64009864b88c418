"""The LP planner: optimality against exhaustive enumeration, speed, presets, bounds, Plan files."""
from __future__ import annotations

import json

import pytest

from pie_core.errors import BadInput
from pie_core.shapes import resolve_model
from planner.budgets import Budgets, builtin_workload
from planner.exhaustive import GridSize, best_by_enumeration
from planner.hardware import preset
from planner.plan import Plan
from planner.search import search
from planner.tune import TuneRequest, make_plan
from tests.planner_fixtures import link_starved, problem

GB = 10**9


def _request(model="opt-30b", hardware="h100-pcie", device_gb=None, host_gb=200, max_tpot_ms=None):
    spec = preset(hardware) if isinstance(hardware, str) else hardware
    return TuneRequest(shape=resolve_model(model), dtype="float16", hardware=spec,
                       budgets=Budgets(int(device_gb * GB) if device_gb else spec.device_memory_bytes, int(host_gb * GB)),
                       workload=builtin_workload("sharegpt"), max_tpot_ms=max_tpot_ms)


@pytest.mark.parametrize("case", [
    ("opt-30b", "h100-pcie", None, 200), ("opt-30b", "gh200", None, 400), ("opt-13b", "a100-pcie", 40, 100),
    ("llama-3-8b", "l4", None, 64), ("opt-6.7b", "l4", None, 100), ("llama-2-13b", "h100-pcie", 40, 50),
])
def test_lp_matches_exhaustive_enumeration(case):
    model, hardware, device_gb, host_gb = case
    p = problem(model, hardware, device_gb=device_gb, host_gb=host_gb)
    lp = search(p).best
    enumerated = best_by_enumeration(p, grid=GridSize(pooled_steps=200, rebuilt_steps=10))
    assert lp.feasible and enumerated is not None
    assert lp.output_tok_s >= 0.99 * enumerated.output_tok_s


def test_rebuild_only_where_it_saves_bytes():
    # slow link, fast compute, multi-head: rebuild pays (compute 16x: with the steady evictions priced,
    # a pool of any kind costs a token of K/V per sequence per step over 8 GB/s, so 4x no longer pools)
    mha = search(problem("opt-13b", link_starved(link_gbps=8, tflops_scale=16), device_gb=30, host_gb=100)).best
    assert mha.split.rebuilt_kv_bytes > 0
    gqa = search(problem("llama-3-8b", link_starved("l4"), host_gb=64)).best
    assert gqa.split.rebuilt_kv_bytes == 0


def test_opt_30b_plans_pool_more_on_gh200():
    # Their speed (< 2 s a plan, < 100 ms a CBC solve) is measured by benchmarks/bench_tune_speed.py.
    plans = {hardware: make_plan(_request(hardware=hardware)) for hardware in ("h100-pcie", "gh200")}
    for plan in plans.values():
        assert plan.solver["lp_solve_ms_max"] > 0  # the solver's own timing is recorded in the plan
    assert plans["gh200"].predicted.pooled_fraction > plans["h100-pcie"].predicted.pooled_fraction
    for plan in plans.values():
        assert plan.binding, plan.explanation
        assert any("GB/s" in line and "ms" in line for line in plan.explanation)
        assert plan.predicted.output_tok_s >= plan.baseline.output_tok_s
    assert "link" in plans["h100-pcie"].binding


def test_latency_bound_is_respected_and_an_impossible_one_says_the_best():
    free = make_plan(_request())
    bound = free.predicted.tpot_ms * 0.8
    bounded = make_plan(_request(max_tpot_ms=bound))
    assert bounded.predicted.tpot_ms <= bound
    assert "latency" in bounded.binding
    with pytest.raises(BadInput) as err:
        make_plan(_request(max_tpot_ms=0.01))
    assert "best achievable" in err.value.one_line()


def test_weights_over_the_device_budget_say_by_how_much():
    with pytest.raises(BadInput) as err:
        make_plan(_request(model="opt-66b", hardware="l4", host_gb=50))
    assert "short by" in err.value.one_line()


def test_plan_round_trips_and_rejects_other_schemas(tmp_path):
    plan = make_plan(_request())
    path = plan.save(tmp_path / "plan.json")
    loaded = Plan.load(path)
    assert loaded == plan
    settings = loaded.settings.to_dict()
    assert settings["num_pool_blocks"] > 0 and settings["max_num_seqs"] == plan.predicted.batch_size
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(BadInput):
        Plan.load(tmp_path / "old.json")


def test_default_budgets_take_no_more_device_memory_than_is_free():
    from types import SimpleNamespace

    from planner.budgets import default_budgets

    gpu = SimpleNamespace(device="cuda", device_memory_bytes=80 * 2**30, host_memory_bytes=512 * 2**30)
    assert default_budgets(gpu) == (80 * 2**30, 256 * 2**30)  # a preset: its whole memory
    assert default_budgets(gpu, free_device_bytes=70 * 2**30) == (70 * 2**30, 256 * 2**30)  # this GPU: what is free
    cpu = SimpleNamespace(device="cpu", device_memory_bytes=0, host_memory_bytes=24 * 2**30)
    assert default_budgets(cpu, free_device_bytes=1) == (6 * 2**30, 6 * 2**30)
