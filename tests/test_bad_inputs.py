"""Issue 17's sweep of bad inputs, through the real CLI: each is exit 2 (or 1 where the machine or the run is at
fault) with one `error:` line on stderr that names the problem and the fix, no traceback, nothing already
measured lost, and no stray files or empty records left. Crashes and hangs run in a child process.

The second half is the issue's "20 of your own": inputs outside its list that misbehaved before.
"""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_pie
from compare_synthetic import write_run
from tiny_hf_model import tiny_model_dir

from pie_core.errors import PieError, suggest
from pie_core.inputs import max_threads
from pie_core.json_files import write_json_atomic
from pie_core.sizes import free_host_bytes
from planner.plan import Plan
from profiler.hardware_profile import HardwareProfile
from results.store import ResultsStore, load_record
from runners.engine.config import EngineConfig
from runners.engine.memory_fit import engine_bytes

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--workload", "fixed", "--input-len", "12", "--output-len", "6", "-n", "6", "--dtype", "float32"]
HAS_PROC = Path("/proc/self").exists()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("bad-inputs") / "opt")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default stores (.pie/...) land here, where the test can look for strays


def error_line(code, err, expected_code, *fragments):
    """The one `error:` line, last on stderr, with the exit code and the fragments asked for."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == expected_code, err
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def bad_input(code, err, *fragments):
    """Exit 2 before any work: stderr is the one line alone, and it names a fix."""
    line = error_line(code, err, 2, *fragments)
    assert len([x for x in err.splitlines() if x.strip()]) == 1 and "(hint: " in line, err
    return line


def run_child(args, cwd, timeout=180):
    """`pie ARGS` as a user's shell runs it, in its own process (for crashes, signals and hangs)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pie_cli.app", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr


def records(results: Path) -> list[Path]:
    return sorted(results.glob("*.jsonl")) if results.is_dir() else []


def model_copy(model_dir, tmp_path, name, edit_config=None, weights=None):
    directory = Path(shutil.copytree(model_dir, tmp_path / name))
    if edit_config:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(edit_config(config)))
    if weights is not None:
        (directory / "model.safetensors").write_bytes(weights((directory / "model.safetensors").read_bytes()))
    return directory


# --- crashes, hangs and lost work -------------------------------------------------------------------

@pytest.mark.parametrize("threads", ["100000", "1000"])
def test_thread_counts_beyond_this_machine_are_refused_before_torch_sees_them(threads, tmp_path):
    code, _, err = run_child(["profile", "--quick", "--no-layer", "--threads", threads], tmp_path)  # was SIGSEGV / > 90 s
    bad_input(code, err, f"--threads must be between 1 and {max_threads()}, got {threads}", f"--threads 1..{max_threads()}")
    assert not (tmp_path / ".pie").exists()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc")
def test_an_output_path_that_cannot_be_written_fails_before_measuring(tmp_path, monkeypatch, capsys):
    code, _, err = run_pie(["profile", "--quick", "--no-layer", "--max-size", "1MiB", "-o", "/proc/x/prof.json"], monkeypatch, capsys)
    bad_input(code, err, "--output '/proc/x/prof.json'", "'/proc'")
    assert not (tmp_path / ".pie").exists()  # nothing was measured
    code, _, err = run_pie(["report", "x", "-o", "/proc/x.html"], monkeypatch, capsys)
    bad_input(code, err, "--output '/proc/x.html'")


def test_a_profile_whose_save_fails_late_is_kept_where_the_error_says(tmp_path, monkeypatch, capsys):
    target = tmp_path / "out" / "prof.json"
    save = HardwareProfile.save

    def disk_full(self, path):
        if Path(path) == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, path)

    monkeypatch.setattr(HardwareProfile, "save", disk_full)
    code, _, err = run_pie(["profile", "--quick", "--no-layer", "--max-size", "64KiB", "--threads", "1", "--dtype", "float32",
                            "-o", target], monkeypatch, capsys)
    line = error_line(code, err, 1, "No space left on device", "it was saved to", "mv ")
    kept = Path(re.search(r"saved to '([^']+)'", line).group(1))
    assert HardwareProfile.load(kept).link and not target.exists()  # the measurement is in the named file


def test_tune_output_that_is_a_directory_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    (tmp_path / "D").mkdir()
    code, _, err = run_pie(["tune", "--model", "opt-125m", "--hardware", "h100-pcie", "-o", "D"], monkeypatch, capsys)
    bad_input(code, err, "--output 'D' is a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["D"] and not any((tmp_path / "D").iterdir())
    with pytest.raises(IsADirectoryError):
        write_json_atomic(tmp_path / "D", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["D"]  # no D.tmp beside a failed write


# --- raw exceptions where the input is at fault -------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["-n", "99999999999999999999"], "--num-prompts must be between 1 and 1000000"),
    (["-O", "max_num_seqs=abc"], "pie runner option max_num_seqs='abc' is not a whole number"),
    (["-O", "max_num_seqs="], "pie runner option max_num_seqs has no value"),
    pytest.param(["--results-dir", "/proc/nope"], "--results-dir '/proc/nope'",
                 marks=pytest.mark.skipif(not HAS_PROC, reason="needs /proc")),
])
def test_bench_values_of_the_wrong_kind_or_range(args, fragment, model_dir, tmp_path, monkeypatch, capsys):
    small = [a for i, a in enumerate(SMALL) if "-n" not in args or i not in (SMALL.index("-n"), SMALL.index("-n") + 1)]
    code, _, err = run_pie(["bench", "-m", model_dir, *small, *args], monkeypatch, capsys)
    bad_input(code, err, fragment)
    assert not (tmp_path / ".pie").exists()


def test_results_dir_naming_a_file(model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "F").write_text("")
    code, _, err = run_pie(["bench", "-m", model_dir, *SMALL, "--results-dir", "F"], monkeypatch, capsys)
    bad_input(code, err, "--results-dir 'F' is a file, not a directory")


CONFIG_FIVE = ("five", lambda c: {**c, "num_hidden_layers": "five"}, None, "'num_hidden_layers' must be a whole number, got 'five'")
BAD_MODELS = [
    CONFIG_FIVE,
    ("truncated", None, lambda data: data[:3000], "is corrupt or truncated"),
    ("garbage", None, lambda data: os.urandom(100), "is corrupt or truncated"),
    ("cut-data", None, lambda data: data[:-64], "is truncated: tensor"),
    ("wrong-shape", lambda c: {**c, "ffn_dim": 80}, None, "fc1.bias has shape (64,), expected (80,)"),
]


@pytest.mark.parametrize("runner", ["pie", "hf"])
@pytest.mark.parametrize("name, edit, weights, fragment", BAD_MODELS, ids=[m[0] for m in BAD_MODELS])
def test_broken_model_directories_fail_before_any_record(runner, name, edit, weights, fragment, model_dir, tmp_path,
                                                         monkeypatch, capsys):
    broken = model_copy(model_dir, tmp_path, name, edit, weights)
    results = tmp_path / "results"
    code, _, err = run_pie(["bench", "-m", broken, "--runner", runner, *SMALL, "--results-dir", results], monkeypatch, capsys)
    bad_input(code, err, fragment)
    assert records(results) == []  # no empty record for compare and report to call "interrupted"


def test_tune_reads_the_config_by_its_declared_kinds(model_dir, tmp_path, monkeypatch, capsys):
    broken = model_copy(model_dir, tmp_path, "five", CONFIG_FIVE[1])
    code, _, err = run_pie(["tune", "-m", broken, "--hardware", "h100-pcie"], monkeypatch, capsys)
    bad_input(code, err, CONFIG_FIVE[3])


def test_a_plan_for_an_h100_is_refused_up_front_saying_what_fits(tmp_path, monkeypatch, capsys):
    plan_path, results = tmp_path / "h100.json", tmp_path / "results"
    code, _, err = run_pie(["tune", "--model", "opt-125m", "--hardware", "h100-pcie", "-o", plan_path], monkeypatch, capsys)
    assert code == 0, err
    settings = Plan.load(plan_path).settings.to_dict()
    config = EngineConfig(model="opt-125m", dtype="float32", **settings)
    need = engine_bytes(config)
    assert need.weights + need.device_kv + need.host > free_host_bytes(), "this machine could hold an H100 plan's KV"
    code, _, err = run_pie(["bench", "-m", "opt-125m", "--plan", plan_path, *SMALL, "--results-dir", results], monkeypatch, capsys)
    line = bad_input(code, err, "device blocks fit now", "of memory (on a CPU both KV tiers are RAM) is free")
    fits = int(re.search(r"give --device-blocks (\d+)", line).group(1))
    smaller = engine_bytes(config.replace(num_device_blocks=fits))
    assert 0 < fits < config.num_device_blocks and smaller.weights + smaller.device_kv <= free_host_bytes() * 1.1
    assert records(results) == []


# --- accepted nonsense, or silence ----------------------------------------------------------------------

def test_a_run_where_every_request_failed_is_exit_1_with_the_first_error(model_dir, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "-O", "max_model_len=8", "--results-dir", results, "--json"],
                             monkeypatch, capsys)
    error_line(code, err, 1, "all 6 requests failed", "prompt of 12 tokens leaves no room in the 8-token context",
               "raise max_model_len")
    record = load_record(Path(json.loads(out)["record_path"]))  # --json still prints the run
    assert record.complete and len(record.requests) == 6 and not any(s.success for s in record.requests)


def test_a_run_where_some_failed_says_how_many_and_why(model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_pie(["bench", "-m", model_dir, "--workload", "uniform", "--input-len", "10", "--range-ratio", "0.5",
                              "-n", "8", "--output-len", "2", "-O", "max_model_len=10", "--dtype", "float32", "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert 0 < summary["failed"] < 8
    assert f"warning: {summary['failed']} of 8 requests failed; the first:" in err and "10-token context" in err


def test_block_size_has_one_rule_for_tune_plans_and_the_engine(model_dir, tmp_path, monkeypatch, capsys):
    code, _, err = run_pie(["tune", "-m", "opt-125m", "--hardware", "h100-pcie", "--block-size", "3", "-o", "p.json"],
                           monkeypatch, capsys)
    bad_input(code, err, "--block-size must be a power of two, got 3", "use 2 or 4")
    assert not (tmp_path / "p.json").exists()
    code, _, err = run_pie(["tune", "-m", model_dir, "--hardware", "h100-pcie", "-o", "p.json"], monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads((tmp_path / "p.json").read_text())
    plan["settings"]["block_size"] = 3
    (tmp_path / "p.json").write_text(json.dumps(plan))
    code, _, err = run_pie(["bench", "-m", model_dir, "--plan", "p.json", *SMALL], monkeypatch, capsys)
    bad_input(code, err, "field 'settings.block_size' must be a power of two, got 3")
    code, _, err = run_pie(["bench", "-m", model_dir, *SMALL, "-O", "block_size=3"], monkeypatch, capsys)
    bad_input(code, err, "block_size must be a power of two, got 3")


def test_every_sweep_point_is_checked_before_the_first_runs(model_dir, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    for sweep, fragment in (("pool_blocks=0,100000000", "sweep point pool_blocks=100000000: device budget leaves"),
                            ("output_len=4,500", "sweep point output_len=500: synthetic requests of up to 512 tokens")):
        code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--sweep", sweep, "--json", "--results-dir", results],
                                 monkeypatch, capsys)
        bad_input(code, err, fragment)
        assert json.loads(out)["exit_code"] == 2 and fragment in json.loads(out)["error"] and records(results) == []


def test_json_prints_the_points_that_finished_when_a_later_point_fails(model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--sweep", "device_blocks=64,1", "--json"], monkeypatch, capsys)
    error_line(code, err, 1, "all 6 requests failed", "the device holds 1")
    runs = json.loads(out)["runs"]
    assert [r["sweep_point"] for r in runs] == [{"device_blocks": 64}, {"device_blocks": 1}]
    assert runs[0]["summary"]["completed"] == 6 and runs[1]["summary"]["failed"] == 6


class _FailsBeforeAnyRequest:
    name = "pie"

    def __init__(self, error):
        self.error = error

    def prepare(self, spec):
        from runners.base import PreparedRun

        return PreparedRun(spec, {"model": spec.model}, {"cpu_model": "test"})

    def run(self, prepared, requests, on_request_done):
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("the model would not load")], ids=["ctrl-c", "failure"])
def test_a_run_that_never_finished_a_request_leaves_no_record(error, tmp_path, monkeypatch):
    from runners import bench
    from runners.workloads import WorkloadSpec

    monkeypatch.setattr(bench, "get_runner", lambda name: _FailsBeforeAnyRequest(error))
    settings = bench.BenchSettings(model="opt-125m", dtype="float32",
                                   workload=WorkloadSpec(name="fixed", input_len=8, output_len=2, num_prompts=2))
    with pytest.raises(type(error) if isinstance(error, RuntimeError) else KeyboardInterrupt) as raised:
        bench.run_bench(settings, ResultsStore(tmp_path / "results"))
    assert records(tmp_path / "results") == []
    if isinstance(error, KeyboardInterrupt):
        assert raised.value.record_path is None and "no record was kept" in str(raised.value)


# --- messages that mislead --------------------------------------------------------------------------

def test_hints_are_never_cut_without_saying_so(model_dir, tmp_path, monkeypatch, capsys):
    assert PieError("no", "use a, b, ...").one_line() == "no (hint: use a, b, ...)"
    assert PieError("Stop.", "Fix it.").one_line() == "Stop (hint: Fix it)"
    assert suggest("zzz", [f"name{i}" for i in range(50)]).endswith("name39 and 10 more")
    code, _, err = run_pie(["bench", "-m", model_dir, *SMALL, "--sweep", "bogus=1,2"], monkeypatch, capsys)
    line = bad_input(code, err, "cannot sweep 'bogus'", "request_rate", "pool_blocks", "batch_size)")
    assert ", )" not in line
    store = ResultsStore(tmp_path / "results")
    base, new = write_run(store, 1), write_run(store, 2)
    code, _, err = run_pie(["compare", str(base), str(new), "--fail-on", "bogus_metric:-5%", "--results-dir", store.root],
                           monkeypatch, capsys)
    bad_input(code, err, "unknown metric 'bogus_metric'", "output_throughput")


def test_directories_given_for_files_are_called_directories(tmp_path, monkeypatch, capsys):
    (tmp_path / "PD").mkdir()
    code, _, err = run_pie(["bench", "--plan", "PD", *SMALL], monkeypatch, capsys)
    bad_input(code, err, "plan 'PD' is a directory, not a file")
    code, _, err = run_pie(["tune", "-m", "opt-125m", "--profile", "PD"], monkeypatch, capsys)
    bad_input(code, err, "profile 'PD' is a directory, not a file")


def test_an_unmeetable_tpot_bound_suggests_one_that_is_accepted(model_dir, monkeypatch, capsys):
    code, _, err = run_pie(["tune", "-m", model_dir, "--hardware", "h100-pcie", "--max-tpot-ms", "1e-06"], monkeypatch, capsys)
    line = bad_input(code, err, "cannot be met")
    suggested = re.search(r"use --max-tpot-ms (\S+) or more", line).group(1)
    assert float(suggested) > 0, line  # was "0.00", itself refused
    code, _, err = run_pie(["tune", "-m", model_dir, "--hardware", "h100-pcie", "--max-tpot-ms", suggested], monkeypatch, capsys)
    assert code == 0, err


def test_report_on_an_incomplete_run_reports_the_requests_it_kept(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "results")
    unfinished = write_run(store, 3, finish=False)
    code, _, err = run_pie(["report", str(unfinished), "--results-dir", store.root], monkeypatch, capsys)
    assert code == 0 and "is incomplete (interrupted)" in err and (tmp_path / "pie-report.html").exists(), err


@pytest.mark.parametrize("args, fragment", [
    (["bench", "-n", "abc"], "Invalid value for '--num-prompts'"), (["models", "--bogus"], "No such option: --bogus")])
def test_parse_errors_are_one_line_with_the_usage_hint(args, fragment, monkeypatch, capsys):
    command = " ".join(args[:1])
    bad_input(*run_pie(args, monkeypatch, capsys)[::2], fragment, f"(hint: see `pie {command} --help`)")


# --- 20 bad inputs of our own, outside the list (each misbehaved before) ----------------------

def llama_rope_abc(config):
    return {**config, "model_type": "llama", "intermediate_size": 64, "rope_theta": "abc"}


OWN = [  # (id, args with MODEL / RECORD placeholders, model edit, fragment); every one was exit 0 or 1 or a hang before
    ("seed-negative", ["bench", "-m", "MODEL", *SMALL, "--seed", "-1"], None, "--seed must be between 0 and 4294967295"),
    ("adaptive-maybe", ["bench", "-m", "MODEL", *SMALL, "-O", "adaptive=maybe"], None, "adaptive='maybe' is not true/false"),
    ("hf-batch-abc", ["bench", "-m", "MODEL", *SMALL, "--runner", "hf", "-O", "batch_size=abc"], None,
     "hf runner option batch_size='abc' is not a whole number"),
    ("config-list", ["bench", "-m", "MODEL", *SMALL], lambda c: [1, 2], "config.json is not a Hugging Face config (a JSON list"),
    ("rope-theta-abc", ["tune", "-m", "MODEL", "--hardware", "h100-pcie"], llama_rope_abc, "'rope_theta' must be a number, got 'abc'"),
    ("results-dir-file", ["show", "--results-dir", "RECORD"], None, "is a file, not a directory"),
    ("online-zero-prompts", ["tune", "-m", "opt-125m", "--online", "--num-prompts", "0"], None, "--num-prompts must be at least 1"),
    ("workload-file-missing", ["tune", "-m", "opt-125m", "--hardware", "h100-pcie", "--workload", "missing.json"], None,
     "workload file 'missing.json' does not exist"),
    ("threshold-nan", ["compare", "RECORD", "RECORD", "--threshold", "nan"], None, "--threshold must be a finite number"),
    ("label-comma", ["bench", "-m", "MODEL", *SMALL, "--label", "a,b"], None, "cannot be selected later"),
    ("label-empty", ["bench", "-m", "MODEL", *SMALL, "--label", ""], None, "cannot be selected later"),
    ("device-name", ["bench", "-m", "MODEL", *SMALL, "--device", "cuda:x"], None, "unknown device 'cuda:x'"),
    ("max-model-len-beyond", ["bench", "-m", "MODEL", *SMALL, "-O", "max_model_len=100000"], None,
     "max_model_len must be between 1 and 128, got 100000"),
    ("goodput-twice", ["bench", "-m", "MODEL", *SMALL, "--goodput", "ttft:5", "--goodput", "ttft:10"], None, "given twice"),
    ("rule-never-fires", ["compare", "RECORD", "RECORD", "--fail-on", "output_throughput:-500%"], None, "can never fire"),
    ("huge-budget", ["tune", "-m", "opt-125m", "--hardware", "h100-pcie", "--gpu-memory", "99999999999999999999999GiB"], None,
     "TiB exceeds the 74.5 GiB of device memory"),
    ("pool-blocks-for-hf", ["bench", "-m", "MODEL", *SMALL, "--runner", "hf", "--pool-blocks", "8"], None,
     "--pool-blocks configures the Pie engine"),
    ("input-len-for-sharegpt", ["bench", "-m", "MODEL", "--workload", "sharegpt", "--input-len", "5", "-n", "2"], None,
     "--input-len sets the prompts of the fixed, uniform, phases workloads"),
    ("window-s-inf", ["bench", "-m", "MODEL", *SMALL, "-O", "window_s=inf"], None, "window_s must be a finite number"),
]


@pytest.mark.parametrize("name, args, edit, fragment", OWN, ids=[case[0] for case in OWN])
def test_own_bad_inputs(name, args, edit, fragment, model_dir, tmp_path, monkeypatch, capsys):
    model = model_copy(model_dir, tmp_path, "model", edit) if edit else model_dir
    record = write_run(ResultsStore(tmp_path / "results"), 1) if "RECORD" in args else None
    args = [{"MODEL": model, "RECORD": record}.get(arg, arg) for arg in args]
    code, _, err = run_pie(args, monkeypatch, capsys)
    line = bad_input(code, err, fragment)
    assert "99999999999999991611392" not in line  # a size in words, not 23 digits
    assert not (tmp_path / ".pie").exists()  # nothing ran first (the --online case took a quick profile before)


def test_own_a_rate_that_spreads_the_run_over_decades_is_refused_not_waited_for(model_dir, tmp_path):
    code, _, err = run_child(["bench", "-m", model_dir, *SMALL, "--request-rate", "1e-9"], tmp_path, timeout=120)  # was a hang
    bad_input(code, err, "--request-rate 1e-09 spreads 6 requests over about", "requests per second")
    assert not (tmp_path / ".pie").exists()


def test_own_a_zero_pool_budget_plans_without_a_pool(monkeypatch, capsys):
    code, out, err = run_pie(["tune", "-m", "opt-125m", "--hardware", "h100-pcie", "--cpu-memory", "0GB", "--json"],
                             monkeypatch, capsys)  # was refused as "must be positive"
    assert code == 0, err
    assert json.loads(out)["settings"]["num_pool_blocks"] == 0
