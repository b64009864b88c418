"""benchmarks/bench_serve.py's round order: the in-process run sits right beside `pie serve` in every round and
takes both ends of it in turn, and the servers alternate, so neither comparison leans on the machine's drift."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "benchmarks" / "bench_serve.py")
bench_serve = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_serve", bench_serve)  # its dataclasses look their module up there
_spec.loader.exec_module(bench_serve)


@pytest.mark.parametrize("kinds", [["pie", "vllm"], ["pie"]])
def test_in_process_runs_beside_pie_serve_at_alternating_ends(kinds):
    orders = [bench_serve.round_order(kinds, repeat) for repeat in range(4)]
    for order in orders:
        assert sorted(order) == sorted(kinds + ["inprocess"])
        here, pie = order.index("inprocess"), order.index("pie")
        assert abs(here - pie) == 1
    assert {order.index("inprocess") < order.index("pie") for order in orders} == {True, False}
    if "vllm" in kinds:
        assert {order.index("vllm") < order.index("pie") for order in orders} == {True, False}
