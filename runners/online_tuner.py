"""`pie tune --online`: run a plan on the Pie engine and let the hill-climber size the pool live.

The pool's capacity is the plan's pool times `pool_headroom`, and at least the device tier's
size within the host budget (the climber may grow into it);
the staging for that extra capacity is added to the planned device blocks, so the resident
device KV stays as planned. The engine runs a closed-loop synthetic workload (the plan's mean prompt and output lengths,
random token ids, labelled synthetic): `num_prompts` requests stay in flight, a finished one
is replaced at once, so every window sees the same steady load. For each pool size the
climber proposes, the glue sets `engine.set_pool_limit`, discards `warmup_steps` iterations,
then measures `window_steps` iterations: output tokens per second of wall time, stall
fraction, and mean queue length, and feeds them to `HillClimber.observe`. The kept size is the
climber's choice from a fit of all its readings; where that is the fitted peak between two measured
sizes, the reported throughput is the fit's (`best_output_tok_s_source`). The climber's stall limit
applies where copies overlap compute; with the CPU's team copy the stall is the copy itself, already
in the throughput, so the limit is lifted. Lengths vary around the
plan's means, and the loop first settles for a mean output length of iterations, so the
windows see a steady state rather than the start-up burst.
Left out: the climbing policy (planner/hill_climber.py) and rendering beyond one line per move.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pie_core.errors import BadInput
from pie_core.inputs import check_number, check_seed
from pie_core.shapes import resolve_model
from planner.hill_climber import ClimberConfig, HillClimber, Measurement, Move
from planner.plan import Plan


@dataclass(frozen=True)
class OnlineSettings:
    num_prompts: int = 64  # requests in flight
    window_steps: int = 8  # iterations measured per pool size
    warmup_steps: int = 2  # iterations discarded after each change
    seed: int = 0
    max_moves: int = 12
    noise_fraction: float = 0.05
    max_stall_fraction: float = 0.10
    pool_headroom: float = 2.0  # pool capacity = this x the plan's pool (the climber may grow into it)
    device: str = "cpu"
    input_len: int | None = None  # default: the plan's mean prompt length
    output_len: int | None = None  # default: the plan's mean output length
    settle_steps: int | None = None  # iterations run before the first measurement (default: the mean output length)

    def __post_init__(self) -> None:
        check_number(self.num_prompts, "--num-prompts", minimum=1, integer=True, hint="e.g. --num-prompts 64")
        check_number(self.window_steps, "--window-steps", minimum=1, integer=True, hint="e.g. --window-steps 8")
        if self.warmup_steps < 0 or self.max_moves < 1:
            raise BadInput(f"warm-up steps must be >= 0 and the move budget at least 1, got {self.warmup_steps} and {self.max_moves}")
        check_seed(self.seed)
        if self.pool_headroom < 1:
            raise BadInput(f"pool headroom must be >= 1, got {self.pool_headroom}")


class ClosedLoop:
    """Keeps `num_prompts` synthetic requests in flight on an engine.

    Lengths are drawn uniformly from half to one and a half times the means (seeded), so
    requests finish at different steps and every window sees a steady mix of prefills and
    decodes instead of synchronised waves.
    """

    def __init__(self, engine, vocab_size: int, input_len: int, output_len: int, num_prompts: int, seed: int):
        self.engine, self.vocab_size = engine, vocab_size
        self.input_len, self.output_len = input_len, output_len
        self.rng = np.random.default_rng(seed)
        self.count = 0
        for _ in range(num_prompts):
            self._add()

    def _length(self, mean: int) -> int:
        return int(self.rng.integers(max(1, mean // 2), max(2, mean + mean // 2 + 1)))

    def _add(self) -> None:
        from runners.engine.sampling_params import SamplingParams

        prompt = self.rng.integers(0, self.vocab_size, self._length(self.input_len)).tolist()
        params = SamplingParams(max_tokens=self._length(self.output_len), ignore_eos=True)
        self.engine.add_request(f"online-{self.count}", prompt, params)
        self.count += 1

    def settle(self, num_steps: int) -> None:
        """Run without measuring until the start-up burst of prefills has passed."""
        for _ in range(num_steps):
            self.step()

    def step(self):
        outputs = self.engine.step()
        for output in outputs:
            if output.finished:
                self._add()
        return self.engine.stats[-1]


def measure_window(loop: ClosedLoop, pool_blocks: int, settings: OnlineSettings) -> Measurement:
    """Set the pool limit, warm up, and measure one window of iterations."""
    loop.engine.set_pool_limit(pool_blocks)
    for _ in range(settings.warmup_steps):
        loop.step()
    stats = [loop.step() for _ in range(settings.window_steps)]
    wall = sum(s.wall_s for s in stats)
    tokens = sum(s.batch_size for s in stats)
    busy = sum(s.compute_s + s.stall_s for s in stats)
    return Measurement(pool_blocks=pool_blocks, throughput_tok_s=tokens / wall if wall > 0 else 0.0,
                       stall_fraction=sum(s.stall_s for s in stats) / busy if busy > 0 else 0.0,
                       queue_length=sum(s.num_waiting for s in stats) / len(stats))


def build_engine(plan: Plan, settings: OnlineSettings, pool_capacity: int):
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine

    planned = plan.settings
    # Staging is sized to the pool's capacity; the headroom the climber may grow into gets its
    # staging on top of the planned device blocks, so resident device KV stays as planned.
    layers = resolve_model(plan.model).num_layers
    extra_staging = (math.ceil(planned.prefetch_depth * pool_capacity / layers)
                     - math.ceil(planned.prefetch_depth * planned.num_pool_blocks / layers))
    kwargs = {**planned.to_dict(), "model": plan.model, "dtype": plan.dtype, "num_pool_blocks": pool_capacity, "device": settings.device,
              "seed": settings.seed, "num_device_blocks": planned.num_device_blocks + max(0, extra_staging)}
    if pool_capacity == 0:
        kwargs["rebuild_fraction"] = 0.0
    return LLMEngine(EngineConfig(**kwargs))


def pool_capacity_for(plan: Plan, settings: OnlineSettings) -> int:
    """Blocks of pool to allocate: room above the plan's pool, and at least the device tier's size
    (within the host budget) so a plan that pooled little can still be climbed from."""
    start = plan.settings.num_pool_blocks
    block_bytes = resolve_model(plan.model).kv_bytes_per_token(plan.dtype) * plan.settings.block_size
    host_blocks = int(plan.budgets["host_memory_bytes"] // block_bytes)
    return max(start + 1, int(math.ceil(start * settings.pool_headroom)), min(host_blocks, plan.settings.num_device_blocks), 4)


def run_online(plan: Plan, settings: OnlineSettings, out=None, on_move: Callable[[Move], None] | None = None) -> Plan:
    """Climb from the plan's pool size on a running engine; return the plan with the measured best."""
    capacity = pool_capacity_for(plan, settings)
    with build_engine(plan, settings, capacity) as engine:
        return _climb(plan, settings, engine, capacity, out, on_move)


def _climb(plan: Plan, settings: OnlineSettings, engine, capacity: int, out, on_move: Callable[[Move], None] | None) -> Plan:
    input_len = settings.input_len or max(1, round(plan.workload["mean_input_tokens"]))
    output_len = settings.output_len or max(1, round(plan.workload["mean_output_tokens"]))
    loop = ClosedLoop(engine, engine.model.shape.vocab_size, input_len, output_len, settings.num_prompts, settings.seed)
    engine.set_pool_limit(plan.settings.num_pool_blocks)
    loop.settle(settings.settle_steps if settings.settle_steps is not None else output_len)
    # The stall guard keeps a pool whose copies a link can hide. Where copies cannot overlap compute (the
    # CPU team copy), the stall is the copy's own time, already paid in the throughput the climber judges.
    stall_guard = settings.max_stall_fraction if engine.config.copies_overlap else 1.0
    climber = HillClimber(ClimberConfig(initial_blocks=plan.settings.num_pool_blocks, max_blocks=capacity,
                                        max_moves=settings.max_moves, noise_fraction=settings.noise_fraction,
                                        max_stall_fraction=stall_guard))
    if out is not None:
        out.info(f"online: {plan.model} on {settings.device}, closed loop of {settings.num_prompts} synthetic requests "
                 f"({input_len} prompt / {output_len} output tokens), pool capacity {capacity} blocks, "
                 f"{settings.window_steps} iterations per move")
        if not engine.config.copies_overlap:
            out.info(f"  the {engine.config.copy_worker} copy does not overlap compute: its stall is the copy's cost, "
                     "already in the throughput, so no stall limit applies")
    measured_at: dict[int, list[float]] = {}
    while not climber.stopped:
        measurement = measure_window(loop, climber.propose(), settings)
        measured_at.setdefault(measurement.pool_blocks, []).append(measurement.throughput_tok_s)
        move = climber.observe(measurement)
        if on_move is not None:
            on_move(move)
        if out is not None:
            out.info(f"  move {move.index:2d}: pool {move.pool_blocks:5d} blocks  {move.throughput_tok_s:8.1f} tok/s  "
                     f"stall {move.stall_fraction:5.1%}  -> keep {move.best_blocks} ({move.note})")
    best = climber.best_blocks
    # The kept size may be the fitted peak between two measured sizes: then its throughput is the fit's.
    best_tok_s = float(np.mean(measured_at[best])) if best in measured_at else climber.best.throughput_tok_s
    fit = climber.fit
    online = {"start_pool_blocks": plan.settings.num_pool_blocks, "pool_capacity_blocks": capacity,
              "best_pool_blocks": best, "best_output_tok_s": best_tok_s,
              "best_output_tok_s_source": "measured" if best in measured_at else "fit",
              "fit": None if fit is None else {"peak_blocks": fit.peak, "apex_tok_s": fit.apex_tok_s,
                                               "rise_tok_s_per_block": fit.rise, "fall_tok_s_per_block": fit.fall},
              "num_moves": len(climber.moves) - 1, "moves": [dataclasses.asdict(m) for m in climber.moves],
              "workload": {"synthetic": True, "input_len": input_len, "output_len": output_len,
                           "num_prompts": settings.num_prompts},
              "window_steps": settings.window_steps, "device": settings.device,
              "copy_worker": engine.config.copy_worker, "max_stall_fraction": stall_guard}
    return plan.with_online(online, dataclasses.replace(plan.settings, num_pool_blocks=best))
