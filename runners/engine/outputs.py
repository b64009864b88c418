"""What the engine hands back: per-request outputs, per-iteration telemetry, and what an executor's
forward pass reports to the engine core (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    """State of one request as of the last `step()`. Times are `time.perf_counter()` seconds."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "length" | "stop" | "error" | "abort"
    arrival_time: float = 0.0
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per output token
    num_preemptions: int = 0
    error: str | None = None


@dataclass(frozen=True)
class IterationStats:
    """Telemetry of one engine iteration: the signal for adaptive expansion and transparency checks."""

    step: int
    wall_s: float  # whole iteration, scheduling included
    compute_s: float  # forward pass time excluding stall
    stall_s: float  # time the forward pass waited on pool->device copies
    h2d_bytes: int  # pool -> device (prefetch into staging)
    d2h_bytes: int  # device -> pool (evictions)
    num_prefill_tokens: int
    num_decode_tokens: int
    batch_size: int  # sequences in this iteration
    num_running: int
    num_waiting: int
    num_preempted: int  # preemptions in this iteration
    device_blocks_used: int
    pool_blocks_used: int
    pool_limit_blocks: int
    rebuilt_tokens: int = 0  # pooled tokens whose K/V were rebuilt from activations
    waiting_blocks: int = 0  # KV blocks the waiting requests need to run (their tokens so far)

    @property
    def stall_fraction(self) -> float:
        total = self.compute_s + self.stall_s
        return self.stall_s / total if total > 0 else 0.0


@dataclass(frozen=True)
class StepResult:
    """One forward pass, as an executor (runners/engine/engine_core.py) reports it."""

    tokens: list[int]  # one per sequence that completes this step (`SchedulerOutput.sampled`), prefills first
    compute_s: float
    stall_s: float
    h2d_bytes: int
    d2h_bytes: int
    rebuilt_tokens: int
