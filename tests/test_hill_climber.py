"""Hill-climber: convergence on synthetic unimodal curves, noise, the tent fit, stall threshold, re-arming, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from pie_core.errors import BadInput
from planner.hill_climber import ClimberConfig, HillClimber, Measurement, climb, fit_tent


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
    within = (rows[:, 1] <= 0.05).mean()
    assert within >= 0.95, f"only {within:.0%} of curves ended within 5% of the best pool size"
    assert rows[:, 2].min() >= 0.9


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


def test_stops_after_its_moves_and_rearms_on_a_queue_jump_with_a_fresh_budget():
    climber = HillClimber(ClimberConfig(4, 8, initial_step_blocks=1, relative_resolution=0.0, max_moves=1))
    climber.observe(Measurement(4, 100.0, 0.0, queue_length=2))
    last = climber.observe(Measurement(5, 90.0, 0.0, queue_length=2))  # worse, and the one move is spent
    assert climber.stopped and climber.best_blocks == 4
    assert "fit ill-posed (2 sizes)" in last.note and last.note.endswith("stopped (out of moves)")
    holding = climber.observe(Measurement(4, 100.0, 0.0, queue_length=3))
    assert climber.stopped and holding.note == "holding"
    rearmed = climber.observe(Measurement(4, 100.0, 0.0, queue_length=20))
    assert not climber.stopped and rearmed.note.startswith("re-armed")
    assert climber.propose() == 5  # a longer queue asks for more pool
    climber.observe(Measurement(5, 120.0, 0.0, queue_length=20))  # the new climb has its own move
    assert climber.stopped and climber.best_blocks == 5


def test_tent_fit_recovers_a_known_tent():
    def tent(x):
        return 1000.0 + 0.5 * min(x - 800, 0) - 1.0 * max(x - 800, 0)
    sizes = list(range(400, 1301, 75))
    exact = fit_tent([(x, tent(x)) for x in sizes])
    assert abs(exact.peak - 800) < 1e-6 and abs(exact.rise - 0.5) < 1e-9 and abs(exact.fall + 1.0) < 1e-9
    rng = np.random.default_rng(3)
    for _ in range(20):
        noisy = fit_tent([(x, tent(x) * (1 + rng.uniform(-0.05, 0.05))) for x in sizes for _ in range(2)])
        assert abs(noisy.peak - 800) <= 0.05 * 800
        assert noisy.rise >= 0 >= noisy.fall


def test_tent_fit_is_none_when_ill_posed():
    assert fit_tent([(100, 1.0), (200, 2.0), (300, 1.5)]) is None  # three sizes
    assert fit_tent([(100, 1.0), (200, 2.0), (300, 3.0), (400, 4.0), (500, 5.1)]) is None  # rises throughout
    assert fit_tent([(100, 5.0), (200, 3.0), (300, 2.0), (400, 3.0), (500, 5.0)]) is None  # convex: a valley
    # no throughput at all (past the cliff) is left out: four sizes remain, one of them on the far side
    assert fit_tent([(100, 1.0), (200, 2.0), (300, 1.0), (400, 0.0), (500, 0.0)]) is None


def test_an_ill_posed_fit_keeps_the_best_mean_reading():
    readings = {100: 500.0, 150: 560.0, 200: 600.0, 250: 640.0}  # rising throughout: all points on one side
    climber = HillClimber(ClimberConfig(100, 250, initial_step_blocks=50, max_moves=3, climb_moves=3))
    while not climber.stopped:
        size = climber.propose()
        climber.observe(Measurement(size, readings[size], 0.0))
    assert climber.fit is None and climber.best_blocks == 250  # the best measured edge
    assert "fit ill-posed (no concave tent" in climber.moves[-1].note


def test_the_kept_size_never_stalls_and_stays_in_bounds_and_measured_range():
    curve = peaked(900)

    def measure(blocks: int) -> Measurement:  # the throughput peak stalls: 850 blocks and up copy too much
        return Measurement(blocks, curve(blocks), 0.3 if blocks >= 850 else 0.02)

    climber = HillClimber(ClimberConfig(600, 2000, min_blocks=300))
    while not climber.stopped:
        climber.observe(measure(climber.propose()))
    measured = {m.pool_blocks for m in climber.moves}
    assert any(size >= 850 for size in measured)  # the bracket did look past the stall
    assert 800 <= climber.best_blocks < 850  # the bracket halved the way to the stall edge
    assert min(measured) <= climber.best_blocks <= max(measured)
    assert any("halfway to the stalling" in m.note for m in climber.moves)
    assert all(300 <= m.pool_blocks <= 2000 for m in climber.moves)
    every = climb(ClimberConfig(600, 2000), lambda b: Measurement(b, curve(b), 0.2 + 0.1 * abs(b - 500) / 500))
    assert every[-1].best_blocks == min((m.stall_fraction, m.pool_blocks) for m in every)[1]  # the least stalled
    assert "every size stalls" in every[-1].note
    bounded = climb(ClimberConfig(600, 1000, min_blocks=400), lambda b: Measurement(b, peaked(1500)(b), 0.0))
    assert all(400 <= m.pool_blocks <= 1000 for m in bounded) and bounded[-1].best_blocks == 1000


def test_the_move_log_keeps_raw_readings_and_explains_the_fit():
    curve = peaked(700)
    rng = np.random.default_rng(5)
    fed = []

    def measure(blocks: int) -> Measurement:
        fed.append(Measurement(blocks, curve(blocks) * (1 + rng.uniform(-0.05, 0.05)), 0.0))
        return fed[-1]

    moves = climb(ClimberConfig(400, 2000, noise_fraction=0.05), measure)
    assert [(m.pool_blocks, m.throughput_tok_s) for m in moves] == [(f.pool_blocks, f.throughput_tok_s) for f in fed]
    assert len(moves) - 1 == 12 and "fit: peak at" in moves[-1].note and moves[-1].note.endswith("stopped (out of moves)")
    assert any("climb done" in m.note for m in moves) and any(m.note.startswith("bracket") for m in moves)


def test_same_measurements_give_the_same_moves_and_notes():
    def run():
        curve = peaked(900, rise=0.4, fall=1.5)
        rng = np.random.default_rng(11)
        return climb(ClimberConfig(500, 3000, noise_fraction=0.05),
                     lambda b: Measurement(b, curve(b) * (1 + rng.normal(0, 0.05)), 0.0))
    assert run() == run()


def test_bad_configs_are_bad_input():
    with pytest.raises(BadInput):
        ClimberConfig(10, 5)
    with pytest.raises(BadInput):
        ClimberConfig(1, 5, initial_step_blocks=0)
    with pytest.raises(BadInput):
        ClimberConfig(1, 5, climb_moves=-1)
    with pytest.raises(BadInput):
        ClimberConfig(1, 5, near_offset=0.6, far_offset=0.5)
