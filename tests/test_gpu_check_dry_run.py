"""scripts/gpu_check.sh --dry-run on the CPU: it parses, finds every step, runs the ones that need no
GPU and writes its JSON and log, so the one command prepared for a GPU machine cannot rot; its step
limits add up to at most 6 minutes, and a step killed by its limit keeps what it had recorded; and
`--rehearse` runs the GPU steps' code (scripts/gpu_check_steps.py) on the CPU at small sizes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_step_has_a_function_and_the_limits_fit_six_minutes():
    module = _gpu_check_module()
    assert all(name == "install" or callable(module.STEP_FUNCTIONS.get(name)) for name in module.STEPS)
    assert set(module.STEP_FUNCTIONS) | {"install"} == set(module.STEPS)
    assert sum(limit for limit, _ in module.STEPS.values()) <= module.TOTAL_BUDGET_S == 360


def test_the_header_gives_the_exact_wheel_download_for_the_gpu_machines():
    header = (ROOT / "scripts" / "gpu_check.sh").read_text()
    for flag in ("--only-binary=:all:", "--python-version 3.12", "--abi cp312", "--implementation cp",
                 "manylinux2014_x86_64", "pulp"):
        assert flag in header, flag


def test_dry_run_writes_json_and_log(tmp_path):
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(wheels), str(out)],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    module = _gpu_check_module()
    assert report["dry_run"] and list(report["steps"]) == list(module.STEPS)
    assert report["total_budget_s"] == sum(report["step_limits_s"].values()) <= 360
    for name, (limit, needs_gpu) in module.STEPS.items():
        assert report["steps"][name]["status"] == ("skipped" if needs_gpu else "ok"), (name, report["steps"][name])
        assert report["steps"][name]["limit_s"] == limit
    plan = report["steps"]["plan_and_bench"]["result"]
    assert plan["predicted"]["batch_size"] <= module.BATCH and plan["bench"].startswith("skipped")
    assert report["steps"]["install"]["result"]["command"].endswith(f"--find-links {wheels}" + "".join(
        f" {name}" for name in report["steps"]["install"]["result"]["missing"]))
    log = (out / "gpu_check.log").read_text()
    assert "pip install --no-index --find-links" in log and "== plan_and_bench" in log


def test_a_step_killed_by_its_limit_keeps_what_it_recorded(tmp_path, monkeypatch):
    module = _gpu_check_module()

    def killed(command, **kwargs):  # the child recorded one measurement, then ran past its limit
        name = command[command.index("--step") + 1]
        (tmp_path / "steps").mkdir(exist_ok=True)
        (tmp_path / "steps" / f"{name}.json").write_text(json.dumps({"status": "partial", "result": {"hbm_gbps": 3000}}))
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(module.subprocess, "run", killed)
    assert module.main([str(tmp_path), "--steps", "environment"]) == 1
    entry = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["environment"]
    assert entry["status"] == "timeout" and entry["result"] == {"hbm_gbps": 3000} and entry["limit_s"] == 25


@pytest.mark.slow
def test_rehearsal_runs_the_gpu_steps_code_on_the_cpu(tmp_path):
    """The kernel and correctness steps' code, run as on the GPU but on the CPU at small sizes (Triton under its
    interpreter): a step that would crash on a lent GPU crashes here first."""
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(out), "--wheels", str(wheels),
                             "--rehearse", "--steps", "kernels,correctness"],
                            capture_output=True, text=True, timeout=900, check=False)
    report = json.loads((out / "gpu_check.json").read_text())
    assert result.returncode == 0, (report, (out / "gpu_check.log").read_text()[-3000:])
    kernels = report["steps"]["kernels"]["result"]
    assert {"decode_mha_fp16_dh64_b1_ctx300", "prefill_gqa_bf16_dh128_2x24"} <= set(kernels)
    assert kernels["decode_gqa_bf16_dh128_b2_ctx64"]["triton_over_torch"] > 0
    assert report["steps"]["correctness"]["result"]["all_equal"] is True


def test_bad_arguments_exit_2(tmp_path):
    script = ROOT / "scripts" / "gpu_check.sh"
    missing = subprocess.run(["bash", str(script), str(tmp_path / "none"), str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(tmp_path), "--steps", "nope"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode == 2 and "unknown steps" in unknown.stderr
    no_wheels = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(tmp_path)],
                               capture_output=True, text=True, timeout=60, check=False)
    assert no_wheels.returncode == 2 and "--wheels" in no_wheels.stderr
