"""`pie tune` end to end in-process: tables, --json, --output, and one-line errors with exit code 2."""
from __future__ import annotations

import json

import pytest

from planner.plan import Plan
from tests.planner_fixtures import synthetic_profile

from cli_helpers import run_pie


def run(argv, capsys, monkeypatch):
    code, out, err = run_pie(["tune", *argv], monkeypatch, capsys)
    return code or 0, out, err


def test_plan_table_names_the_binding_constraint(capsys, monkeypatch):
    # How long it takes (< 2 s) is benchmarks/bench_tune_speed.py's to measure, not a unit test's.
    code, out, err = run(["--model", "opt-30b", "--hardware", "h100-pcie"], capsys, monkeypatch)
    assert code == 0, err
    assert "with pool" in out and "no pool" in out and "datasheet" in out
    assert "link-bound" in out and "GB/s" in out


def test_json_and_output_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "plan.json"
    code, out, err = run(["--model", "opt-30b", "--hardware", "gh200", "--json", "--output", str(path)], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert data["settings"]["num_pool_blocks"] > 0 and data["hardware"]["source"] == "preset"
    assert Plan.load(path).settings.num_pool_blocks == data["settings"]["num_pool_blocks"]


def test_measured_profile_is_used(tmp_path, capsys, monkeypatch):
    path = tmp_path / "profile.json"
    synthetic_profile("opt-125m").save(path)
    code, out, err = run(["--model", "opt-125m", "--profile", str(path), "--gpu-memory", "2GiB", "--cpu-memory", "2GiB",
                          "--workload", "alpaca", "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert data["hardware"]["cost_coefficients"] == "fitted" and data["dtype"] == "bfloat16"


@pytest.mark.parametrize("argv, expected", [
    (["--model", "opt-66b", "--hardware", "l4", "--cpu-memory", "50GB"], "short by"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--gpu-memory", "0GB"], "must be positive"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--gpu-memory", "70"], "has no unit"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--cpu-memory", "-5GB"], "must be 0 or more"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--gpu-memory", "200GB"], "exceeds"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--cpu-memory", "5TB"], "exceeds"),
    (["--model", "opt-30b", "--hardware", "h300"], "valid presets: h100-pcie"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--max-tpot-ms", "0.5"], "best achievable"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--workload", "nosuch"], "unknown workload"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--profile", "x.json"], "both given"),
    (["--model", "opt-30b", "--hardware", "h100-pcie", "--online"], "--online runs the engine on this machine"),
])
def test_bad_input_is_one_line_with_exit_code_2(argv, expected, capsys, monkeypatch):
    code, out, err = run(argv, capsys, monkeypatch)
    assert code == 2, (out, err)
    assert expected in err and len(err.strip().splitlines()) == 1, err


def test_profile_for_another_model_or_schema_is_rejected(tmp_path, capsys, monkeypatch):
    other = tmp_path / "other.json"
    synthetic_profile("opt-125m").save(other)
    code, _, err = run(["--model", "opt-350m", "--profile", str(other)], capsys, monkeypatch)
    assert code == 2 and "opt-125m" in err and len(err.strip().splitlines()) == 1
    old = tmp_path / "old.json"
    synthetic_profile("opt-125m", schema_version=99).save(old)
    code, _, err = run(["--model", "opt-125m", "--profile", str(old)], capsys, monkeypatch)
    assert code == 2 and "schema version" in err


def test_default_uses_this_hosts_saved_profile(tmp_path, capsys, monkeypatch):
    import dataclasses

    from pie_core.capability import choose_dtype
    from pie_core.device_probe import detect_capability
    from pie_core.fingerprint import hostname_hash

    this_cpu = detect_capability("cpu")
    profile = synthetic_profile("opt-125m", dtype=choose_dtype(this_cpu).dtype)  # the dtype auto picks here
    profile = dataclasses.replace(profile, fingerprint={**profile.fingerprint, "hostname_sha256": hostname_hash(),
                                                        "capability": this_cpu.to_dict()})
    profile.save(tmp_path / ".pie" / "profiles" / "this-host-opt-125m.json")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["--model", "opt-125m", "--gpu-memory", "2GiB", "--cpu-memory", "2GiB", "--device", "cpu", "--json"],
                         capsys, monkeypatch)
    assert code == 0, err
    assert "saved profile" in err and json.loads(out)["hardware"]["source"] == "profile"


def test_a_saved_profile_of_another_device_or_capability_is_not_used(tmp_path, monkeypatch):
    """A profile taken with the ISA limited (or of another device) describes another machine: it is passed over."""
    import dataclasses

    from pie_core.capability import choose_dtype
    from pie_core.device_probe import detect_capability
    from pie_core.fingerprint import hostname_hash
    from profiler.saved_profiles import saved_profile

    this_cpu = detect_capability("cpu")
    dtype = choose_dtype(this_cpu).dtype
    base = synthetic_profile("opt-125m", dtype=dtype)
    base = dataclasses.replace(base, fingerprint={**base.fingerprint, "hostname_sha256": hostname_hash()})
    folder = tmp_path / ".pie" / "profiles"
    limited = this_cpu.with_changes(torch_cpu_capability="DEFAULT", cpu_flags=())
    def with_capability(cap, **changes):
        return dataclasses.replace(base, fingerprint={**base.fingerprint, "capability": cap.to_dict()}, **changes)

    with_capability(limited).save(folder / "limited.json")
    with_capability(this_cpu, device="cuda").save(folder / "gpu.json")
    monkeypatch.chdir(tmp_path)
    assert saved_profile(folder, "opt-125m", dtype, "cpu") is None
    with_capability(this_cpu).save(folder / "same.json")
    assert saved_profile(folder, "opt-125m", dtype, "cpu").name == "same.json"


def test_workload_file_gives_measured_lengths(tmp_path, capsys, monkeypatch):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"prompt_token_ids": list(range(1, 21 + i)), "output_len": 50 + 2 * i}) + "\n"
                            for i in range(5)))
    code, out, err = run(["--model", "opt-30b", "--hardware", "h100-pcie", "--workload", str(path), "--json"], capsys, monkeypatch)
    assert code == 0, err
    workload = json.loads(out)["workload"]
    assert workload["mean_input_tokens"] == 22 and workload["mean_output_tokens"] == 54 and not workload["synthetic"]
    # the decode-weighted context: (o - 1) decode steps at mean context p + o / 2 each
    lengths = [(21 + i - 1, 50 + 2 * i) for i in range(5)]
    expected = sum((o - 1) * (p + o / 2) for p, o in lengths) / sum(o - 1 for _, o in lengths)
    assert workload["decode_context_tokens"] == pytest.approx(expected)
