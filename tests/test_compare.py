import math

import numpy as np
import pytest
from scipy import stats

from pie_core.errors import BadInput
from results import significance as sig
from results.compare import CompareOptions, Side, compare, direction, parse_selector, resolve_side
from results.rules import parse_rules
from results.store import ResultsStore, load_record

from compare_synthetic import write_run

RULES = parse_rules(["output_throughput:-5%", "p99_ttft_ms:+10%"])


def _side(store, paths, name):
    return Side(name, tuple(load_record(p) for p in paths))


def test_run_level_test_matches_student_t_on_logs():
    before, after = [100.0, 104.0, 98.0], [90.0, 93.0, 91.5]
    result = sig.run_level_test(before, after)
    expected = stats.ttest_ind(np.log(after), np.log(before), equal_var=True)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert result.ratio_low < math.exp(np.log(after).mean() - np.log(before).mean()) < result.ratio_high
    assert result.significant
    single = sig.run_level_test([100.0], [80.0, 81.0, 79.0])
    assert single.p_value == pytest.approx(stats.ttest_ind(np.log([80.0, 81.0, 79.0]), np.log([100.0])).pvalue)


def test_run_level_false_positive_rate_is_alpha_under_the_null():
    rng = np.random.default_rng(7)
    draws = rng.lognormal(0, 0.1, size=(4000, 6))
    rejected = sum(sig.run_level_test(row[:3], row[3:]).significant for row in draws)
    assert 0.035 < rejected / 4000 < 0.065


def test_run_level_edge_cases():
    assert sig.run_level_test([5.0, 5.0], [5.0, 5.0]).p_value == 1.0
    assert sig.run_level_test([5.0, 5.0], [6.0, 6.0]).p_value == 0.0
    assert sig.run_level_test([5.0], [6.0]).significant is None  # one run per side: untested
    assert sig.run_level_test([0.0, 1.0], [1.0, 2.0]).significant is None  # log of zero
    pooled = sig.run_level_test([100.0], [80.0, 81.0, 79.0])  # single base run borrows the new side's spread
    assert pooled.tested and pooled.significant


def test_request_bootstrap_detects_shift_and_not_identity():
    rng = np.random.default_rng(1)
    before = [[v] for v in rng.lognormal(0, 0.3, 200)]
    shifted = [[v[0] * 1.3] for v in before]
    assert sig.request_bootstrap_test(before, shifted, "p90").significant
    assert sig.request_bootstrap_test(before, before, "mean").p_value > 0.5
    with pytest.raises(ValueError, match="unknown statistic"):
        sig.request_bootstrap_test(before, shifted, "max")


def test_cluster_bootstrap_percentile_equals_explicit_resampling():
    rng = np.random.default_rng(3)
    groups = [list(rng.lognormal(0, 0.3, 5)) for _ in range(30)]  # e.g. ITLs of 30 requests
    draws = sig._bootstrap_draws(groups, "p90", 500, np.random.default_rng(1))
    all_picks = np.random.default_rng(1).integers(0, 30, size=(500, 30))
    for draw, picks in zip(draws[:50], all_picks):
        pooled = np.concatenate([groups[i] for i in picks])
        assert draw == np.quantile(pooled, 0.9, method="inverted_cdf")


def test_aa_twenty_pairs_of_repeated_runs_rarely_fire(tmp_path):
    """Synthetic A/A with 3% run-to-run noise: 20 pairs of 3 vs 3 runs, rules fire on at most 1."""
    store = ResultsStore(tmp_path)
    fired = 0
    for pair in range(20):
        base = [write_run(store, seed=1000 + 10 * pair + k) for k in range(3)]
        new = [write_run(store, seed=5000 + 10 * pair + k) for k in range(3)]
        result = compare(_side(store, base, "a"), _side(store, new, "b"), RULES)
        fired += result.regression
    assert fired <= 1


def test_ab_injected_slowdown_fires_every_time(tmp_path):
    store = ResultsStore(tmp_path)
    for pair in range(10):
        base = [write_run(store, seed=100 * pair + k) for k in range(3)]
        new = [write_run(store, seed=100 * pair + 50 + k, slowdown=1.2) for k in range(3)]
        result = compare(_side(store, base, "a"), _side(store, new, "b"), RULES)
        assert "output_throughput:-5%" in result.fired, result.verdict
        row = result.frame.set_index("metric").loc["output_throughput"]
        assert row["mark"] == "+" and row["significant"] and row["change_pct"] < -10


def test_single_run_per_side_is_labelled_untested(tmp_path):
    store = ResultsStore(tmp_path)
    base = _side(store, [write_run(store, seed=1)], "a")
    slow = _side(store, [write_run(store, seed=2, slowdown=1.3)], "b")
    result = compare(base, slow, RULES)
    rows = result.frame.set_index("metric")
    assert rows.loc["output_throughput", "significant"] is None
    assert rows.loc["output_throughput", "mark"] == "~"
    assert "output_throughput:-5%" not in result.fired
    assert "not significance-tested" in result.verdict and "1 run per side" in result.notes[0]
    assert rows.loc["mean_tpot_ms", "test"] == sig.REQUEST_LEVEL and rows.loc["mean_tpot_ms", "significant"]
    assert "p99_ttft_ms:+10%" not in result.fired  # request-level significance never fires a rule
    assert "not significance-tested against run-to-run noise" in result.verdict
    forced = compare(base, slow, RULES, CompareOptions(allow_untested=True))
    assert {"output_throughput:-5%", "p99_ttft_ms:+10%"} <= set(forced.fired)


def test_improvement_is_marked_better_and_no_rule_fires(tmp_path):
    store = ResultsStore(tmp_path)
    base = _side(store, [write_run(store, seed=s) for s in (1, 2, 3)], "a")
    fast = _side(store, [write_run(store, seed=s, slowdown=0.7) for s in (4, 5, 6)], "b")
    result = compare(base, fast, RULES)
    rows = result.frame.set_index("metric")
    assert rows.loc["output_throughput", "mark"] == "-" and rows.loc["mean_ttft_ms", "mark"] == "-"
    assert not result.regression and result.verdict.startswith("OK")
    assert "output_throughput rose" in result.verdict and "p99_ttft_ms" in result.verdict
    assert result.to_dict()["rows"][0]["metric"]


def test_refuses_different_models_and_workloads_unless_forced(tmp_path):
    store = ResultsStore(tmp_path)
    base = _side(store, [write_run(store, seed=1)], "a")
    other_model = _side(store, [write_run(store, seed=2, model="opt-350m")], "b")
    with pytest.raises(BadInput, match="different models"):
        compare(base, other_model)
    forced = compare(base, other_model, options=CompareOptions(force=True))
    assert any("--force" in w for w in forced.warnings)
    other_workload = _side(store, [write_run(store, seed=3, workload={"name": "alpaca", "synthetic": True})], "c")
    with pytest.raises(BadInput, match="different workloads"):
        compare(base, other_workload)
    other_machine = _side(store, [write_run(store, seed=4, fingerprint={"cpu": "other"})], "d")
    assert any("different machines" in w and "cpu" in w for w in compare(base, other_machine).warnings)


def test_unknown_metric_in_rule(tmp_path):
    store = ResultsStore(tmp_path)
    side = _side(store, [write_run(store, seed=1)], "a")
    with pytest.raises(BadInput, match="unknown metric 'output_thruput'") as info:
        compare(side, side, parse_rules(["output_thruput:-5%"]))
    assert "did you mean output_throughput" in info.value.one_line()


def test_resolve_side_selectors_and_errors(tmp_path):
    store = ResultsStore(tmp_path)
    for seed in range(3):
        write_run(store, seed=seed, label="main")
    path = write_run(store, seed=9, label="pr")
    write_run(store, seed=10, label="broken", finish=False)
    assert len(resolve_side("label=main", store).records) == 3
    assert len(resolve_side("label=main,runner=pie,model=opt-125m", store).records) == 3
    assert resolve_side(str(path), store).run_ids == [load_record(path).run_id]
    with pytest.raises(BadInput, match="no runs match for selector 'label=nope'.*5 record file"):  # before #6 is written
        resolve_side("label=nope", store)
    with pytest.raises(BadInput, match="incomplete"):
        resolve_side("label=broken", store)
    write_run(store, seed=11, label="main", finish=False)
    main = resolve_side("label=main", store)
    assert len(main.records) == 3 and len(main.skipped_incomplete) == 1
    assert any("ignored 1 incomplete run" in w for w in compare(main, main).warnings)
    with pytest.raises(BadInput, match="cannot read selector"):
        parse_selector("colour=blue")
    assert parse_selector("commit=abc,sweep=s1") == {"git_commit": "abc", "sweep_id": "s1"}


def test_direction():
    assert direction("output_throughput") == 1 and direction("p99_ttft_ms") == -1
    assert direction("failed") == -1 and direction("completed") == 1 and direction("num_thing") == 0


def test_runner_telemetry_compared_only_when_both_sides_have_it(tmp_path):
    store = ResultsStore(tmp_path)
    pie = _side(store, [write_run(store, seed=1, telemetry={"stall_fraction": 0.1, "num_steps": 40})], "a")
    hf = _side(store, [write_run(store, seed=2, runner="hf", telemetry={"num_batches": 3})], "b")
    pie_again = _side(store, [write_run(store, seed=3, telemetry={"stall_fraction": 0.2, "num_steps": 40})], "c")
    metrics = set(compare(pie, hf).frame["metric"])
    assert "output_throughput" in metrics and not {"stall_fraction", "num_batches", "num_steps"} & metrics
    rows = compare(pie, pie_again).frame.set_index("metric")
    assert rows.loc["stall_fraction", "change_pct"] == pytest.approx(100.0)
