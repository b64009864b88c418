"""`pie bench` and `pie show` end to end on a tiny seeded OPT: records, metrics, sweeps, bad input, Ctrl-C."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_helpers import write_sharegpt
from cli_helpers import run_pie
from results.frames import requests_frame, runs_frame
from results.metrics import summary_rows
from results.store import ResultsStore, load_record
from tiny_hf_model import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--workload", "fixed", "--input-len", "12", "--output-len", "6", "-n", "6", "--dtype", "float32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("bench") / "opt", tokenizer=True)


def test_bench_writes_a_complete_record_and_show_reads_it(model_dir, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--results-dir", results, "--label", "a",
                              "--goodput", "ttft:100000", "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    payload = json.loads(out)
    summary = payload["summary"]
    assert summary["completed"] == 6 and summary["failed"] == 0
    assert summary["total_input_tokens"] == 72 and summary["total_output_tokens"] == 36
    assert summary["request_goodput"] == pytest.approx(summary["request_throughput"])
    assert 0 < summary["mean_ttft_ms"] <= summary["mean_e2el_ms"]
    assert payload["workload"]["synthetic"] and "SYNTHETIC" in err
    assert payload["telemetry"]["num_steps"] > 0 and "stall_fraction" in payload["telemetry"]
    record = load_record(Path(payload["record_path"]))
    assert record.complete and record.header.runner == "pie" and record.header.label == "a"
    assert record.header.config["num_device_blocks"] > 0 and record.header.fingerprint["cpu_cores"]
    assert all(len(s.itl_s) == s.output_len - 1 == 5 for s in record.requests)
    assert all(s.output_token_ids is None for s in record.requests)  # only with --save-outputs

    code, out, _ = run_pie(["show", "--results-dir", results, "--json"], monkeypatch, capsys)
    listed = json.loads(out)["runs"]
    assert [r["run_id"] for r in listed] == [record.run_id] and listed[0]["complete"]
    code, out, _ = run_pie(["show", record.run_id[:22], "--results-dir", results, "--requests"], monkeypatch, capsys)
    assert code in (0, None) and "Serving Benchmark Result" in out and "Mean TTFT (ms)" in out and "Requests" in out
    code, _, err = run_pie(["show", "nope", "--results-dir", results], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1


def test_same_workload_same_counts_and_rows_across_runners(model_dir, tmp_path, monkeypatch, capsys):
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly pilot".split()
    data = write_sharegpt(tmp_path / "sg.json", [(" ".join(words[i:i + 6]), " ".join(words[i + 1:i + 8])) for i in range(8)])
    results = tmp_path / "results"
    summaries = {}
    for runner in ("pie", "hf"):
        code, out, err = run_pie(["bench", "-m", model_dir, "--runner", runner, "--dataset-path", data, "-n", "5",
                                  "--dtype", "float32", "--results-dir", results, "--json"], monkeypatch, capsys)
        assert code in (0, None), err
        payload = json.loads(out)
        assert payload["workload"]["tokenizer"].startswith("model tokenizer") and not payload["workload"]["synthetic"]
        summaries[runner] = payload["summary"]
    for key in ("completed", "total_input_tokens", "total_output_tokens"):
        assert summaries["pie"][key] == summaries["hf"][key]
    assert [label for label, _ in summary_rows(summaries["pie"])] == [label for label, _ in summary_rows(summaries["hf"])]
    store = ResultsStore(results)
    runs = runs_frame(store.records())
    assert sorted(runs["runner"]) == ["hf", "pie"] and runs["complete"].all()
    assert (runs["total_output_tokens"] == summaries["pie"]["total_output_tokens"]).all()
    assert "config.batch_size" in runs.columns and "telemetry.stall_fraction" in runs.columns
    per_request = requests_frame(store.records())
    assert len(per_request) == 10 and per_request["tpot_s"].notna().all()


def test_sweep_stores_one_record_per_point(model_dir, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--option", "block_size=4", "--device-blocks", "64",
                              "--sweep", "pool_blocks=0,8", "--results-dir", results, "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    payload = json.loads(out)
    assert [run["sweep_point"] for run in payload["runs"]] == [{"pool_blocks": 0}, {"pool_blocks": 8}]
    records = ResultsStore(results).select(sweep_id=payload["sweep_id"])
    assert sorted(r.header.config["num_pool_blocks"] for r in records) == [0, 8]
    assert all(r.header.sweep_point and r.complete for r in records)
    code, out, _ = run_pie(["bench", "-m", model_dir, *SMALL, "--request-rate", "50", "--sweep", "request_rate=20,inf",
                            "--results-dir", results], monkeypatch, capsys)
    assert code in (0, None) and "Sweep sweep-" in out


def _plan(path, model, num_pool_blocks=4):
    from planner.plan import Performance, Plan
    from runners.engine.settings import EngineSettings

    zero = Performance(**{f.name: 0 for f in dataclasses.fields(Performance)})
    settings = EngineSettings(block_size=4, num_device_blocks=64, num_pool_blocks=num_pool_blocks,
                              prefetch_depth=2, rebuild_fraction=0.0, max_num_seqs=8, max_num_batched_tokens=512)
    return Plan(created_at="now", model=model, dtype="float32", hardware={}, budgets={}, workload={}, settings=settings,
                predicted=zero, baseline=zero, binding=(), explanation=(), solver={}).save(path)


def test_plan_configures_the_engine(model_dir, tmp_path, monkeypatch, capsys):
    plan = _plan(tmp_path / "plan.json", str(model_dir))
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--plan", plan, "--results-dir", tmp_path, "--json"],
                             monkeypatch, capsys)
    assert code in (0, None), err
    config = json.loads(out)["config"]
    assert (config["num_pool_blocks"], config["block_size"], config["max_num_seqs"]) == (4, 4, 8)
    assert config["plan"] == str(plan)


@pytest.mark.parametrize("args,message", [
    (["--dataset-path", "/nonexistent/sg.json"], "does not exist"),
    (["--dataset-path", "BROKEN"], "is not valid JSON"),
    (["--runner", "vlm"], "unknown runner"),
    (["--workload", "sharegtp"], "unknown workload"),
    (["--request-rate", "0"], "request rate must be > 0"),
    (["--request-rate", "-3"], "request rate must be > 0"),
    (["--plan", "OTHER_PLAN"], "is for model 'opt-1.3b'"),
    (["--sweep", "pool_blocks"], "is not NAME=V1,V2"),
    (["--sweep", "colour=1,2"], "cannot sweep"),
    (["--goodput", "ttft"], "NAME:MILLISECONDS"),
    (["--option", "nonsense"], "KEY=VALUE"),
    (["--option", "num_pol_blocks=3"], "unknown pie runner option"),
    (["--device-blocks", "4", "--pool-blocks", "8"], "after staging"),
    (["--workload", "jsonl"], "needs --dataset-path"),
    (["--device", "tpu"], "unknown device"),
    (["--option", "copy_worker=stream", "--pool-blocks", "8"], "copy_worker 'stream' does not exist on cpu"),
])
def test_bad_input_is_one_line_exit_2(args, message, model_dir, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    other = _plan(tmp_path / "other.json", "opt-1.3b")
    args = [str(broken) if a == "BROKEN" else str(other) if a == "OTHER_PLAN" else a for a in args]
    code, out, err = run_pie(["bench", "-m", model_dir, "--results-dir", tmp_path / "r", *args], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and out == ""
    assert not list((tmp_path / "r").glob("*.jsonl"))  # nothing half-written for bad input


@pytest.mark.parametrize("runner", ["pie", "hf"])
def test_max_concurrency_is_honoured(runner, model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--runner", runner, "--max-concurrency", "2",
                              "--results-dir", tmp_path, "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    payload = json.loads(out)
    assert payload["summary"]["completed"] == 6
    if runner == "pie":
        assert payload["telemetry"]["max_batch_size"] == 2
    else:
        assert payload["config"]["batch_size"] == 2 and payload["telemetry"]["num_batches"] == 3


def test_ttft_counts_queueing_from_arrival(model_dir):
    """All requests arrive at 0 and wait for one engine with max_num_seqs=1: later ones have larger TTFT."""
    from runners.base import RunnerSpec
    from runners.pie_runner import PieRunner
    from runners.workloads import WorkloadSpec, load_workload

    requests, _ = load_workload(WorkloadSpec("fixed", str(model_dir), num_prompts=3, input_len=8, output_len=3))
    samples = []
    runner = PieRunner()
    runner.run(runner.prepare(RunnerSpec(str(model_dir), dtype="float32", options={"max_num_seqs": 1})), requests, samples.append)
    ttfts = [s.ttft_s for s in sorted(samples, key=lambda s: s.request_id)]
    assert ttfts[0] < ttfts[1] < ttfts[2] and ttfts[2] > samples[0].e2el_s


def test_slowed_pie_sleeps_after_each_step_and_refuses_bad_fractions(model_dir, monkeypatch):
    """benchmarks/slowed_pie.py, the A/B side of bench_compare_aa.py, slows each step by its fraction."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import slowed_pie

    from runners import pie_runner
    from runners.base import RunnerSpec
    from runners.workloads import WorkloadSpec, load_workload

    requests, _ = load_workload(WorkloadSpec("fixed", str(model_dir), num_prompts=3, input_len=8, output_len=4))
    slept, real_sleep = [], time.sleep
    monkeypatch.setattr(slowed_pie.time, "sleep", lambda s: (slept.append(s), real_sleep(s)))
    monkeypatch.setattr(pie_runner, "drive_engine", pie_runner.drive_engine)  # restored after the test
    slowed_pie.install(0.5)
    runner = pie_runner.PieRunner()
    result = runner.run(runner.prepare(RunnerSpec(str(model_dir), dtype="float32")), requests, lambda sample: None)
    assert len(slept) == result.telemetry["num_steps"] and all(s > 0 for s in slept)
    assert sum(slept) < result.duration_s
    for bad in ("lots", "-1", "12"):
        with pytest.raises(SystemExit, match="slowdown fraction"):
            slowed_pie.parse_fraction(bad)


def test_sigint_leaves_an_incomplete_record_with_finished_requests(model_dir, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "pie_cli.app", "bench", "-m", str(model_dir), "--workload", "fixed", "--input-len", "8",
               "--output-len", "4", "-n", "400", "--request-rate", "20", "--dtype", "float32", "--results-dir", str(results)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT as a terminal gives it, even when this suite was started in the background (where the shell leaves SIGINT
    # ignored, Python then keeps it ignored, and the run would finish instead)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            files = list(results.glob("*.jsonl"))
            if files and files[0].read_text().count('"type": "request"') >= 3:
                break
            if process.poll() is not None:
                pytest.fail(f"bench ended early: {process.communicate()}")
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "marked incomplete" in err
    (path,) = results.glob("*.jsonl")
    record = load_record(path)
    assert not record.complete and 3 <= len(record.requests) < 400
    assert all(s.success and s.output_len == 4 for s in record.requests)
    assert ResultsStore(results).records()[0].run_id == record.run_id
    code, out, err = run_pie(["show", record.run_id, "--results-dir", results], monkeypatch, capsys)
    assert code in (0, None) and "interrupted, incomplete" in out and "incomplete" in err
    code, out, _ = run_pie(["show", "--results-dir", results, "--json"], monkeypatch, capsys)
    assert json.loads(out)["runs"][0]["complete"] is False
