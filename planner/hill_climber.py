"""Online hill-climber for the CPU pool size (Pie's adaptive expansion), deterministic given its inputs.

It starts at the plan's pool size, proposes a move of `step` blocks, and keeps the move when
measured throughput rises while the stall fraction stays under a threshold; a rejected move
reverses the direction and halves the step. A candidate whose throughput differs from the
kept size's by less than the noise fraction is measured once more and judged on the average;
before stopping, the kept size and the runner-up (best mean among the other measured sizes)
are measured once more and the higher mean is kept, which undoes most lucky single readings. Two accepted moves in a row double the step, so a
poor start is left quickly. It stops when the step falls below one block (per layer, the
engine's unit) or below a small fraction of the pool, and re-arms (step back to its initial
size) when, after stopping, the stall or the queue length shifts. Given the same sequence of
measurements it makes the same moves, so it is tested against synthetic curves.
Left out: measuring (runners/online_tuner.py drives the engine and feeds `observe`).
"""
from __future__ import annotations

from dataclasses import dataclass

from pie_cli.errors import BadInput


@dataclass(frozen=True)
class ClimberConfig:
    initial_blocks: int  # the plan's pool size
    max_blocks: int  # the pool's capacity (num_pool_blocks)
    initial_step_blocks: int | None = None  # default: a quarter of the start (or of the capacity)
    min_blocks: int = 0
    min_step_blocks: int = 1  # one block per layer: below this the climber stops
    relative_resolution: float = 0.02  # also stop when the step is below this share of the pool
    max_stall_fraction: float = 0.10  # a move whose stall exceeds this is rejected
    rearm_stall_change: float = 0.05  # absolute change of stall fraction that re-arms a stopped climber
    rearm_queue_change: float = 0.5  # relative change of queue length (at least 2 requests) that re-arms
    noise_fraction: float = 0.0  # a difference within this share of throughput is measured once more
    max_moves: int = 12  # measurements after the start; the climber stops at the best kept size
    confirm: bool = True  # spend the last two moves re-measuring the kept size and the runner-up

    def __post_init__(self) -> None:
        if not 0 <= self.min_blocks <= self.initial_blocks <= self.max_blocks:
            raise BadInput(f"hill-climber needs min_blocks <= initial_blocks <= max_blocks, got "
                           f"{self.min_blocks} <= {self.initial_blocks} <= {self.max_blocks}")
        if self.min_step_blocks < 1 or (self.initial_step_blocks is not None and self.initial_step_blocks < 1):
            raise BadInput("hill-climber steps must be at least one block")
        if not 0 < self.max_stall_fraction <= 1:
            raise BadInput(f"max stall fraction must be in (0, 1], got {self.max_stall_fraction}")

    @property
    def first_step_blocks(self) -> int:
        if self.initial_step_blocks is not None:
            return self.initial_step_blocks
        base = self.initial_blocks if self.initial_blocks > 0 else self.max_blocks
        return max(self.min_step_blocks, base // 4)


@dataclass(frozen=True)
class Measurement:
    pool_blocks: int
    throughput_tok_s: float
    stall_fraction: float
    queue_length: float = 0.0


@dataclass(frozen=True)
class Move:
    index: int  # 0 is the measurement of the starting point
    pool_blocks: int
    throughput_tok_s: float
    stall_fraction: float
    accepted: bool
    best_blocks: int  # the kept pool size after this measurement
    step_blocks: int  # the step for the next proposal
    note: str


class HillClimber:
    """State machine: `propose()` the pool size to measure next, then `observe()` what was measured."""

    def __init__(self, config: ClimberConfig):
        self.config = config
        self.step = config.first_step_blocks
        self.direction = 1
        self.best: Measurement | None = None
        self.pending = config.initial_blocks
        self.moves: list[Move] = []
        self.stopped = False
        self.streak = 0  # accepted moves in a row
        self.reference: Measurement | None = None  # conditions when it stopped, for re-arming
        self.held: Measurement | None = None  # a candidate within noise, judged after it is measured again
        self.history: dict[int, list[Measurement]] = {}  # every measurement of this climb, by pool size
        self.confirming: list[int] = []  # sizes still to re-measure before stopping

    @property
    def best_blocks(self) -> int:
        return self.best.pool_blocks if self.best else self.config.initial_blocks

    def propose(self) -> int:
        """Pool size to run next (the kept size while stopped)."""
        if self.stopped:
            return self.best_blocks
        return self.confirming[0] if self.confirming else self.pending

    @property
    def _climb_budget(self) -> int:
        return self.config.max_moves - (2 if self.config.confirm else 0)

    def _clamp(self, blocks: int) -> int:
        return max(self.config.min_blocks, min(self.config.max_blocks, blocks))

    def _next_candidate(self) -> int | None:
        """The next size to try, turning around at the bounds; None when both ways are blocked."""
        for _ in range(2):
            candidate = self._clamp(self.best_blocks + self.direction * self.step)
            if candidate != self.best_blocks:
                return candidate
            self.direction = -self.direction
        return None

    def _resolution(self) -> float:
        return max(self.config.min_step_blocks, self.config.relative_resolution * self.best_blocks)

    def observe(self, measured: Measurement) -> Move:
        if self.stopped:
            return self._observe_stopped(measured)
        self.history.setdefault(measured.pool_blocks, []).append(measured)
        if self.confirming:
            return self._observe_confirming(measured)
        raw = measured  # what this move measured; a judged average may replace `measured` below
        if self.best is None:
            self.best = measured
            accepted, note = True, "start"
        elif self.held is not None:
            # The candidate measured a second time: judge the average of both.
            measured, self.held = _average([self.held, measured]), None
            accepted, note = self._judge(measured)
            note = f"measured twice, mean {measured.throughput_tok_s:.1f}; " + note
        elif (abs(measured.throughput_tok_s - self.best.throughput_tok_s) < self.config.noise_fraction * self.best.throughput_tok_s
              and len(self.moves) < self._climb_budget):
            self.held = measured
            move = Move(len(self.moves), measured.pool_blocks, measured.throughput_tok_s, measured.stall_fraction,
                        False, self.best_blocks, self.step, "within noise: measuring it again")
            self.moves.append(move)
            return move
        else:
            accepted, note = self._judge(measured)
        out_of_moves = len(self.moves) >= self._climb_budget
        candidate = self._next_candidate() if self.step >= self._resolution() and not out_of_moves else None
        if candidate is None:
            reason = ("out of moves" if out_of_moves else
                      "step below one block" if self.step < self.config.min_step_blocks else "step below resolution")
            runner_up = self._runner_up()
            if self.config.confirm and runner_up is not None and len(self.moves) + 2 <= self.config.max_moves:
                self.confirming = [self.best_blocks, runner_up]
                note += f"; {reason}: re-measuring {self.best_blocks} and runner-up {runner_up}"
            else:
                self.stopped, self.reference = True, self.best
                note += f"; stopped ({reason})"
        else:
            self.pending = candidate
        move = Move(len(self.moves), raw.pool_blocks, raw.throughput_tok_s, raw.stall_fraction,
                    accepted, self.best_blocks, self.step, note)
        self.moves.append(move)
        return move

    def _runner_up(self) -> int | None:
        """The measured size with the best mean throughput other than the kept one."""
        others = [(sum(m.throughput_tok_s for m in ms) / len(ms), size) for size, ms in self.history.items()
                  if size != self.best_blocks]
        return max(others)[1] if others else None

    def _observe_confirming(self, measured: Measurement) -> Move:
        """Re-measurements before stopping: keep whichever of the two has the higher mean."""
        self.confirming.pop(0)
        note = "confirming"
        if not self.confirming:
            kept = self.best_blocks
            means = {size: _average(self.history[size]) for size in (kept, self._runner_up() or kept)}
            winner = max(means.values(), key=lambda m: (m.throughput_tok_s, -abs(m.pool_blocks - kept)))
            calm = winner.stall_fraction <= self.config.max_stall_fraction
            self.best = winner if calm else means[kept]
            self.stopped, self.reference = True, self.best
            note = f"confirmed {self.best.pool_blocks} on the mean of {len(self.history[self.best.pool_blocks])} measurements; stopped"
        move = Move(len(self.moves), measured.pool_blocks, measured.throughput_tok_s, measured.stall_fraction,
                    False, self.best_blocks, self.step, note)
        self.moves.append(move)
        return move

    def _judge(self, measured: Measurement) -> tuple[bool, str]:
        """Keep the candidate if it beat the kept size without stalling; else reverse and halve."""
        better = measured.throughput_tok_s > self.best.throughput_tok_s
        calm = measured.stall_fraction <= self.config.max_stall_fraction
        if better and calm:
            self.best = measured
            self.streak += 1
            if self.streak >= 2:
                self.step *= 2
                self.streak = 0
            return True, "kept: throughput rose"
        self.streak = 0
        self.direction = -self.direction
        self.step //= 2
        return False, "reversed: " + ("throughput fell" if not better else
                                      f"stall {measured.stall_fraction:.0%} above {self.config.max_stall_fraction:.0%}")

    def _observe_stopped(self, measured: Measurement) -> Move:
        """While stopped, watch for a workload shift; re-arm with the initial step if one comes."""
        reference = self.reference or measured
        stall_shift = abs(measured.stall_fraction - reference.stall_fraction) > self.config.rearm_stall_change
        queue_delta = measured.queue_length - reference.queue_length
        queue_shift = abs(queue_delta) >= max(2.0, self.config.rearm_queue_change * reference.queue_length)
        note = "holding"
        if stall_shift or queue_shift:
            self.stopped = False
            self.step = self.config.first_step_blocks
            self.streak = 0
            # A longer queue asks for capacity; a higher stall asks for a smaller pool.
            self.direction = -1 if measured.stall_fraction > reference.stall_fraction + self.config.rearm_stall_change else 1
            self.best = measured
            self.history = {measured.pool_blocks: [measured]}
            self.pending = self._next_candidate() or self.best_blocks
            note = "re-armed: " + ("stall shifted" if stall_shift else "queue length shifted")
        move = Move(len(self.moves), measured.pool_blocks, measured.throughput_tok_s, measured.stall_fraction,
                    True, self.best_blocks, self.step, note)
        self.moves.append(move)
        return move


def _average(measurements: list[Measurement]) -> Measurement:
    count = len(measurements)
    return Measurement(measurements[0].pool_blocks, sum(m.throughput_tok_s for m in measurements) / count,
                       sum(m.stall_fraction for m in measurements) / count, sum(m.queue_length for m in measurements) / count)


def climb(config: ClimberConfig, measure) -> list[Move]:
    """Run the climber to a stop against `measure(pool_blocks) -> Measurement` (synthetic curves, tests)."""
    climber = HillClimber(config)
    while not climber.stopped:
        climber.observe(measure(climber.propose()))
    return climber.moves
