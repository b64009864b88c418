"""Every script under benchmarks/ and scripts/ runs in its quick mode, as a child process, so none rots unseen.

Each entry point runs as a person runs it (`python benchmarks/X.py --quick ...`, `bash scripts/X.sh --quick ...`),
from a temporary folder, with one thread, on a tiny model built here (tests/tiny_hf_model.py; nothing is
downloaded) and, where it wants one, a synthetic profile of that model (tests/planner_fixtures.py). It must
exit 0, write its output where it was told (never into docs/results/), and that output must have the shape
the script promises (its JSON keys, or its log's closing line). The scripts are found by listing the two
folders, so a new script fails here until it has a quick mode and a row in QUICK_RUNS, or a line in
COVERED_ELSEWHERE naming the file that runs it. Left out: the figures; a quick run measures nothing worth keeping.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from planner_fixtures import synthetic_profile
from tiny_hf_model import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SCRIPTS = sorted(str(path.relative_to(ROOT)) for folder in ("benchmarks", "scripts")
                 for path in (ROOT / folder).iterdir() if path.is_file())


@dataclass(frozen=True)
class QuickRun:
    """How to run one script quickly and what its output must hold.

    `args` follow the script; `{model}`, `{profile}` and `{out}` become the tiny model's directory, its
    synthetic profile and the run's output folder. `output` is the file to read, relative to `{out}` (a glob
    pattern matching exactly one file), or "-" for stdout; `expect` is the JSON keys it must have, or, for
    a file that is not JSON and for stdout, text it must contain.
    """

    args: tuple[str, ...]
    output: str
    expect: tuple[str, ...]
    needs: str | None = None  # "triton", "chromium" or "x86": skipped, saying so, where it is missing
    env: tuple[tuple[str, str], ...] = ()
    slow: bool = False  # over about ten seconds of CPU


QUICK_RUNS = {
    "benchmarks/bench_ab_interleaved.py": QuickRun(  # its own tinier model: the pairs run examples/ci/ab.sh
        ("--quick", "--out", "{out}/ab.json"), "ab.json", ("aa", "ab", "machine", "targets_met"), slow=True),
    "benchmarks/bench_adaptive_phases.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/adaptive.json"), "adaptive.json", ("runs", "checks", "met")),
    "benchmarks/bench_compare_aa.py": QuickRun(
        ("--quick", "--model", "{model}", "--output", "{out}/compare_aa.json"), "compare_aa.json",
        ("aa", "ab", "run_wall_s", "markdown_clean"), slow=True),
    "benchmarks/bench_decode_kernel.py": QuickRun(("--quick", "--out", "{out}/decode.json"), "decode.json", ("rows", "kv_bytes")),
    "benchmarks/bench_decode_step.py": QuickRun(("--quick", "--out", "{out}/step.json"), "step.json",
                                                ("median_s", "kv_bytes_per_step", "c_variant")),
    "benchmarks/bench_engine_capacity.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/capacity.json"), "capacity.json", ("rows", "ratio_best_pool_over_off")),
    "benchmarks/bench_engine_close.py": QuickRun(("--quick", "--out", "{out}/close.json"), "close.json",
                                                 ("checkouts", "met", "sweep_pool_blocks")),
    "benchmarks/bench_engine_memory.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/memory.json"), "memory.json", ("checkpoints", "peak_rss_growth")),
    "benchmarks/bench_serve_thread.py": QuickRun(("--quick", "--out", "{out}/thread.json"), "thread.json",
                                                ("runs", "medians", "second_over_same", "machine")),
    "benchmarks/bench_engine_throughput.py": QuickRun(
        ("--quick", "--out", "{out}/throughput.json"), "throughput.json", ("results", "errors", "greedy_token_agreement")),
    "benchmarks/bench_engine_transparency.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/transparency.json"), "transparency.json",
        ("results", "ratio_to_pool_off", "same_greedy_tokens")),
    "benchmarks/bench_engine_transparency_steady.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/steady.json"), "steady.json", ("runs", "ratio_to_pool_off")),
    "benchmarks/bench_hill_climber.py": QuickRun(
        ("--quick", "--profile", "{profile}", "--model", "{model}", "--out", "{out}/hill.json"), "hill.json",
        ("synthetic", "online")),
    "benchmarks/bench_lp_optimality.py": QuickRun(("--quick", "--out", "{out}/lp.json"), "lp.json", ("summary", "rows")),
    "benchmarks/bench_prediction.py": QuickRun(
        ("--quick", "--profile", "{profile}", "--model", "{model}", "--out", "{out}/prediction.json"), "prediction.json",
        ("rows", "calibration", "max_abs_relative_error")),
    "benchmarks/bench_profile_fit.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/fit.json"), "fit.json", ("median_rel_error", "runs")),
    "benchmarks/bench_profile_memcpy.py": QuickRun(
        ("--quick", "--model", "{model}", "--output-dir", "{out}/memcpy"), "memcpy/profile_memcpy_*.json",
        ("plain_copy_gbps_median", "ratio_h2d_pinned_to_plain")),
    "benchmarks/bench_scrape_overhead.py": QuickRun(("--quick", "--out", "{out}/scrape.json"), "scrape.json",
                                                    ("median_ratio_on_off", "scrape_cost", "pairs", "machine")),
    "benchmarks/bench_serve.py": QuickRun(("--quick", "--out", "{out}/serve.json"), "serve.json",
                                          ("summary", "runs", "machine", "workloads"), slow=True),
    "benchmarks/bench_sim_fidelity.py": QuickRun(
        ("--quick", "--model", "{model}", "--out", "{out}/fidelity.json"), "fidelity.json",  # profiles the tiny model
        ("cases", "calibrations", "all_within_target")),
    "benchmarks/bench_sim_hardware.py": QuickRun(
        ("--quick", "--out-dir", "{out}/hardware"), "hardware/sim_hardware.json", ("presets",), slow=True),
    "benchmarks/bench_sim_scale.py": QuickRun(("--quick", "--out", "{out}/scale.json"), "scale.json",
                                              ("speedup_runner", "summary")),
    "benchmarks/bench_tune_speed.py": QuickRun(("--quick", "--out", "{out}/tune.json"), "tune.json", ("presets", "verdict")),
    "scripts/avx2_check.sh": QuickRun(("--quick", "--model", "{model}", "{out}/avx2_check.log"), "avx2_check.log",
                                      ("== avx2 check: every step ran", "bench ran in"), needs="x86", slow=True),
    "scripts/screenshot_report.py": QuickRun(("--quick", "{out}/page.html", "{out}/page.png"), "-", ("plots rendered",),
                                             needs="chromium"),
    "scripts/triton_check.py": QuickRun(("--device", "cpu", "--quick", "--out", "{out}/triton.json"), "triton.json",
                                        ("max_abs_error", "passed"), needs="triton", env=(("TRITON_INTERPRET", "1"),)),
}

# Not entry points, or run by another test: the file named must mention the script (checked below).
COVERED_ELSEWHERE = {
    "benchmarks/bench_dtype.py": "benchmarks/bench_engine_transparency.py",  # --dtype of the engine benchmarks
    "benchmarks/engine_loop.py": "benchmarks/bench_engine_throughput.py",  # its pie-kernels runner
    "benchmarks/quick_mode.py": "benchmarks/bench_lp_optimality.py",  # --quick itself, in every benchmark
    "benchmarks/slowed_pie.py": "benchmarks/bench_compare_aa.py",  # the A/B side of its quick run
    "benchmarks/vllm_bench_client.py": "tests/test_bench_client.py",  # its worker on a fake client; bench_serve's quick run
    "scripts/gpu_check.py": "tests/test_gpu_check_dry_run.py",  # --dry-run there
    "scripts/gpu_check.sh": "tests/test_gpu_check_dry_run.py",
    "scripts/gpu_check_steps.py": "tests/test_gpu_check_dry_run.py",  # gpu_check.py's steps: --rehearse there
    "scripts/test.sh": ".ci/run",  # builds the environment this suite runs in, and runs it
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny OPT (config only: seeded random weights) deep enough for the pooled cases' staging, and its profile."""
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model_dir(folder / "opt", "opt", seed=0, weights=False, max_position_embeddings=512, num_hidden_layers=12)
    profile = synthetic_profile(str(model), "bfloat16").save(folder / "profile.json")
    return {"model": model, "profile": Path(profile)}


def results_files() -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_mtime_ns, path.stat().st_size) for path in RESULTS.rglob("*") if path.is_file()}


def missing(need: str | None) -> str | None:
    if need == "triton" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed here (pip install 'pie[triton]')"
    if need == "chromium" and not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))):
        return "Chromium is not installed here (scripts/test.sh installs it where apt can)"
    if need == "x86" and platform.machine() not in ("x86_64", "AMD64"):
        return f"limits an x86 CPU to AVX2; this machine is {platform.machine()}"
    return None


def test_every_script_is_run_or_covered():
    unlisted = sorted(set(SCRIPTS) - set(QUICK_RUNS) - set(COVERED_ELSEWHERE))
    assert not unlisted, f"give {unlisted} a --quick mode and a row in QUICK_RUNS (tests/test_scripts_run.py)"
    gone = sorted((set(QUICK_RUNS) | set(COVERED_ELSEWHERE)) - set(SCRIPTS))
    assert not gone, f"rows for scripts that no longer exist: {gone}"


@pytest.mark.parametrize("script", sorted(COVERED_ELSEWHERE))
def test_covered_elsewhere_is_named_where_it_runs(script):
    assert Path(script).stem in (ROOT / COVERED_ELSEWHERE[script]).read_text(encoding="utf-8")


@pytest.mark.parametrize("script", [pytest.param(name, marks=[pytest.mark.slow] if run.slow else [])
                                    for name, run in sorted(QUICK_RUNS.items())])
def test_script_runs_in_quick_mode(script, tiny, tmp_path):
    run = QUICK_RUNS[script]
    reason = missing(run.needs)
    if reason:
        pytest.skip(reason)
    out = tmp_path / "out"
    out.mkdir()
    places = {"model": str(tiny["model"]), "profile": str(tiny["profile"]), "out": str(out)}
    launcher = ["bash"] if script.endswith(".sh") else [sys.executable]
    command = [*launcher, str(ROOT / script), *(arg.format(**places) for arg in run.args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), os.environ.get("PYTHONPATH", ""))),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PIE_TEST_VENV": sys.prefix, **dict(run.env)}
    before = results_files()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert results_files() == before, "a quick run wrote into docs/results"
    if run.output == "-":
        text = done.stdout
    else:
        (path,) = out.glob(run.output)
        text = path.read_text(encoding="utf-8")
    if run.output.endswith(".json"):
        missing_keys = set(run.expect) - set(json.loads(text))
        assert not missing_keys, f"{script}'s JSON lacks {sorted(missing_keys)}"
    else:
        for fragment in run.expect:
            assert fragment in text, f"{script}'s output lacks {fragment!r}:\n{text[-2000:]}"
