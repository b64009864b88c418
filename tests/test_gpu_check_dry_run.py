"""scripts/gpu_check.sh --dry-run on the CPU: it parses, finds every step, runs the ones that need no
GPU and writes its JSON and log, so the one command prepared for a GPU machine cannot rot."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_step_has_a_function_and_a_time_box_within_eight_minutes():
    module = _gpu_check_module()
    assert all(callable(getattr(module, f"step_{name}", None)) for name in module.STEPS)
    assert sum(box for box, _ in module.STEPS.values()) <= 480


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
    for name, (_, needs_gpu) in module.STEPS.items():
        assert report["steps"][name]["status"] == ("skipped" if needs_gpu else "ok"), (name, report["steps"][name])
    assert report["steps"]["plan"]["result"]["predicted"]["batch_size"] == module.BATCH
    log = (out / "gpu_check.log").read_text()
    assert "pip install --no-index --find-links" in log and "== plan" in log


def test_bad_arguments_exit_2(tmp_path):
    script = ROOT / "scripts" / "gpu_check.sh"
    missing = subprocess.run(["bash", str(script), str(tmp_path / "none"), str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(tmp_path), "--steps", "nope"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode == 2 and "unknown steps" in unknown.stderr
