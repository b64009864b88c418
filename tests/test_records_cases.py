"""Every case of issue 26, each with its exit code and message: records and verdicts that cannot be fooled.

Records come from `pie bench --runner sim` (a few simulated requests, no torch) or tests/compare_synthetic.py;
every command runs in-process through the console entry point.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from results.store import ResultsStore, load_record
from tests.cli_helpers import run_pie
from tests.compare_synthetic import write_run
from tests.planner_fixtures import synthetic_profile

SIM = ["bench", "--runner", "sim", "--hardware", "h100-pcie", "--model", "opt-13b", "-n", "6"]
LONG = "a" * 300


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIE_DEBUG", raising=False)


def pie(monkeypatch, capsys, *args):
    return run_pie(list(args), monkeypatch, capsys)


def error(code, err, expected_code, *fragments):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == expected_code, err
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def sim_run(monkeypatch, capsys, results: Path, *extra) -> Path:
    code, out, err = pie(monkeypatch, capsys, *SIM, "--results-dir", results, "--json", *extra)
    assert code == 0, err
    return Path(json.loads(out)["record_path"])


def edit_header(path: Path, **fields) -> None:
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **fields})
    path.write_text("\n".join(lines) + "\n")


# --- a fake regression ------------------------------------------------------------------------------

def test_a_run_listed_twice_claims_no_significance(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    a, b = write_run(store, 1), write_run(store, 2, slowdown=1.3)
    code, out, err = pie(monkeypatch, capsys, "compare", f"{a},{a}", f"{b},{b}", "--fail-on", "output_throughput:-1%",
                         "--results-dir", store.root, "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert not payload["fired_rules"] and "significant" not in payload["verdict"].replace("not significance-tested", "")
    assert payload["before"]["run_ids"] == [load_record(a).run_id]
    assert any("reached more than once" in note and "counts once" in note for note in payload["notes"])


def test_a_selector_over_two_copies_of_one_record_counts_it_once(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    a, b = write_run(store, 1, label="base"), write_run(store, 2, slowdown=1.3, label="new")
    shutil.copy(a, a.with_name("copy-" + a.name))
    shutil.copy(b, b.with_name("copy-" + b.name))
    code, out, err = pie(monkeypatch, capsys, "compare", "label=base", "label=new", "--fail-on", "output_throughput:-1%",
                         "--results-dir", store.root, "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert len(payload["before"]["run_ids"]) == 1 and not payload["fired_rules"]
    assert "not significance-tested" in payload["verdict"]


def test_a_a_over_duplicated_selectors_gives_no_false_verdict(tmp_path, monkeypatch, capsys):
    """20 A/A pairs (same configuration, run-to-run noise only), each run also copied and listed twice: no rule fires,
    and three distinct runs per side get the same p-values duplicated as not."""
    false_verdicts = 0
    rules = ["--fail-on", "output_throughput:-1%", "--fail-on", "p99_ttft_ms:+1%"]
    for trial in range(20):
        store = ResultsStore(tmp_path / f"r{trial}")
        base = [write_run(store, 100 * trial + i, label="a") for i in range(3)]
        new = [write_run(store, 100 * trial + 50 + i, label="b") for i in range(3)]
        for path in base + new:
            shutil.copy(path, path.with_name("copy-" + path.name))
        code, out, _ = pie(monkeypatch, capsys, "compare", f"{base[0]},{base[0]}", f"{new[0]},{new[0]}", *rules,
                           "--results-dir", store.root, "--json")
        false_verdicts += code != 0 or bool(json.loads(out)["fired_rules"])
        code, out, _ = pie(monkeypatch, capsys, "compare", "label=a", "label=b", *rules, "--results-dir", store.root, "--json")
        duplicated = json.loads(out)
        if trial % 4:
            continue  # the p-value identity is checked on every fourth trial (each compare costs a store scan)
        code_once, out_once, _ = pie(monkeypatch, capsys, "compare", ",".join(map(str, base)), ",".join(map(str, new)),
                                     *rules, "--results-dir", store.root, "--json")
        once = json.loads(out_once)
        rounded = [[None if r["p_value"] is None else round(r["p_value"], 9) for r in c["rows"]] for c in (duplicated, once)]
        assert rounded[0] == rounded[1] and code == code_once
        assert sorted(duplicated["before"]["run_ids"]) == sorted(once["before"]["run_ids"])
    assert false_verdicts == 0


# --- lost records ---------------------------------------------------------------------------------

def test_report_and_tune_never_write_over_a_record(tmp_path, monkeypatch, capsys):
    results = tmp_path / ".pie" / "results"
    record = sim_run(monkeypatch, capsys, results)
    before = record.read_bytes()
    code, _, err = pie(monkeypatch, capsys, "report", record.stem, "-o", record.with_suffix(".html"), "--results-dir", results)
    error(code, err, 2, "inside the results directory", "only `pie bench` writes", "outside the results directory")
    code, _, err = pie(monkeypatch, capsys, "report", record.stem, "-o", record, "--results-dir", results)
    error(code, err, 2, "--output", "html or markdown")
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", "opt-13b", "--hardware", "h100-pcie", "-o", record)
    error(code, err, 2, f"--output '{record}' is a run record", "would destroy it")
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", "opt-13b", "--hardware", "h100-pcie", "-o", results / "plan.json")
    error(code, err, 2, "inside the results directory")
    assert record.read_bytes() == before and [p.name for p in results.iterdir()] == [record.name]


# --- one bad file must not break every listing ----------------------------------------------------

@pytest.mark.parametrize("field, value, found", [("created_at", 5, "must be text, got 5"),
                                                 ("workload", "sharegpt", "must be an object"),
                                                 ("config", [1], "must be an object, got a list"),
                                                 ("sweep_point", -1, "must be an object")])
def test_a_bad_header_is_named_and_left_out(field, value, found, tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    good, bad = sim_run(monkeypatch, capsys, results), sim_run(monkeypatch, capsys, results, "--seed", "1")
    edit_header(bad, **{field: value})
    code, out, err = pie(monkeypatch, capsys, "show", "--results-dir", results, "--json")
    assert code == 0 and [run["run_id"] for run in json.loads(out)["runs"]] == [good.stem], out
    assert f"warning: left out a record pie cannot read: record '{bad}' line 1: field '{field}' {found}" in " ".join(err.split())
    code, _, err = pie(monkeypatch, capsys, "show", bad)
    error(code, err, 2, f"field '{field}' {found}", "hint:")
    code, _, err = pie(monkeypatch, capsys, "compare", "runner=sim", "runner=sim", "--results-dir", results)
    assert code == 0 and "left out record file" in err and bad.name in err, err
    code, _, err = pie(monkeypatch, capsys, "report", "runner=sim", "-o", tmp_path / "r.html", "--results-dir", results)
    assert code == 0 and bad.name in err, err


def test_a_string_summary_and_bad_request_fields_are_named(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    record = sim_run(monkeypatch, capsys, results)
    lines = record.read_text().splitlines()
    summary = json.loads(lines[-1])
    lines[-1] = json.dumps({**summary, "summary": "fast"})
    record.write_text("\n".join(lines) + "\n")
    code, _, err = pie(monkeypatch, capsys, "show", record)
    error(code, err, 2, f"line {len(lines)}: field 'summary' must be an object of metrics, got the text \"fast\"")
    request = json.loads(lines[1])
    lines[-1] = json.dumps(summary)
    lines[1] = json.dumps({**request, "ttft_s": "soon"})
    record.write_text("\n".join(lines) + "\n")
    code, _, err = pie(monkeypatch, capsys, "show", record)
    error(code, err, 2, "line 2: field 'ttft_s' must be a number, got the text \"soon\"")
    lines[1] = json.dumps({**request, "output_len": -3})
    record.write_text("\n".join(lines) + "\n")
    code, _, err = pie(monkeypatch, capsys, "show", record)
    error(code, err, 2, "line 2: field 'output_len' must be at least 0, got -3")


def test_truncated_and_utf16_records_are_never_dropped_silently(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    good = sim_run(monkeypatch, capsys, results)
    torn_inside, utf16 = results / "torn.jsonl", results / "utf16.jsonl"
    lines = good.read_text().splitlines()
    edit = [json.dumps({**json.loads(lines[0]), "run_id": "torn"}), lines[1][: len(lines[1]) // 2], *lines[2:]]
    torn_inside.write_text("\n".join(edit) + "\n")
    utf16.write_text(good.read_text().replace(good.stem, "utf16"), encoding="utf-16")
    code, out, err = pie(monkeypatch, capsys, "show", "--results-dir", results)
    assert code == 0 and "torn.jsonl' line 2 is not valid JSON" in " ".join(err.split()) and "utf16.jsonl' is UTF-16" in err, err
    code, _, err = pie(monkeypatch, capsys, "show", utf16)
    error(code, err, 2, "is UTF-16; pie reads UTF-8", "iconv")
    killed = results / "killed.jsonl"  # a run killed mid-write: the torn last line is forgiven, the run is incomplete
    killed.write_text("\n".join([json.dumps({**json.loads(lines[0]), "run_id": "killed"}), lines[1], lines[2][:40]]))
    record = load_record(killed)
    assert not record.complete and len(record.requests) == 1


# --- nonsense profiles ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, fragment", [("fixed_s", -1e-3, "field 'decode_fit.fixed_s' must be at least 0, got -0.001"),
                                                    ("per_token_s", "4e-6", "field 'decode_fit.per_token_s' must be a number, got the text")])
def test_a_nonsense_profile_is_refused(field, value, fragment, tmp_path, monkeypatch, capsys):
    data = synthetic_profile("opt-125m").to_dict()
    data["decode_fit"][field] = value
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", "opt-125m", "--profile", path)
    error(code, err, 2, f"profile '{path}':", fragment, "re-run `pie profile`")
    code, _, err = pie(monkeypatch, capsys, "bench", "--runner", "sim", "--profile", path, "--model", "opt-125m", "-n", "2",
                       "--results-dir", tmp_path / "r")
    error(code, err, 2, fragment)
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


# --- uncaught exceptions --------------------------------------------------------------------------

def test_deep_nesting_is_bad_input_or_one_malformed_line(tmp_path, monkeypatch, capsys):
    deep = "[" * 200_000 + "]" * 200_000
    sharegpt, jsonl = tmp_path / "deep.json", tmp_path / "deep.jsonl"
    sharegpt.write_text(deep)
    code, _, err = pie(monkeypatch, capsys, *SIM, "--workload", "sharegpt", "--dataset-path", sharegpt, "--results-dir", tmp_path / "r")
    error(code, err, 2, f"dataset file '{sharegpt}' nests deeper than Python can read")
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", "opt-13b", "--hardware", "h100-pcie", "--workload", sharegpt)
    error(code, err, 2, f"workload file '{sharegpt}' nests deeper")
    good = [json.dumps({"prompt": "count to ten " * 3, "output_len": 4})] * 3
    jsonl.write_text("\n".join([good[0], deep, *good[1:]]) + "\n")
    code, _, err = pie(monkeypatch, capsys, *SIM, "--workload", "jsonl", "--dataset-path", jsonl, "--results-dir", tmp_path / "r")
    assert code == 0 and "deep.jsonl: skipped 1 malformed entry; the first: line 2: nests deeper than Python can read" in " ".join(err.split()), err


def test_long_paths_are_named(tmp_path, monkeypatch, capsys):
    code, _, err = pie(monkeypatch, capsys, *SIM, "--results-dir", LONG)
    error(code, err, 2, "--results-dir 'aaaa", "is a name of 300 bytes", "use a shorter name")
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", "opt-13b", "--hardware", "h100-pcie", "-o", LONG + ".json")
    error(code, err, 2, "--output 'aaaa", "is a name of 305 bytes")
    code, _, err = pie(monkeypatch, capsys, "show", "--results-dir", LONG)
    error(code, err, 2, "--results-dir 'aaaa")


# --- messages and exit codes ----------------------------------------------------------------------

def test_sim_with_too_few_device_blocks_says_every_request_was_refused(tmp_path, monkeypatch, capsys):
    code, _, err = pie(monkeypatch, capsys, *SIM, "--device-blocks", "4", "--results-dir", tmp_path / "r")
    error(code, err, 1, "all 6 requests failed", "sim refused the request", "the device holds 4")
    (path,) = (tmp_path / "r").glob("*.jsonl")
    record = load_record(path)
    assert record.complete and record.summary["failed"] == 6 and record.summary["output_throughput"] == 0


def test_a_rule_that_fires_only_on_an_improvement_is_refused(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    a, b = write_run(store, 1), write_run(store, 2, slowdown=0.05)
    for rule, meant in (("mean_ttft_ms:-50%", "mean_ttft_ms:+50%"), ("output_throughput:+5%", "output_throughput:-5%")):
        code, _, err = pie(monkeypatch, capsys, "compare", a, b, "--fail-on", rule, "--results-dir", store.root)
        error(code, err, 2, f"--fail-on '{rule}' would fire only when", "improves", f"write --fail-on {meant}")


@pytest.mark.parametrize("args, fragments", [
    (["-O", "max_num_seqs=8", "-O", "max-num-seqs=2"], ["-O max_num_seqs=8 and -O max-num-seqs=2", "give -O max_num_seqs once"]),
    (["-O", "num_pool_blocks=64", "--pool-blocks", "0"], ["--pool-blocks 0 and -O num_pool_blocks=64"]),
    (["--sweep", "pool_blocks=0,16", "--pool-blocks", "32"], ["--sweep pool_blocks=0,16 and --pool-blocks 32 both set num_pool_blocks"]),
    (["--sweep", "pool_blocks=0,16", "--sweep", "pool_blocks=0,8"], ["--sweep pool_blocks=0,16 and --sweep pool_blocks=0,8 conflict"]),
    (["--seed", "1", "--seed=2"], ["--seed 1 and --seed 2 conflict", "give --seed once"]),
])
def test_conflicting_repeated_options_name_both(args, fragments, tmp_path, monkeypatch, capsys):
    code, _, err = pie(monkeypatch, capsys, *SIM, *args, "--results-dir", tmp_path / "r")
    error(code, err, 2, *fragments)
    assert not (tmp_path / "r").exists()


def test_the_same_value_twice_is_harmless(tmp_path, monkeypatch, capsys):
    code, _, err = pie(monkeypatch, capsys, *SIM, "-O", "max_num_seqs=8", "-O", "max-num-seqs=8", "-n", "6",
                       "--results-dir", tmp_path / "r")
    assert code == 0, err


def test_a_selector_with_one_key_twice_is_refused(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    write_run(store, 1, label="O")
    code, _, err = pie(monkeypatch, capsys, "compare", "label=O,label=O8", "label=O", "--results-dir", store.root)
    error(code, err, 2, "gives label two values (label=O and label=O8)", "give label once")


def test_report_format_follows_the_output_name(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    write_run(store, 1, label="x")
    code, _, err = pie(monkeypatch, capsys, "report", "label=x", "-o", tmp_path / "r.md", "--results-dir", store.root)
    assert code == 0 and (tmp_path / "r.md").read_text().startswith("# "), err
    code, _, err = pie(monkeypatch, capsys, "report", "label=x", "-o", tmp_path / "r.pdf", "--results-dir", store.root)
    error(code, err, 2, "html or markdown, not '.pdf'", "r.html")
    code, _, err = pie(monkeypatch, capsys, "report", "label=x", "-o", tmp_path / "r.md", "--format", "html",
                       "--results-dir", store.root)
    error(code, err, 2, "--format html but --output", "names a markdown file")


def test_json_failures_are_one_object_on_stdout(tmp_path, monkeypatch, capsys):
    code, out, err = pie(monkeypatch, capsys, "show", "nothing", "--results-dir", tmp_path, "--json")
    assert code == 2 and json.loads(out) == {"error": f"no record 'nothing' in {tmp_path}",
                                             "hint": "see `pie show` for stored runs, or pass a file path", "exit_code": 2}
    code, out, _ = pie(monkeypatch, capsys, "compare", "x", "y", "--format", "json", "--results-dir", tmp_path)
    assert code == 2 and json.loads(out)["exit_code"] == 2
    code, out, _ = pie(monkeypatch, capsys, *SIM, "--bogus", "--json")
    assert code == 2 and "No such option" in json.loads(out)["error"]


def test_json_after_an_interrupt_names_the_partial_record(tmp_path, monkeypatch, capsys):
    from runners import bench

    real = bench.get_runner

    class StopsAfterTwo:
        name = "sim"

        def __init__(self):
            self.inner = real("sim")

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def run(self, requests, spec, on_request_done):
            def done(sample):
                on_request_done(sample)
                if done.count == 1:
                    raise KeyboardInterrupt
                done.count += 1
            done.count = 0
            return self.inner.run(requests, spec, done)

    monkeypatch.setattr(bench, "get_runner", lambda name: StopsAfterTwo())
    code, out, err = pie(monkeypatch, capsys, *SIM, "--results-dir", tmp_path / "r", "--json")
    payload = json.loads(out)
    assert code == 130 and payload["exit_code"] == 130 and payload["num_requests"] == 2, err
    assert not load_record(Path(payload["record_path"])).complete


def test_pie_debug_adds_the_traceback_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIE_DEBUG", "1")
    code, _, err = pie(monkeypatch, capsys, "show", "nothing", "--results-dir", tmp_path)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: no record 'nothing'")


def test_messages_name_the_flag_or_field(tmp_path, monkeypatch, capsys):
    code, _, err = pie(monkeypatch, capsys, *SIM, "--max-concurrency", "0", "--results-dir", tmp_path / "r")
    error(code, err, 2, "--max-concurrency must be at least 1, got 0")
    code, _, _ = pie(monkeypatch, capsys, "tune", "--model", "opt-13b", "--hardware", "h100-pcie", "-o", tmp_path / "p.json")
    plan = json.loads((tmp_path / "p.json").read_text())
    plan["settings"]["num_pool_blocks"] = -64
    (tmp_path / "p.json").write_text(json.dumps(plan))
    code, _, err = pie(monkeypatch, capsys, *SIM, "--plan", tmp_path / "p.json", "--results-dir", tmp_path / "r")
    line = error(code, err, 2, "field 'settings.num_pool_blocks' must be at least 0, got -64", "re-run `pie tune")
    assert "EngineSettings(" not in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 5}\n')
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", "opt-13b", "--hardware", "h100-pcie", "--workload", bad)
    line = error(code, err, 2, "gave no usable requests", "line 1: no usable prompt")
    assert "--output-len" not in line
    code, _, err = pie(monkeypatch, capsys, "show", "")
    error(code, err, 2, "an empty run id was given")


@pytest.mark.parametrize("key, value, fragment", [("num_attention_heads", 7, "do not divide evenly"),
                                                  ("num_hidden_layers", -2, "num_layers must be positive, got -2")])
def test_a_bad_config_json_has_a_hint(key, value, fragment, tmp_path, monkeypatch, capsys):
    from tests.tiny_hf_model import tiny_model_dir

    directory = tiny_model_dir(tmp_path / "opt")
    config = json.loads((directory / "config.json").read_text())
    config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    code, _, err = pie(monkeypatch, capsys, "tune", "--model", directory, "--hardware", "h100-pcie")
    error(code, err, 2, fragment, "hint: fix", "config.json")


def test_show_says_how_many_runs_a_filter_missed(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    for seed in range(3):
        write_run(store, seed)
    code, _, err = pie(monkeypatch, capsys, "show", "--label", "nothing", "--results-dir", store.root)
    assert code == 0 and "no run in" in err and "matches --label nothing (it holds 3 runs" in err, err


def test_different_workloads_name_the_field_that_differs(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    a = write_run(store, 1)
    b = write_run(store, 2, workload={"name": "synthetic-sharegpt", "synthetic": True, "num_prompts": 96, "seed": 0})
    code, _, err = pie(monkeypatch, capsys, "compare", a, b, "--results-dir", store.root)
    line = error(code, err, 2, "different workloads (num_prompts: 48 vs 96)", "--force")
    assert len(line) < 300


def test_report_takes_an_interrupted_run(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "r")
    done, cut = write_run(store, 1), write_run(store, 2, finish=False)
    code, _, err = pie(monkeypatch, capsys, "compare", done, cut, "--results-dir", store.root)
    error(code, err, 2, "is incomplete", f"`pie report {cut}` shows the 48 request(s) it kept")
    code, out, err = pie(monkeypatch, capsys, "report", str(cut), "-o", tmp_path / "r.html", "--results-dir", store.root)
    assert code == 0 and "is incomplete (interrupted): its 48 request(s) are reported" in " ".join(err.split()), err
