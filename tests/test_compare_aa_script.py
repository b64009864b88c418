"""benchmarks/bench_compare_aa.py --analyze-only on a synthetic store: counts, JSON and markdown files."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from compare_synthetic import write_run
from results.store import ResultsStore

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compare_aa.py"


@pytest.mark.slow
def test_analyze_only_counts_fired_rules(tmp_path):
    store = ResultsStore(tmp_path / "store")
    seed = 0
    for kind, pairs, slowdown in (("aa", 3, 1.0), ("ab", 2, 1.25)):
        for pair in range(pairs):
            for _ in range(3):
                seed += 1  # same seed on both sides: A/A pairs are identical, A/B differ only by the slowdown
                write_run(store, seed=seed, label=f"{kind}-{pair}-base")
                write_run(store, seed=seed, label=f"{kind}-{pair}-new", slowdown=slowdown)
    output = tmp_path / "out" / "aa.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--analyze-only", "--pairs", "3", "--ab-pairs", "2",
                           "--results-dir", str(store.root), "--output", str(output)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(output.read_text())
    assert summary["aa"]["pairs_where_any_rule_fired"] == 0 and summary["aa"]["pairs"] == 3
    assert summary["ab"]["pairs_where_throughput_rule_fired"] == 2
    assert summary["aa"]["single_run_per_side"]["comparisons"] == 9
    assert summary["ab"]["single_run_per_side"]["throughput_rule_fired"] == 0  # untested with 1 run per side
    assert summary["ab"]["single_run_per_side"]["throughput_rule_fired_with_fail_untested"] == 6
    assert (output.parent / "compare_markdown_regression.md").read_text().startswith("### :x: pie compare")
    assert (output.parent / "compare_markdown_clean.md").read_text().startswith("### :white_check_mark:")
