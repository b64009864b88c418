"""The simulator's calibration fit (runners/sim_calibration.py) on replays whose "measured" times are made here.

A replay of a short all-at-once run has few, long prefill iterations and many short decode ones, as the quick
calibration of `benchmarks/bench_sim_fidelity.py` does. The measured times are the replay's own layer terms times
known scales, with seeded noise proportional to each step, so the fit must find those scales again; the profile
it writes must load.
"""
from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import numpy as np
import pytest

from profiler.hardware_profile import EngineOverhead, HardwareProfile
from runners.base import RunnerSpec
from runners.sim_calibration import _features, _trimmed_nnls, fit_calibration, replay
from runners.sim_runner import sim_target
from runners.workloads import WorkloadSpec, load_workload
from tests.planner_fixtures import synthetic_profile

DECODE, PREFILL, PER_SEQ = 0.9, 1.8, 2e-5


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """(profile path, the target, the replays of bench_sim_fidelity's quick calibration runs without a pool: 12
    prompts of ~24 tokens, 8 tokens out each, on a roomy device and on a tight one of 24 blocks)."""
    profile = tmp_path_factory.mktemp("calibration") / "profile.json"
    synthetic_profile("opt-125m").save(profile)
    requests, _ = load_workload(WorkloadSpec(name="uniform", model="opt-125m", num_prompts=12, seed=7, input_len=24,
                                             output_len=8, range_ratio=0.8))
    targets = [sim_target(RunnerSpec(model="opt-125m", dtype="bfloat16", options={
        "profile": str(profile), "max_num_seqs": 16, "num_device_blocks": blocks})) for blocks in (1024, 24)]
    return profile, targets[0], [replay(target, requests) for target in targets]


def _measured(engine, seed: int, prefill_factor: float = 1.0) -> list:
    """Each iteration's wall time: the replay's unscaled parts, plus its layer terms times the known scales, times
    1 +- 4% (seeded); prefill layers further times `prefill_factor`."""
    rows, rest = _features(engine)
    noise = random.Random(seed)
    walls = rest + rows[:, 0] * DECODE + rows[:, 1] * PREFILL * prefill_factor + rows[:, 3] * PER_SEQ
    return [SimpleNamespace(wall_s=float(w) * (1 + noise.uniform(-0.04, 0.04))) for w in walls]


def test_the_replay_looks_like_the_quick_calibration(replayed):
    """The case the trimming must survive: a few prefill iterations, each far longer than a decode iteration."""
    _, _, engines = replayed
    rows = np.vstack([_features(engine)[0] for engine in engines])
    prefill = rows[:, 1] > 0
    assert 2 <= prefill.sum() <= 4 and (~prefill).sum() >= 20
    assert rows[prefill, 1].max() > 3 * rows[~prefill, 0].max()


@pytest.mark.parametrize("seed", range(12))
def test_the_fit_finds_the_scales_and_keeps_the_prefill_iterations(replayed, seed):
    """Trimmed by absolute misfit, the long prefill iterations were the worst-fitting tenth and were all dropped,
    and the prefill scale came out 0 in about a third of the quick calibrations (a profile refuses that value)."""
    profile, target, engines = replayed
    fitted = fit_calibration([(_measured(engine, seed + 100 * i), engine) for i, engine in enumerate(engines)],
                             target.hardware)
    assert fitted["kept_profile"] == []
    # decode scale and per-sequence term share the decode steps' time (both grow with the batch): looser
    assert fitted["decode_scale"] == pytest.approx(target.hardware.decode_scale * DECODE, rel=0.15)
    assert fitted["prefill_scale"] == pytest.approx(target.hardware.prefill_scale * PREFILL, rel=0.08)
    calibrated = dataclasses.replace(HardwareProfile.load(profile), engine_overhead=EngineOverhead.from_dict(fitted))
    assert HardwareProfile.load(calibrated.save(profile.with_name(f"calibrated{seed}.json"))).engine_overhead.prefill_scale > 0


def test_a_scale_fitted_at_zero_keeps_the_profiles_and_says_so(replayed, tmp_path):
    """Prefill steps measured faster than their parts outside the layers: the fit's 0 is not written; the profile's
    scale is kept."""
    profile, target, engines = replayed
    fitted = fit_calibration([(_measured(engine, i, prefill_factor=-0.3), engine) for i, engine in enumerate(engines)],
                             target.hardware)
    assert fitted["kept_profile"] == ["prefill_scale"]
    assert fitted["prefill_scale"] == target.hardware.prefill_scale
    assert fitted["decode_scale"] > 0
    calibrated = dataclasses.replace(HardwareProfile.load(profile), engine_overhead=EngineOverhead.from_dict(fitted))
    assert HardwareProfile.load(calibrated.save(tmp_path / "calibrated.json")).engine_overhead.prefill_scale > 0


def test_each_kind_of_iteration_keeps_rows_after_trimming():
    """Three prefill rows, noisier than thirty decode rows: trimmed together, all three would be the worst tenth and
    the prefill column would be left empty; trimmed by kind, only the worst of them goes."""
    noise = np.random.default_rng(0)
    features = np.vstack([np.c_[noise.uniform(1e-3, 2e-3, 30), np.zeros(30)], np.c_[np.zeros(3), [2e-2, 3e-2, 4e-2]]])
    spread = np.r_[noise.uniform(-0.02, 0.02, 30), [0.12, -0.15, 0.2]]
    wall = features @ np.array([1.0, 2.0]) * (1 + spread)
    solution, keep = _trimmed_nnls(features, wall, wall, features[:, 1] > 0)
    assert solution[1] > 0 and keep[-3:].sum() == 2 and keep[:30].sum() >= 27


def test_the_worst_fit_is_relative_to_the_steps_time():
    """A short step another process slowed by a quarter is the outlier, not the long steps' larger absolute noise."""
    noise = np.random.default_rng(1)
    features = np.c_[np.geomspace(1e-3, 1e-1, 20), np.zeros(20)]
    wall = features[:, 0] * (1 + noise.uniform(-0.02, 0.02, 20))
    wall[0] *= 1.25
    _, keep = _trimmed_nnls(features, wall, wall, np.zeros(20, dtype=bool))
    assert not keep[0] and keep[-3:].all()
