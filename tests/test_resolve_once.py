"""Resolve once: a `pie bench --plan` run reads its plan file once, runners are prepared once, and the
engine and the simulator share one finish rule.

Every open of the plan file (`builtins.open` and `io.open`, which `Path.read_text` goes through) is
counted over a whole `pie bench --plan` run in-process, for one run and for a sweep of three
points (each point is prepared once, all before the first runs). Left out: RSS of closed engines
(tests/test_engine_lifecycle.py, benchmarks/bench_engine_close.py).
"""
from __future__ import annotations

import builtins
import dataclasses
import io
import json
import os

import pytest
from cli_helpers import run_pie
from tiny_hf_model import tiny_model_dir

from runners.engine.settings import EngineSettings, option_types, setting_names, sweep_keys

SMALL = ["--workload", "fixed", "--input-len", "12", "--output-len", "4", "-n", "3", "--dtype", "float32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("resolve") / "opt")


def write_plan(path, model: str):
    from planner.plan import Performance, Plan

    zero = Performance(**{f.name: 0 for f in dataclasses.fields(Performance)})
    settings = EngineSettings(block_size=4, num_device_blocks=64, num_pool_blocks=8, max_num_seqs=8,
                              max_num_batched_tokens=512)
    return Plan(created_at="now", model=model, dtype="float32", hardware={}, budgets={}, workload={}, settings=settings,
                predicted=zero, baseline=zero, binding=(), explanation=(), solver={}).save(path)


def count_opens(path, monkeypatch) -> dict:
    target, counter = os.path.abspath(path), {"opens": 0}
    original = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == target:
            counter["opens"] += 1
        return original(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return counter


@pytest.mark.parametrize("sweep", [[], ["--sweep", "max_num_seqs=2,4,8"]], ids=["one run", "three-point sweep"])
def test_a_bench_run_reads_its_plan_once(sweep, model_dir, tmp_path, monkeypatch, capsys):
    plan = write_plan(tmp_path / "plan.json", str(model_dir))
    counter = count_opens(plan, monkeypatch)
    code, out, err = run_pie(["bench", "-m", model_dir, *SMALL, "--plan", plan, *sweep,
                              "--results-dir", tmp_path / "r", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert counter["opens"] == 1
    runs = json.loads(out).get("runs") or [json.loads(out)]
    assert {run["config"]["num_pool_blocks"] for run in runs} == {8} and all(run["config"]["plan"] for run in runs)


def test_every_setting_is_an_option_and_a_sweep_key():
    names = setting_names()
    assert set(option_types()) == set(names)
    assert {name for name, _ in sweep_keys().values()} == set(names)
    assert sweep_keys()["pool_blocks"] == ("num_pool_blocks", int)
    from runners.bench import SWEEP_TARGETS
    from runners.pie_runner import ENGINE_OPTIONS

    assert set(ENGINE_OPTIONS) == set(names) and all(SWEEP_TARGETS[key][1] == name for key, (name, _) in sweep_keys().items())


@pytest.mark.parametrize("changes, message", [
    ({"num_device_blocks": 0}, "num_device_blocks must be at least 1"),
    ({"rebuild_fraction": 1.5}, "rebuild_fraction must be"),
    ({"block_size": 12}, "block_size must be a power of two"),
    ({"decode_kernel": "fast"}, "decode_kernel 'fast' is not one of"),
])
def test_settings_check_their_declared_ranges(changes, message):
    from pie_core.errors import BadInput

    with pytest.raises(BadInput, match=message):
        EngineSettings(**changes)


def test_a_plan_from_before_one_declaration_still_loads(tmp_path, model_dir):
    from planner.plan import Plan

    path = write_plan(tmp_path / "plan.json", str(model_dir))
    data = json.loads(path.read_text())
    data["settings"].update(model=str(model_dir), dtype="float32")  # how plans stored them before
    path.write_text(json.dumps(data))
    assert Plan.load(path).settings.num_pool_blocks == 8


def test_the_simulator_ends_a_request_on_a_stop_token_as_the_engine_does():
    """One finish rule (EngineCore.finish_reason): the simulator's dummy token ends a request that stops on it."""
    from runners.engine.config import EngineConfig
    from runners.engine.engine_core import EngineCore
    from runners.engine.outputs import StepResult
    from runners.engine.sampling_params import SamplingParams
    from runners.engine.sequence import Sequence

    class OneToken:
        def execute(self, scheduled):
            return StepResult(tokens=[7] * len(scheduled.sampled), compute_s=0.0, stall_s=0.0, h2d_bytes=0, d2h_bytes=0,
                              rebuilt_tokens=0)

    config = EngineConfig(model="opt-125m", dtype="float32", block_size=16, num_device_blocks=64)
    core = EngineCore(config, lambda _core: OneToken(), eos_token_ids=[2])
    core.scheduler.add(Sequence("stops", [5, 6], SamplingParams(max_tokens=10, stop_token_ids=[7]), 0.0, 0))
    core.scheduler.add(Sequence("runs", [5, 6], SamplingParams(max_tokens=3, ignore_eos=True), 0.0, 1))
    reasons = {}
    while core.scheduler.has_unfinished():
        for seq, _token, reason in core.step()[1]:
            if reason:
                reasons[seq.request_id] = (reason, len(seq.output_token_ids))
    assert reasons == {"stops": ("stop", 1), "runs": ("length", 3)}
    assert len(core.stats) == 3


def test_kernel_switches_are_settings_read_from_the_environment_once():
    from runners.resolve import kernel_defaults

    environ = {"PIE_DECODE_KERNEL": "torch", "PIE_PREPACK": "0"}
    assert kernel_defaults({}, environ) == {"decode_kernel": "torch", "prepack": "off"}
    assert kernel_defaults({"decode_kernel": "c", "prepack": "auto"}, environ) == {}  # -O wins
    assert kernel_defaults({}, {}) == {}


def test_the_engine_runs_the_kernels_its_settings_name(model_dir, monkeypatch):
    from runners.engine.config import EngineConfig
    from runners.engine.kernels import resolve_kernels

    monkeypatch.setenv("PIE_DECODE_KERNEL", "c")  # ignored: the setting decides
    monkeypatch.setenv("PIE_PREPACK", "1")
    paths = resolve_kernels("cpu", "bfloat16", decode_kernel="torch", prepack="off")
    assert paths.decode_attention == "torch" and paths.linear == "torch-linear" and paths.decode_variant == "torch"
    config = EngineConfig(model=str(model_dir), dtype="float32", block_size=4, num_device_blocks=32, decode_kernel="torch")
    assert config.settings.decode_kernel == "torch" and "decode_kernel" in config.settings.to_dict()


def test_profile_overhead_is_a_typed_field_and_older_profiles_move_it_there(tmp_path):
    from planner.hardware import from_profile
    from planner_fixtures import synthetic_profile
    from profiler.hardware_profile import EngineOverhead, HardwareProfile

    profile = dataclasses.replace(synthetic_profile(), engine_overhead=EngineOverhead(per_seq_s=2e-4, decode_scale=1.5))
    loaded = HardwareProfile.load(profile.save(tmp_path / "typed.json"))
    assert loaded.engine_overhead == profile.engine_overhead
    spec = from_profile(loaded)
    assert spec.iteration_per_seq_s == 2e-4 and spec.decode_scale == 1.5
    older = profile.to_dict()
    older["engine_overhead"] = None
    older["extra"] = {"engine_iteration_overhead": {"per_seq_s": 3e-4, "prefill_scale": 0.5}}
    (tmp_path / "older.json").write_text(json.dumps(older))
    moved = HardwareProfile.load(tmp_path / "older.json")
    assert moved.engine_overhead == EngineOverhead(per_seq_s=3e-4, prefill_scale=0.5) and moved.extra == {}
    assert from_profile(moved).prefill_scale == 0.5
