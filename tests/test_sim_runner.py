"""`pie bench --runner sim`: the engine's scheduler on a virtual clock; records, sweeps, bad input, no torch."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from results.compare import Side
from results.report import build_report
from results.store import ResultsStore
from runners.arrivals import ArrivalSpec
from runners.bench import BenchSettings, run_bench
from runners.workloads import WorkloadSpec
from tests.cli_helpers import run_pie
from tests.planner_fixtures import synthetic_profile

REPO = Path(__file__).resolve().parents[1]
SIM = ["bench", "--runner", "sim", "--hardware", "h100-pcie", "--model", "opt-13b"]


def _settings(options: dict, rate: float = math.inf, num_prompts: int = 40, seed: int = 0) -> BenchSettings:
    workload = WorkloadSpec(name="sharegpt", model="opt-13b", num_prompts=num_prompts, seed=seed)
    return BenchSettings(model="opt-13b", workload=workload, runner="sim", dtype="bfloat16", device="cpu", seed=seed,
                         runner_options={"hardware": "h100-pcie", **options}, arrivals=ArrivalSpec(request_rate=rate, seed=seed))


def _comparable(record) -> dict:
    """A record without what differs between two runs of the same input: ids, times, the simulator's own wall time."""
    data = record.to_dict()
    for key in ("run_id", "created_at"):
        data["header"].pop(key)
    data.pop("finished_at"), data.pop("source")
    data["telemetry"].pop("simulator_wall_s")
    return data


def test_same_seed_same_record(tmp_path):
    store = ResultsStore(tmp_path)
    options = {"num_device_blocks": 300, "num_pool_blocks": 200, "max_num_seqs": 32}
    first, second = (store.load(run_bench(_settings(options, rate=20.0), store).run_id) for _ in range(2))
    assert _comparable(first) == _comparable(second)
    other = store.load(run_bench(_settings(options, rate=20.0, seed=1), store).run_id)
    assert _comparable(other) != _comparable(first)


def test_record_is_labelled_simulated_with_a_timeline(tmp_path, monkeypatch, capsys):
    code, out, _ = run_pie([*SIM, "-n", "30", "--device-blocks", "120", "--results-dir", tmp_path, "--json"], monkeypatch, capsys)
    assert code == 0
    payload = json.loads(out)
    assert payload["config"]["simulated"] is True and payload["config"]["hardware_source"] == "preset h100-pcie"
    record = ResultsStore(tmp_path).load(payload["run_id"])
    assert record.header.simulated and record.summary["completed"] == 30
    assert record.telemetry["num_preemptions"] > 0  # 120 blocks cannot hold the batch: the real scheduler preempts
    assert record.timeline and sum(w["num_steps"] for w in record.timeline) == record.telemetry["num_steps"]
    assert record.telemetry["simulated_s"] > record.telemetry["simulator_wall_s"]
    code, shown, _ = run_pie(["show", payload["run_id"], "--results-dir", tmp_path], monkeypatch, capsys)
    assert code == 0 and "simulated: preset h100-pcie" in shown
    assert "simulated: preset h100-pcie" in Side("x", (record,)).describe()
    assert "simulated: preset h100-pcie" in build_report([record]).runs["series"].iloc[0]


def test_sweeps_vary_simulated_runs(tmp_path, monkeypatch, capsys):
    args = [*SIM, "-n", "40", "--device-blocks", "150", "-O", "max_num_seqs=32", "--results-dir", tmp_path, "--json"]
    code, out, _ = run_pie([*args, "--sweep", "pool_blocks=0,300"], monkeypatch, capsys)
    assert code == 0
    off, on = (run["telemetry"] for run in json.loads(out)["runs"])
    assert off["peak_pool_blocks_used"] == 0 and on["peak_pool_blocks_used"] > 0 and on["h2d_bytes"] > 0
    assert on["num_preemptions"] < off["num_preemptions"]
    code, out, _ = run_pie([*args, "--sweep", "request_rate=1,50"], monkeypatch, capsys)
    slow, fast = (run["summary"] for run in json.loads(out)["runs"])
    assert code == 0 and slow["mean_ttft_ms"] < fast["mean_ttft_ms"]


def test_adaptive_controller_moves_the_simulated_pool(tmp_path, monkeypatch, capsys):
    code, out, _ = run_pie([*SIM, "-n", "60", "--device-blocks", "150", "--pool-blocks", "400", "--adaptive",
                            "-O", "max_num_seqs=48", "--results-dir", tmp_path, "--json"], monkeypatch, capsys)
    assert code == 0
    record = ResultsStore(tmp_path).load(json.loads(out)["run_id"])
    assert any(w["move"] == "grow" for w in record.timeline)


@pytest.mark.parametrize("args, message", [
    (["bench", "--runner", "sim", "--hardware", "l4", "--model", "opt-30b"], "weights need"),
    ([*SIM, "--sweep", "copy_worker=team,thread"], "cannot vary copy_worker"),
    ([*SIM, "--device-blocks", "100000"], "does not fit h100-pcie"),
    (["bench", "--runner", "pie", "--hardware", "h100-pcie"], "add --runner sim"),
    (["bench", "--runner", "sim", "--model", "opt-125m"], "holds no profile of this machine"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no saved profiles here
    code, _, err = run_pie([*args, "--results-dir", tmp_path], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_profile_is_simulated_and_the_simulator_never_imports_torch(tmp_path):
    profile = tmp_path / "profile.json"
    synthetic_profile("opt-125m").save(profile)
    script = ("import sys\nfrom pie_cli.app import main\nprofile, results = sys.argv[1:3]\n"
              "for extra in ([\"--hardware\", \"gh200\", \"--model\", \"opt-30b\"], [\"--profile\", profile]):\n"
              "    sys.argv = [\"pie\", \"bench\", \"--runner\", \"sim\", \"-n\", \"12\", \"--results-dir\", results, *extra]\n"
              "    try:\n        main()\n    except SystemExit as done:\n        assert done.code == 0, done.code\n"
              "assert 'torch' not in sys.modules, 'the simulator imported torch'\nprint('no torch')\n")
    result = subprocess.run([sys.executable, "-c", script, str(profile), str(tmp_path / "results")], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no torch" in result.stdout
    sources = sorted(r.header.config["hardware_source"] for r in ResultsStore(tmp_path / "results").records())
    assert sources == sorted([f"profile {profile}", "preset gh200"])


def test_waiting_blocks_the_scheduler_keeps_match_its_queue():
    """Scheduler.waiting_blocks() is kept as the queue changes (O(1) per step); with preemptions it still matches."""
    from runners.sim_runner import SimStepEngine, VirtualClock, sim_target
    from runners.workloads import load_workload

    settings = _settings({"num_device_blocks": 150, "num_pool_blocks": 100, "max_num_seqs": 32}, num_prompts=60)
    engine = SimStepEngine(sim_target(settings.spec()), VirtualClock())
    for request in load_workload(settings.workload)[0]:
        engine.add(request)
    while engine.scheduler.has_unfinished():
        engine.step()
        size = engine.config.block_size
        assert engine.scheduler.waiting_blocks() == sum(-(-seq.num_tokens // size) for seq in engine.scheduler.waiting)
        assert engine.stats[-1].waiting_blocks == engine.scheduler.waiting_blocks()
    assert sum(s.num_preempted for s in engine.stats) > 0
