"""The CI example must be a valid workflow whose ab.sh, `pie bench` and `pie compare` invocations work as written."""
import shlex
from pathlib import Path

import pytest

from results.store import ResultsStore

from cli_helpers import run_pie
from compare_synthetic import write_run

yaml = pytest.importorskip("yaml")

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "ci" / "pie-bench.yml"


def test_workflow_is_valid_and_compares_with_rules(tmp_path, monkeypatch, capsys):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = {step.get("name"): step for step in workflow["jobs"]["bench"]["steps"]}
    compare_step = steps["Benchmark base and head interleaved, compare"]["run"]
    assert "Post the verdict on the pull request" in steps
    assert "pull_request" in workflow[True]  # `on:` parses as the YAML boolean True
    rules = shlex.split(workflow["env"]["RULES"])
    assert "--fail-on" in rules and "--format markdown" in compare_step
    assert "examples/ci/ab.sh" in compare_step and '--runs "$RUNS"' in compare_step and "-- $BENCH" in compare_step
    assert (WORKFLOW.parent / "ab.sh").exists()
    store = ResultsStore(tmp_path)
    for k in range(3):
        write_run(store, seed=k, label="main")
        write_run(store, seed=10 + k, label="pr-7", slowdown=1.25)
    code, out, _ = run_pie(["compare", "label=main", "label=pr-7", *rules, "--results-dir", tmp_path, "--format", "markdown"],
                           monkeypatch, capsys)
    assert code == 3 and out.startswith("### :x: pie compare: REGRESSION")


def test_workflow_bench_command_runs_as_written_and_records_a_run(tmp_path, monkeypatch, capsys):
    """The workflow's `pie bench` arguments, run here with fewer prompts and another results folder (later flags win)."""
    import json

    workflow = yaml.safe_load(WORKFLOW.read_text())
    command = ["bench", *shlex.split(workflow["env"]["BENCH"]), "--label", "main"]
    command[command.index("--num-prompts") + 1] = "4"  # smaller, as written otherwise (a second --num-prompts is refused)
    assert "--results-dir" not in command and "--label" not in command[:-2]  # ab.sh gives both
    code, out, err = run_pie(command + ["--results-dir", tmp_path, "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    payload = json.loads(out)
    assert payload["summary"]["completed"] == 4 and payload["summary"]["failed"] == 0
    (record,) = ResultsStore(tmp_path).records()
    assert record.header.label == "main" and record.complete
    assert record.header.workload["name"] == "synthetic-uniform" and record.header.config["seed"] == 0
