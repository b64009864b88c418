"""`--dtype auto` end to end: the choice is said once, stored in the profile, the plan and the run record;
emulated dtypes warn with measured rates; bad names and dtypes the device cannot run are exit 2."""
import json

import pytest

import pie_core.device_probe as device_probe
from results.store import ResultsStore, load_record

from capability_records import RECORDS
from cli_helpers import run_pie
from tiny_hf_model import tiny_model_dir

SMALL = ["--workload", "fixed", "--input-len", "8", "--output-len", "4", "-n", "3"]
AVX2 = RECORDS["zen3-avx2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("dtype") / "opt", tokenizer=True)


@pytest.fixture
def avx2_machine(monkeypatch):
    """This process sees an AVX2-only CPU: auto is float32, bfloat16 is emulated."""
    monkeypatch.setitem(device_probe._detected, "cpu", AVX2)
    return AVX2


@pytest.mark.parametrize("command", [["bench", "--dtype", "int8"], ["profile", "--quick", "--dtype", "int8"],
                                     ["tune", "--model", "opt-125m", "--hardware", "h100", "--dtype", "fp8"]])
def test_unknown_dtype_is_exit_2_with_the_accepted_names(command, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_pie(command, monkeypatch, capsys)
    assert code == 2, err
    assert "unknown dtype" in err and "accepted: auto, bfloat16 (bf16), float16 (fp16, half), float32 (fp32, float)" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / ".pie").exists()  # nothing was measured, nothing half-written


def test_a_dtype_the_device_cannot_run_is_exit_2_naming_what_to_use(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(device_probe._detected, "cpu", AVX2.with_changes(runnable_dtypes=("bfloat16", "float32")))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_pie(["bench", "--dtype", "float16", *SMALL], monkeypatch, capsys)
    assert code == 2
    assert "float16 does not run on cpu x86_64 AVX2" in err and "use --dtype auto (float32)" in err


def test_auto_on_an_avx2_record_benches_in_float32_and_records_it(model_dir, avx2_machine, monkeypatch, capsys, tmp_path):
    results = tmp_path / "results"
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--results-dir", results, "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    assert err.count("dtype float32 (auto: cpu x86_64 AVX2 only emulates bfloat16)") == 1
    payload = json.loads(out)
    assert payload["config"]["dtype"] == "float32"
    assert payload["config"]["kernels"]["decode_attention"] in ("c-avx2", "torch")
    assert payload["config"]["kernels"]["linear"] == "torch-linear"
    record = load_record(ResultsStore(results).paths()[0])
    assert record.header.config["dtype"] == "float32" and record.header.config["dtype_requested"] == "auto"
    assert record.header.fingerprint["capability"]["torch_cpu_capability"] == "AVX2"


def test_an_emulated_dtype_runs_with_one_warning_giving_measured_rates(model_dir, avx2_machine, monkeypatch, capsys, tmp_path):
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--dtype", "bf16", "--results-dir", tmp_path, "--json"],
                             monkeypatch, capsys)
    assert code in (0, None), err
    warnings = [line for line in err.splitlines() if "is emulated on" in line]
    assert len(warnings) == 1
    assert "bfloat16 is emulated on cpu x86_64 AVX2" in warnings[0]
    for name in ("bfloat16", "float16", "float32"):
        assert f"{name} " in warnings[0].split("measured:")[1]
    assert "--dtype auto picks float32" in warnings[0]
    assert json.loads(out)["config"]["dtype"] == "bfloat16"


def test_tune_on_a_preset_picks_the_dtype_from_its_compute_capability(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_pie(["tune", "--model", "opt-1.3b", "--hardware", "h100", "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    assert json.loads(out)["dtype"] == "bfloat16" and "dtype bfloat16 (auto: cuda 9.0" in err


def test_compare_names_a_dtype_change(model_dir, avx2_machine, monkeypatch, capsys, tmp_path):
    results = tmp_path / "results"
    for dtype, label in (("float32", "a"), ("bfloat16", "b")):
        code, _, err = run_pie(["bench", "-m", model_dir, *SMALL, "--dtype", dtype, "--label", label,
                                "--results-dir", results, "--json"], monkeypatch, capsys)
        assert code in (0, None), err
    code, out, err = run_pie(["compare", "label=a", "label=b", "--results-dir", results, "--format", "json"],
                             monkeypatch, capsys)
    assert code in (0, None), err
    changes = json.loads(out)["config_changes"]
    assert changes[0] == "dtype: float32 -> bfloat16"
    assert "configuration changed between the sides (dtype: float32 -> bfloat16" in err


def test_bench_with_a_plan_takes_the_plans_dtype_unless_told(model_dir, monkeypatch, capsys, tmp_path):
    plan = tmp_path / "plan.json"
    code, _, err = run_pie(["tune", "--model", model_dir, "--hardware", "a100", "--output", plan], monkeypatch, capsys)
    assert code in (0, None), err
    assert json.loads(plan.read_text())["dtype"] == "bfloat16"  # compute capability 8.0
    small_engine = [*SMALL, "--plan", plan, "--device-blocks", "64", "--pool-blocks", "0", "--results-dir", tmp_path, "--json"]
    code, out, err = run_pie(["bench", "-m", model_dir, *small_engine], monkeypatch, capsys)
    assert code in (0, None), err
    assert "dtype bfloat16 (auto: the plan's)" in err and json.loads(out)["config"]["dtype"] == "bfloat16"
    code, out, err = run_pie(["bench", "-m", model_dir, *small_engine, "--dtype", "float32"], monkeypatch, capsys)
    assert code in (0, None), err
    assert json.loads(out)["config"]["dtype"] == "float32"


def test_the_hf_runner_gets_the_same_resolved_dtype(model_dir, avx2_machine, monkeypatch, capsys, tmp_path):
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--runner", "hf", "--results-dir", tmp_path, "--json"],
                             monkeypatch, capsys)
    assert code in (0, None), err
    assert "dtype float32 (auto:" in err and json.loads(out)["config"]["dtype"] == "float32"
    record = load_record(ResultsStore(tmp_path).paths()[0])
    assert record.header.config["dtype"] == "float32" and record.header.runner == "hf"
