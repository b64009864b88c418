"""The adaptive pool controller against synthetic sequences of windows (torch-free, deterministic)."""
from __future__ import annotations

import pytest

from pie_core.errors import BadInput
from planner.pool_controller import ControllerConfig, PoolController
from results.timeline import TimelineWindow


def window(limit, waiting=0, preempted=0, pooled=0, stall=0.0, running=4, waiting_blocks=0, needed=0):
    return TimelineWindow(t_s=0.0, duration_s=1.0, num_steps=16, pool_limit_blocks=limit, pool_blocks_used=pooled,
                          device_blocks_used=10, running=running, waiting=waiting, preempted=preempted,
                          stall_fraction=stall, output_tok_s=100.0, waiting_blocks=waiting_blocks,
                          pool_blocks_needed=needed)


def drive(controller, signals):
    """Feed windows built from (waiting, preempted, pooled_share_of_limit, stall) at the controller's limit."""
    moves = []
    for waiting, preempted, share, stall in signals:
        limit = controller.limit
        moves.append(controller.decide(window(limit, waiting, preempted, int(share * limit), stall)))
    return moves


def test_settles_then_grows_with_doubling_steps_while_requests_wait():
    controller = PoolController(ControllerConfig(capacity_blocks=800, settle_windows=2))
    moves = drive(controller, [(3, 0, 1.0, 0.02)] * 6)
    assert [m.move for m in moves] == ["settle", "settle", "grow", "grow", "grow", "hold"]
    assert [m.limit for m in moves] == [0, 0, 200, 600, 800, 800]  # step 200, doubled each grow, capped


def test_holds_at_capacity_and_when_nobody_waits_with_the_pool_in_use():
    controller = PoolController(ControllerConfig(capacity_blocks=200, initial_blocks=200, settle_windows=0))
    assert drive(controller, [(2, 0, 1.0, 0.0)])[0].move == "hold"
    assert [m.move for m in drive(controller, [(0, 0, 0.9, 0.0)] * 5)] == ["hold"] * 5
    assert controller.limit == 200


def test_backs_off_when_the_stall_passes_the_limit():
    controller = PoolController(ControllerConfig(capacity_blocks=800, initial_blocks=400, settle_windows=0,
                                                 max_stall_fraction=0.1, stall_windows=2))
    first, move = drive(controller, [(5, 0, 0.5, 0.25), (5, 0, 0.5, 0.25)])
    assert first.move == "grow" and first.limit == 600  # one stalling window (a long prefill) is not yet a trend
    assert move.move == "shrink" and move.limit == 500 and "stall" in move.reason  # 600 - the halved step 100; 300 in use
    # a stalling pool never grows even with requests waiting, and never drops below what is in use
    moves = drive(controller, [(5, 0, 0.5, 0.3)] * 4)
    assert all(m.limit <= move.limit for m in moves) and moves[-1].limit >= 200 - 1
    full = PoolController(ControllerConfig(capacity_blocks=800, initial_blocks=400, settle_windows=0, stall_windows=1))
    held = full.decide(window(400, waiting=3, pooled=400, stall=0.5))
    assert held.move == "hold" and held.limit == 400 and "no further growth" in held.reason


def test_shrinks_an_unused_pool_to_what_is_in_use_plus_a_margin():
    controller = PoolController(ControllerConfig(capacity_blocks=800, initial_blocks=800, settle_windows=0,
                                                 unused_windows=3, margin_share=0.25))
    moves = drive(controller, [(0, 0, 0.1, 0.0)] * 3)  # 80 of 800 in use, nobody waiting
    assert [m.move for m in moves] == ["hold", "hold", "shrink"]
    assert moves[-1].limit == 100  # 80 in use + 25 %


def test_no_shrink_takes_room_the_running_requests_will_need():
    # nobody waits, 200 pooled of 768 but the running requests grow to 300: the unused-pool shrink stops
    # at 300, not at 200 + 25 % (under 300, one of them is preempted later); the stall back-off likewise
    unused = PoolController(ControllerConfig(capacity_blocks=768, initial_blocks=768, settle_windows=0, unused_windows=1))
    move = unused.decide(window(768, pooled=200, needed=300))
    assert move.move == "shrink" and move.limit == 300 and "300 needed" in move.reason
    assert unused.decide(window(300, pooled=210, needed=300)).move == "hold"  # not unused: the floor fills it
    assert PoolController(ControllerConfig(capacity_blocks=768, initial_blocks=768, settle_windows=0, unused_windows=1)
                          ).decide(window(768, pooled=350, needed=500)).move == "hold"  # 500 needed: not unused
    stalled = PoolController(ControllerConfig(capacity_blocks=768, initial_blocks=768, settle_windows=0, stall_windows=1,
                                              initial_step_blocks=400))
    moves = [stalled.decide(window(stalled.limit, pooled=350, needed=700, stall=0.3)) for _ in range(4)]
    assert [m.limit for m in moves] == [700, 700, 700, 700] and moves[0].move == "shrink"
    assert moves[-1].move == "hold" and "need 700 pooled blocks" in moves[-1].reason


def test_rearms_with_the_initial_step_when_load_returns_after_a_calm_stretch():
    controller = PoolController(ControllerConfig(capacity_blocks=3200, settle_windows=0, unused_windows=3))
    drive(controller, [(4, 0, 1.0, 0.0)] * 3)  # grows 800, 2400, 3200 (capped)
    assert controller.limit == 3200
    controller.limit = 2000  # say a stall backed it off
    drive(controller, [(0, 0, 1.0, 0.0)] * 4)  # calm, pool in use: holds
    assert controller.limit == 2000
    move = drive(controller, [(4, 0, 1.0, 0.0)])[0]
    assert move.move == "rearm" and move.limit == 2800  # the initial step again, not the doubled one


def test_grows_at_once_to_what_the_waiting_requests_need():
    controller = PoolController(ControllerConfig(capacity_blocks=800, settle_windows=0))
    move = controller.decide(window(0, waiting=6, pooled=0, waiting_blocks=450))
    assert move.move == "grow" and move.limit == 450  # more than the step of 200
    move = controller.decide(window(450, waiting=2, pooled=440, waiting_blocks=900))
    assert move.limit == 800  # capped at the capacity


def test_preemptions_count_as_demand():
    controller = PoolController(ControllerConfig(capacity_blocks=80, settle_windows=0))
    assert drive(controller, [(0, 2, 0.0, 0.0)])[0].move == "grow"


def test_same_windows_same_moves():
    signals = [(i % 3, i % 2, (i % 5) / 5, (i % 7) / 20) for i in range(60)]
    first = drive(PoolController(ControllerConfig(capacity_blocks=500)), signals)
    second = drive(PoolController(ControllerConfig(capacity_blocks=500)), signals)
    assert first == second
    assert all(0 <= m.limit <= 500 for m in first)


@pytest.mark.parametrize("kwargs", [dict(capacity_blocks=10, initial_blocks=11), dict(capacity_blocks=10, max_stall_fraction=0.0),
                                    dict(capacity_blocks=10, unused_windows=0), dict(capacity_blocks=10, stall_windows=0)])
def test_bad_configs_are_bad_input(kwargs):
    with pytest.raises(BadInput):
        ControllerConfig(**kwargs)
