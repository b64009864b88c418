"""Hill-climber: convergence on synthetic unimodal curves, noise, stall threshold, re-arming, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from pie_cli.errors import BadInput
from planner.hill_climber import ClimberConfig, HillClimber, Measurement, climb


def peaked(best_blocks: int, peak: float = 1000.0, rise: float = 0.6, fall: float = 1.0):
    """Unimodal throughput: linear rise to the best pool size, linear fall past it (stall grows)."""
    def throughput(blocks: int) -> float:
        if blocks <= best_blocks:
            return peak * (1 - rise * (best_blocks - blocks) / best_blocks)
        return max(0.0, peak * (1 - fall * (blocks - best_blocks) / best_blocks))
    return throughput


def noisy_curve_runs(num_curves: int = 100, noise: float = 0.05, seed: int = 0):
    """(moves, relative distance to the best size, true throughput share of the peak) per seeded curve."""
    rows = []
    for index in range(num_curves):
        rng = np.random.default_rng(seed + index)
        best = int(rng.integers(50, 2000))
        curve = peaked(best, rise=rng.uniform(0.3, 0.8), fall=rng.uniform(0.5, 2.0))
        start = int(best * rng.uniform(0.5, 1.5))

        def measure(blocks: int) -> Measurement:
            return Measurement(blocks, curve(blocks) * (1 + rng.uniform(-noise, noise)), 0.0)

        moves = climb(ClimberConfig(start, 3 * best, noise_fraction=noise), measure)
        final = moves[-1].best_blocks
        rows.append((len(moves) - 1, abs(final - best) / best, curve(final) / curve(best)))
    return np.array(rows)


def test_noise_free_curve_converges_to_the_peak():
    curve = peaked(700)
    moves = climb(ClimberConfig(400, 2000), lambda b: Measurement(b, curve(b), 0.0))
    assert len(moves) - 1 <= 12
    assert abs(moves[-1].best_blocks - 700) <= 0.05 * 700


def test_noisy_curves_end_near_the_best_in_twelve_moves():
    rows = noisy_curve_runs()
    assert rows[:, 0].max() <= 12
    within = (rows[:, 2] >= 0.95).mean()
    assert within >= 0.9, f"only {within:.0%} of curves ended within 5% of the best throughput"
    assert rows[:, 2].min() >= 0.85


def test_same_measurements_give_the_same_moves():
    first = noisy_curve_runs(num_curves=5, seed=7)
    second = noisy_curve_runs(num_curves=5, seed=7)
    assert np.array_equal(first, second)


def test_a_move_that_stalls_too_much_is_rejected():
    climber = HillClimber(ClimberConfig(100, 400, initial_step_blocks=50, max_stall_fraction=0.1))
    climber.observe(Measurement(100, 500.0, 0.02))
    assert climber.propose() == 150
    move = climber.observe(Measurement(150, 600.0, 0.3))  # faster, but stalls 30%
    assert not move.accepted and climber.best_blocks == 100
    assert climber.propose() == 75  # reversed, step halved


def test_stops_below_one_block_and_rearms_on_a_queue_jump():
    climber = HillClimber(ClimberConfig(4, 8, initial_step_blocks=1, relative_resolution=0.0, confirm=False))
    climber.observe(Measurement(4, 100.0, 0.0, queue_length=2))
    climber.observe(Measurement(5, 90.0, 0.0, queue_length=2))  # worse: reverse, step 1 -> 0: stop
    assert climber.stopped and climber.best_blocks == 4
    holding = climber.observe(Measurement(4, 100.0, 0.0, queue_length=3))
    assert climber.stopped and holding.note == "holding"
    rearmed = climber.observe(Measurement(4, 100.0, 0.0, queue_length=20))
    assert not climber.stopped and rearmed.note.startswith("re-armed")
    assert climber.propose() == 5  # a longer queue asks for more pool


def test_confirmation_undoes_a_lucky_reading():
    climber = HillClimber(ClimberConfig(100, 400, initial_step_blocks=50, relative_resolution=0.1, max_moves=6))
    readings = {100: [500.0], 150: [560.0, 480.0], 200: [450.0], 125: [540.0, 540.0]}  # 150 read high once, then low
    while not climber.stopped:
        size = climber.propose()
        climber.observe(Measurement(size, readings[size].pop(0), 0.0))
    notes = [m.note for m in climber.moves]
    assert any("runner-up" in note for note in notes)
    assert climber.best_blocks == 125 and len(climber.moves) - 1 <= 6


def test_bad_configs_are_bad_input():
    with pytest.raises(BadInput):
        ClimberConfig(10, 5)
    with pytest.raises(BadInput):
        ClimberConfig(1, 5, initial_step_blocks=0)
