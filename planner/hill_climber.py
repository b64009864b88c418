"""Online hill-climber for the CPU pool size (Pie's adaptive expansion), deterministic given its inputs.

Climb: it starts at the plan's pool size, proposes a move of `step` blocks, and keeps the move
when measured throughput rises while the stall fraction stays under a threshold; a rejected
move reverses the direction and halves the step, two kept moves in a row double it, and a
candidate within the noise fraction of the kept reading is measured once more and judged on
the average. The climb ends after `climb_moves` measurements or when the step falls below one
block (per layer, the engine's unit) or a small fraction of the pool.

Bracket and fit: near the peak the curve changes less than the noise, so no pairwise "did it
rise?" can place the peak to a few percent. Every measurement of the climb is therefore fitted
with a concave tent, y = a + b*min(x - p, 0) + c*max(x - p, 0) with b >= 0 >= c: the rise while
more pool buys batch (capacity-bound) and the fall once copies stall (link-bound), meeting at
the peak p. The remaining moves bracket the fitted peak, refitting after each: first one size
`near_offset` below and one above it, then one `far_offset` below and above (to pin the slopes),
then near sizes again, alternately; a size whose band already holds a reading is skipped. The
kept size is the calm size with the highest fitted throughput: the fitted peak itself when the
measured sizes either side of it stall less than `max_stall_fraction`, else a measured size;
never outside the measured range or [min_blocks, max_blocks]. With fewer than four distinct
sizes, or no concave fit (all points on one side), it keeps the best mean reading instead.

After the last move it stops, and re-arms (a fresh climb from the initial step) when the stall
or the queue length shifts. Given the same sequence of measurements it makes the same moves,
so it is tested against synthetic curves.
Left out: measuring (runners/online_tuner.py drives the engine and feeds `observe`).
"""
from __future__ import annotations

from dataclasses import dataclass

from pie_core.errors import BadInput
from planner.tent_fit import TentFit, fit_tent


@dataclass(frozen=True)
class ClimberConfig:
    initial_blocks: int  # the plan's pool size
    max_blocks: int  # the pool's capacity (num_pool_blocks)
    initial_step_blocks: int | None = None  # default: a quarter of the start (or of the capacity)
    min_blocks: int = 0
    min_step_blocks: int = 1  # one block per layer: below this the climb phase ends
    relative_resolution: float = 0.02  # the climb also ends when the step is below this share of the pool
    max_stall_fraction: float = 0.10  # a move whose stall exceeds this is rejected, and never kept
    rearm_stall_change: float = 0.05  # absolute change of stall fraction that re-arms a stopped climber
    rearm_queue_change: float = 0.5  # relative change of queue length (at least 2 requests) that re-arms
    noise_fraction: float = 0.0  # while climbing, a difference within this share of throughput is measured once more
    max_moves: int = 12  # measurements after the start, re-measurements included
    climb_moves: int = 4  # of those, the climbing ones; the rest bracket the fitted peak
    near_offset: float = 0.10  # bracketing sizes this share of the fitted peak below and above it...
    far_offset: float = 0.55  # ...and this share, for the slopes

    def __post_init__(self) -> None:
        if not 0 <= self.min_blocks <= self.initial_blocks <= self.max_blocks:
            raise BadInput(f"hill-climber needs min_blocks <= initial_blocks <= max_blocks, got "
                           f"{self.min_blocks} <= {self.initial_blocks} <= {self.max_blocks}")
        if self.min_step_blocks < 1 or (self.initial_step_blocks is not None and self.initial_step_blocks < 1):
            raise BadInput("hill-climber steps must be at least one block")
        if not 0 < self.max_stall_fraction <= 1:
            raise BadInput(f"max stall fraction must be in (0, 1], got {self.max_stall_fraction}")
        if self.max_moves < 0 or self.climb_moves < 0:
            raise BadInput(f"hill-climber move budgets must be >= 0, got max_moves={self.max_moves}, "
                           f"climb_moves={self.climb_moves}")
        if not 0 < self.near_offset < self.far_offset:
            raise BadInput(f"bracketing offsets need 0 < near < far, got {self.near_offset}, {self.far_offset}")

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
    pool_blocks: int  # what this move measured: the raw reading, never an average or a fit
    throughput_tok_s: float
    stall_fraction: float
    accepted: bool  # the kept size is this move's size after it
    best_blocks: int  # the kept pool size after this measurement
    step_blocks: int  # the distance from the kept size to the next proposal
    note: str


class HillClimber:
    """State machine: `propose()` the pool size to measure next, then `observe()` what was measured."""

    def __init__(self, config: ClimberConfig):
        self.config = config
        self.step = config.first_step_blocks
        self.direction = 1
        self.best: Measurement | None = None  # the kept size (a fitted size carries the fit's throughput)
        self.pending = config.initial_blocks
        self.moves: list[Move] = []
        self.stopped = False
        self.streak = 0  # accepted moves in a row
        self.reference: Measurement | None = None  # conditions at the kept size when it stopped, for re-arming
        self.held: Measurement | None = None  # a candidate within noise, judged after it is measured again
        self.history: dict[int, list[Measurement]] = {}  # every measurement of this climb, by pool size
        self.climb_start = 0  # index in `moves` of this climb's starting measurement
        self.climbing = True  # False once the climb phase ended and the moves bracket the fitted peak
        self.fit: TentFit | None = None  # the latest fit of this climb's measurements
        self.stall_edge: tuple[int, int] | None = None  # (kept size, stalling size toward the fitted peak)

    @property
    def best_blocks(self) -> int:
        return self.best.pool_blocks if self.best else self.config.initial_blocks

    def propose(self) -> int:
        """Pool size to run next (the kept size while stopped)."""
        if self.stopped:
            return self.best_blocks
        return self.pending

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
        raw = measured  # what this move measured; the log keeps it, a judged average goes in the note
        if not self.climbing:
            return self._record(raw, "bracket" + self._refit_and_plan())
        if self.best is None:
            self.best = measured
            note = "start"
        elif self.held is not None:
            # The candidate measured a second time: judge the average of both.
            measured, self.held = _average([self.held, measured]), None
            note = f"measured twice, mean {measured.throughput_tok_s:.1f}; " + self._judge(measured)
        elif (abs(measured.throughput_tok_s - self.best.throughput_tok_s) < self.config.noise_fraction * self.best.throughput_tok_s
              and self._count < self._climb_budget):
            self.held = measured
            return self._record(raw, "within noise: measuring it again")
        else:
            note = self._judge(measured)
        out_of_moves = self._count >= self._climb_budget
        candidate = self._next_candidate() if self.step >= self._resolution() and not out_of_moves else None
        if candidate is not None:
            self.pending = candidate
            return self._record(raw, note)
        reason = ("out of climbing moves" if out_of_moves else
                  "step below one block" if self.step < self.config.min_step_blocks else "step below resolution")
        self.climbing = False
        return self._record(raw, note + f"; climb done ({reason})" + self._refit_and_plan())

    @property
    def _count(self) -> int:
        """Measurements of this climb after its start, the one being observed included."""
        return len(self.moves) - self.climb_start

    @property
    def _climb_budget(self) -> int:
        return min(self.config.climb_moves, self.config.max_moves)

    def _record(self, raw: Measurement, note: str) -> Move:
        if self.stopped:
            step = 0
        elif self.climbing:
            step = self.step
        else:
            step = abs(self.pending - self.best_blocks)
        move = Move(len(self.moves), raw.pool_blocks, raw.throughput_tok_s, raw.stall_fraction,
                    self.best_blocks == raw.pool_blocks and self.held is None, self.best_blocks, step, note)
        self.moves.append(move)
        return move

    def _judge(self, measured: Measurement) -> str:
        """Keep the candidate if it beat the kept size without stalling; else reverse and halve."""
        better = measured.throughput_tok_s > self.best.throughput_tok_s
        calm = measured.stall_fraction <= self.config.max_stall_fraction
        if better and calm:
            self.best = measured
            self.streak += 1
            if self.streak >= 2:
                self.step *= 2
                self.streak = 0
            return "kept: throughput rose"
        self.streak = 0
        self.direction = -self.direction
        self.step //= 2
        return "reversed: " + ("throughput fell" if not better else
                                      f"stall {measured.stall_fraction:.0%} above {self.config.max_stall_fraction:.0%}")

    def _refit_and_plan(self) -> str:
        """Refit every reading of this climb, keep the chosen size, and plan the next bracketing
        move (or stop when the moves are spent or no bracketing size is left). Returns the note."""
        chosen, why = self._choose()
        self.best = chosen
        note = f"; {why}"
        target = self._bracket_target() if self._count < self.config.max_moves else None
        if target is None:
            reason = "out of moves" if self._count >= self.config.max_moves else "no bracketing size left"
            self.stopped, self.reference = True, self._reference_at(chosen.pool_blocks)
            return note + f"; kept {chosen.pool_blocks}; stopped ({reason})"
        self.pending, label = target
        return note + f"; next: {label}"

    def _choose(self) -> tuple[Measurement, str]:
        """The kept size: the calm size with the highest fitted throughput, or the best mean reading."""
        cfg = self.config
        self.stall_edge = None
        means = {size: _average(ms) for size, ms in sorted(self.history.items())}
        calm = [size for size, m in means.items() if m.stall_fraction <= cfg.max_stall_fraction]
        self.fit = fit_tent([(m.pool_blocks, m.throughput_tok_s) for ms in self.history.values() for m in ms])
        fit = self.fit
        if fit is not None:
            sizes = list(means)
            below = max(s for s in sizes if s <= fit.peak)
            above = min(s for s in sizes if s >= fit.peak)
            candidates = list(calm)
            peak_blocks = max(cfg.min_blocks, min(cfg.max_blocks, min(max(int(round(fit.peak)), below), above)))
            if below in calm and above in calm and peak_blocks not in candidates:
                candidates.append(peak_blocks)
            if candidates:
                size = max(candidates, key=lambda s: (fit.value(s), -abs(s - fit.peak), -s))
                kept = means.get(size) or Measurement(size, fit.value(size), max(means[below].stall_fraction,
                                                                                means[above].stall_fraction))
                where = "the fitted peak"
                if size != peak_blocks:
                    where = "the calm measured size the fit rates highest; sizes nearer the peak stall"
                    self.stall_edge = self._stall_edge(size, [s for s in sizes if s not in calm])
                return kept, f"fit: {fit.describe()}, keeps {size} ({where})"
            return self._fallback(means, calm, f"fit: {fit.describe()}")
        reason = (f"fit ill-posed ({len(means)} sizes)" if len(means) < 4 else
                  "fit ill-posed (no concave tent: all points on one side)")
        return self._fallback(means, calm, reason)

    def _stall_edge(self, kept: int, stalling: list[int]) -> tuple[int, int] | None:
        """The kept size and the nearest stalling size toward the fitted peak, when a size between
        them could be calm and fit higher (the bracket then halves that gap)."""
        toward = [s for s in stalling if (s > kept if self.fit.peak > kept else s < kept)]
        if not toward:
            return None
        edge = min(toward, key=lambda s: abs(s - kept))
        middle = (kept + edge) // 2
        if middle in (kept, edge) or self.fit.value(middle) <= self.fit.value(kept):
            return None
        return kept, edge

    def _fallback(self, means: dict[int, Measurement], calm: list[int], reason: str) -> tuple[Measurement, str]:
        if calm:
            size = max(calm, key=lambda s: (means[s].throughput_tok_s, -s))
            which = "the best mean reading" if len(calm) == len(means) else "the best mean reading that does not stall"
            return means[size], f"{reason}: keeps {size}, {which}"
        size = min(means, key=lambda s: (means[s].stall_fraction, -means[s].throughput_tok_s, s))
        return means[size], f"{reason}: every size stalls, keeps {size}, the least stalled"

    def _bracket_target(self) -> tuple[int, str] | None:
        """Next bracketing size around the fitted peak (the best mean reading without a fit): near below,
        near above, far below, far above; then, when stalls keep the choice off the peak, halfway
        between the kept size and the nearest stalling size toward the peak; else near again,
        alternately. A target whose band already holds enough readings, or that the bounds push out
        of its band, is skipped; None when nothing is left."""
        cfg = self.config
        if self.fit is not None:
            center = self.fit.peak
        else:  # the best mean reading, stalled or not: the bracket looks for the peak, the choice avoids stalls
            center = float(max(self.history, key=lambda s: (_average(self.history[s]).throughput_tok_s, -s)))
        scale = max(center, float(cfg.first_step_blocks))  # offsets are shares of the peak (of a step at 0)
        near, far = cfg.near_offset, cfg.far_offset
        # A reading counts toward a target within these shares of the peak (a reading at the peak itself
        # is on neither side; readings between the bands pin neither the apex nor the slopes well).
        bands = {"near": (near / 4, 2 * near), "far": (0.7 * far, 1.6 * far)}
        targets = [("near", -1), ("near", 1), ("far", -1), ("far", 1)] + [("near", -1), ("near", 1)] * cfg.max_moves
        wanted: dict[tuple[str, int], int] = {}
        for index, (band, side) in enumerate(targets):
            if index == 4 and self.stall_edge is not None:  # slopes pinned: search the calm side of the stall
                kept, edge = self.stall_edge
                return (kept + edge) // 2, f"halfway to the stalling {edge}"
            wanted[(band, side)] = wanted.get((band, side), 0) + 1
            low, high = bands[band]

            def inside(size: int) -> bool:
                return low * scale <= side * (size - center) <= high * scale

            have = sum(len(ms) for size, ms in self.history.items() if inside(size))
            if have >= wanted[(band, side)]:
                continue
            offset = near if band == "near" else far
            size = self._clamp(int(round(center + side * offset * scale)))
            if not inside(size):
                continue  # a bound (or rounding a tiny pool) pushes it out of its band
            return size, f"{band} {'below' if side < 0 else 'above'} the {'fitted peak' if self.fit else 'best mean reading'}"
        return None

    def _reference_at(self, blocks: int) -> Measurement:
        """Conditions at the kept size for re-arming: the mean reading at the measured size nearest it."""
        nearest = min(self.history, key=lambda s: (abs(s - blocks), s))
        mean = _average(self.history[nearest])
        return Measurement(blocks, mean.throughput_tok_s, mean.stall_fraction, mean.queue_length)

    def _observe_stopped(self, measured: Measurement) -> Move:
        """While stopped, watch for a workload shift; re-arm with the initial step if one comes."""
        reference = self.reference or measured
        stall_shift = abs(measured.stall_fraction - reference.stall_fraction) > self.config.rearm_stall_change
        queue_delta = measured.queue_length - reference.queue_length
        queue_shift = abs(queue_delta) >= max(2.0, self.config.rearm_queue_change * reference.queue_length)
        note = "holding"
        if stall_shift or queue_shift:
            self.stopped = False
            self.climbing = True
            self.step = self.config.first_step_blocks
            self.streak = 0
            self.held = None
            self.fit = None
            # A longer queue asks for capacity; a higher stall asks for a smaller pool.
            self.direction = -1 if measured.stall_fraction > reference.stall_fraction + self.config.rearm_stall_change else 1
            self.best = measured
            self.history = {measured.pool_blocks: [measured]}
            self.climb_start = len(self.moves)  # this measurement starts the new climb
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
