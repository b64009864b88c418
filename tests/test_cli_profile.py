"""`pie profile` end to end through `pie_cli.app.main`: bad inputs are one line and exit 2; a run saves and shows a profile."""
import json
import subprocess
import sys

import pytest

from profiler.hardware_profile import SCHEMA_VERSION

from cli_helpers import run_pie

torch = pytest.importorskip("torch")


def run_main(monkeypatch, capsys, *args):
    return run_pie(["profile", *args], monkeypatch, capsys)


def assert_one_line_bad_input(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_unknown_model_suggests_close_names(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "--model", "opt-31b")
    assert_one_line_bad_input(code, err, "unknown model 'opt-31b'", "did you mean", "opt-13b")


def test_directory_without_config(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "--model", str(tmp_path))
    assert_one_line_bad_input(code, err, "no config.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "--device", "cuda")
    assert_one_line_bad_input(code, err, "CUDA is not available", "--device cpu")


def test_max_size_beyond_free_memory(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "--max-size", "100TiB", "--no-layer")
    assert_one_line_bad_input(code, err, "--max-size 100 TiB", "is free")


@pytest.mark.parametrize("args, fragment", [
    (["--max-size", "lots"], "cannot read --max-size 'lots'"),
    (["--max-size", "256"], "--max-size '256' has no unit"),
    (["--dtype", "int3"], "unknown dtype"),
    (["--threads", "0"], "--threads must be between 1 and"),
    (["--device", "tpu"], "unknown device"),
])
def test_other_bad_options(monkeypatch, capsys, args, fragment):
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert_one_line_bad_input(code, err, fragment)


def test_output_that_is_a_directory_fails_before_measuring(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "--output", str(tmp_path), "--no-layer")
    assert_one_line_bad_input(code, err, "is a directory")


@pytest.mark.parametrize("content, fragment", [
    ("{broken", "not valid JSON"),
    (json.dumps({"schema_version": SCHEMA_VERSION + 41}), "schema version"),
    (json.dumps({"schema_version": SCHEMA_VERSION, "link": []}), "field 'created_at' is missing"),
])
def test_show_rejects_corrupt_or_wrong_version(monkeypatch, capsys, tmp_path, content, fragment):
    path = tmp_path / "profile.json"
    path.write_text(content)
    code, _, err = run_main(monkeypatch, capsys, "--show", str(path))
    assert_one_line_bad_input(code, err, fragment)


def test_show_missing_file(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "--show", str(tmp_path / "nope.json"))
    assert_one_line_bad_input(code, err, "does not exist")


def test_link_only_run_saves_json_and_show_renders_it(monkeypatch, capsys, tmp_path):
    path = tmp_path / "profiles" / "p.json"
    code, out, err = run_main(monkeypatch, capsys, "--no-layer", "--quick", "--max-size", "64KiB", "--threads", "1",
                              "--json", "--output", str(path))
    assert code in (0, None), err
    payload = json.loads(out)  # stdout is only JSON under --json
    assert payload["path"] == str(path) and path.is_file()
    assert payload["profile"]["link_is_memcpy"] is True
    assert "Link bandwidth" in err  # tables go to stderr under --json
    code, out, err = run_main(monkeypatch, capsys, "--show", str(path))
    assert code in (0, None), err
    assert "Link bandwidth" in out and "memcpy" in out and "64 KiB" in out
    code, out, _ = run_main(monkeypatch, capsys, "--show", str(path), "--json")
    assert json.loads(out)["profile"]["schema_version"] == SCHEMA_VERSION


def test_help_has_an_example():
    result = subprocess.run([sys.executable, "-m", "pie_cli.app", "profile", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "Example: pie profile --quick --model opt-125m" in result.stdout


def test_bad_input_in_a_real_process_is_one_line():
    result = subprocess.run([sys.executable, "-m", "pie_cli.app", "profile", "--model", "lama-3-8b"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "llama-3-8b" in result.stderr


@pytest.mark.slow
def test_quick_opt_125m_run_shows_fit_and_saves(monkeypatch, capsys, tmp_path):
    path = tmp_path / "p.json"
    code, out, err = run_main(monkeypatch, capsys, "--quick", "--model", "opt-125m", "--threads", "1", "--output", str(path))
    assert code in (0, None), err
    assert "Fitted layer cost model" in out and "decode" in out
    assert f"profile saved to {path}" in err.replace("\n", "")


def test_layer_failure_saves_what_was_measured_and_exits_1(monkeypatch, capsys, tmp_path):
    import profiler.layer as layer_module

    monkeypatch.setattr(layer_module, "measure_layer", lambda *a, **k: (_ for _ in ()).throw(MemoryError("no room")))
    path = tmp_path / "p.json"
    code, out, err = run_main(monkeypatch, capsys, "--quick", "--max-size", "64KiB", "--threads", "1", "--output", str(path))
    assert code == 1
    assert path.is_file() and json.loads(path.read_text())["link"]
    assert err.strip().splitlines()[-1].startswith("error: timing the layer failed (MemoryError: no room)")
