import pytest

from pie_core.errors import BadInput
from results.rules import Rule, check_metrics, parse_rule


def test_parse_rules():
    assert parse_rule("output_throughput:-5%") == Rule("output_throughput", -5.0)
    assert parse_rule(" p99_ttft_ms : +10.5 ").threshold_pct == 10.5
    assert parse_rule("p99_ttft_ms:+10%").text == "p99_ttft_ms:+10%"


@pytest.mark.parametrize("text", ["output_throughput", "output_throughput:5%", "output_throughput:-x%", ":-5%", ""])
def test_malformed_rules(text):
    with pytest.raises(BadInput, match="cannot parse rule"):
        parse_rule(text)


def test_zero_threshold_rejected():
    with pytest.raises(BadInput, match="zero threshold"):
        parse_rule("output_throughput:-0%")
    with pytest.raises(ValueError):
        Rule("x", 0.0)


def test_rule_fires_only_when_significant_and_past_threshold():
    fall = Rule("output_throughput", -5.0)
    assert fall.fires(0.90, significant=True)
    assert fall.fires(0.95, significant=True)  # exactly at the threshold
    assert not fall.fires(0.96, significant=True)
    assert not fall.fires(0.90, significant=False)
    assert not fall.fires(1.10, significant=True)  # wrong direction
    assert not fall.fires(0.90, significant=None)
    assert fall.fires(0.90, significant=None, allow_untested=True)
    assert not fall.fires(None, significant=True)
    rise = Rule("p99_ttft_ms", 10.0)
    assert rise.fires(1.2, True) and not rise.fires(0.8, True)


def test_check_metrics_names_unknown_metric():
    with pytest.raises(BadInput, match="unknown metric 'p99_tft_ms'") as info:
        check_metrics([Rule("p99_tft_ms", 10.0)], ["p99_ttft_ms", "output_throughput"])
    assert "did you mean p99_ttft_ms" in info.value.one_line()
    check_metrics([Rule("p99_ttft_ms", 10.0)], ["p99_ttft_ms"])
