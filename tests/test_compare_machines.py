"""The machine rule: CPU identity in the fingerprint, and no `pie compare` verdict across machines unless allowed."""
import json

import pytest

from cli_helpers import run_pie
from compare_synthetic import write_run
from pie_core.fingerprint import cpu_identity, cpu_identity_from_cpuinfo, cpu_identity_from_processor
from results.machines import machine_differences
from results.store import ResultsStore

RULES = ["--fail-on", "output_throughput:-5%"]
CAPABILITY = {"kind": "cpu", "arch": "x86_64", "torch_cpu_capability": "AVX512", "cpu_flags": ["avx2", "avx512f"]}
# Two runner generations that `lscpu` names alike: Zen 3 (family 25, model 1) and Zen 4 (family 25, model 17).
ZEN3 = {"cpu_model": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_family": 25, "cpu_model_number": 1,
        "cpu_stepping": 1, "cpu_cores": 2, "capability": {**CAPABILITY, "torch_cpu_capability": "AVX2"},
        "hostname_sha256": "aaaa"}
ZEN4 = {**ZEN3, "cpu_model_number": 17, "capability": CAPABILITY, "hostname_sha256": "bbbb"}

CPUINFO_X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
"""
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 50.00
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd0c
CPU revision\t: 1
"""


def test_cpu_identity_reads_x86_arm_and_windows_spellings():
    assert cpu_identity_from_cpuinfo(CPUINFO_X86) == {"cpu_vendor": "AuthenticAMD", "cpu_family": 25,
                                                      "cpu_model_number": 17, "cpu_stepping": 1}
    assert cpu_identity_from_cpuinfo(CPUINFO_ARM) == {"cpu_vendor": "0x41", "cpu_family": 8,
                                                      "cpu_model_number": 0xd0c, "cpu_stepping": "1.1"}
    assert cpu_identity_from_cpuinfo("garbage\n") == {}
    assert cpu_identity_from_processor("Intel64 Family 6 Model 167 Stepping 1, GenuineIntel") == {
        "cpu_vendor": "GenuineIntel", "cpu_family": 6, "cpu_model_number": 167, "cpu_stepping": 1}
    assert set(cpu_identity()) == {"cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping"}


@pytest.fixture()
def store(tmp_path):
    store = ResultsStore(tmp_path / "results")
    for k in range(3):
        write_run(store, seed=k, label="zen3", fingerprint=ZEN3)
        write_run(store, seed=10 + k, label="zen4", fingerprint=ZEN4, slowdown=1.25)
        write_run(store, seed=20 + k, label="zen3-other-host", fingerprint={**ZEN3, "hostname_sha256": "cccc"})
    write_run(store, seed=30, label="mixed", fingerprint=ZEN3)
    write_run(store, seed=31, label="mixed", fingerprint=ZEN4)
    return store


def test_different_machines_are_exit_2_with_the_reason_and_the_fix(store, monkeypatch, capsys):
    code, out, err = run_pie(["compare", "label=zen3", "label=zen4", *RULES, "--results-dir", store.root],
                             monkeypatch, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: refusing to compare runs from different machines")
    assert "cpu_model_number: 1 -> 17" in err and "capability.torch_cpu_capability: AVX2 -> AVX512" in err
    assert "hint: measure both sides in one job" in err and "--allow-different-machines" in err


@pytest.mark.parametrize("output_format", ["table", "markdown", "json"])
def test_allowed_verdict_is_marked_in_every_format(store, monkeypatch, capsys, output_format):
    code, out, err = run_pie(["compare", "label=zen3", "label=zen4", *RULES, "--allow-different-machines",
                              "--format", output_format, "--results-dir", store.root], monkeypatch, capsys)
    assert code == 3  # the 25% slowdown still fires the rule; the verdict says where it came from
    if output_format == "json":
        payload = json.loads(out)
        assert "(different machines: " in payload["verdict"] and payload["regression"] is True
        assert "cpu_model_number: 1 -> 17" in payload["different_machines"]
        assert any("verdict across different machines" in w for w in payload["warnings"])
    elif output_format == "markdown":
        first = out.splitlines()[0]
        assert first.startswith("### :x: pie compare: REGRESSION") and "(different machines: " in first
        assert "> warning: verdict across different machines" in out
    else:
        assert "different machines" in out and "verdict across different machines" in err


def test_a_side_that_mixes_machines_counts_as_differing(store, monkeypatch, capsys):
    code, _, err = run_pie(["compare", "label=zen3", "label=mixed", "--results-dir", store.root], monkeypatch, capsys)
    assert code == 2 and "label=mixed mixes machines" in err and "cpu_model_number: 1 -> 1 | 17" in err


def test_same_kind_of_machine_on_another_host_gets_an_unmarked_verdict(store, monkeypatch, capsys):
    code, out, err = run_pie(["compare", "label=zen3", "label=zen3-other-host", *RULES, "--json",
                              "--results-dir", store.root], monkeypatch, capsys)
    payload = json.loads(out)
    assert code == 0 and payload["different_machines"] == [] and "different machines" not in payload["verdict"]
    assert any("hostname_sha256" in w for w in payload["warnings"])  # other fields still warn


def test_field_missing_everywhere_is_ignored_and_missing_on_one_side_differs(tmp_path):
    store = ResultsStore(tmp_path)
    old = [store.load(str(write_run(store, seed=k, fingerprint={"cpu_model": "AMD EPYC"}))) for k in range(2)]
    new = [store.load(str(write_run(store, seed=5, fingerprint=ZEN4)))]
    assert machine_differences("a", old, "b", old) == ()
    assert "cpu_family: missing -> 25" in machine_differences("old", old, "new", new)


def test_simulated_runs_are_not_held_to_one_machine(tmp_path):
    store = ResultsStore(tmp_path)
    base = [store.load(str(write_run(store, seed=1, fingerprint={**ZEN3, "simulated": True})))]
    new = [store.load(str(write_run(store, seed=2, fingerprint={**ZEN4, "simulated": True})))]
    assert machine_differences("a", base, "b", new) == ()
