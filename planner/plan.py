"""`Plan`: the tuner's answer as a frozen, versioned JSON file that `pie bench --plan` consumes.

A plan holds the engine settings (`runners.engine.settings.EngineSettings`, in blocks), what the cost
model predicts for them, the no-pool baseline at the same budgets, the binding constraints in
words, and, after `pie tune --online`, the hill-climber's moves and measured best.
Plans written before the settings were one declaration kept the model and dtype inside
`settings` too; those two keys are dropped on read (the plan's own `model` and `dtype` say them).
Left out: how the plan was found (search.py) and turning it into an engine (the resolve step
does, runners/resolve.py; the engine knows nothing of plans).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pie_core.json_files import write_json_atomic
from runners.engine.settings import EngineSettings

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Performance:
    """Predicted (or, for `online`, measured) figures of one configuration."""

    batch_size: int
    output_tok_s: float
    tpot_ms: float
    decode_step_ms: float
    stall_ms_per_step: float
    pooled_fraction: float  # share of the batch's KV that lives in the pool
    device_kv_bytes: int
    pool_bytes: int  # pooled KV (copied + rebuilt), in KV bytes
    rebuilt_bytes: int
    staging_bytes: int
    streamed_bytes_per_step: int
    copy_ms_per_step: float
    compute_ms_per_step: float


@dataclass(frozen=True)
class Plan:
    created_at: str
    model: str
    dtype: str
    hardware: dict[str, Any]  # name, source (preset|profile), label
    budgets: dict[str, Any]
    workload: dict[str, Any]
    settings: EngineSettings
    predicted: Performance
    baseline: Performance  # best plan with no pool at the same device budget
    binding: tuple[str, ...]  # short names of binding constraints
    explanation: tuple[str, ...]  # one sentence each
    solver: dict[str, Any]  # candidates, variables, LP build/solve time
    online: dict[str, Any] | None = None  # hill-climber moves and measured best
    adaptive: bool = False  # `pie bench` moves the pool limit while it serves (planner/pool_controller.py)
    schema_version: int = PLAN_SCHEMA_VERSION

    def with_online(self, online: dict[str, Any], settings: EngineSettings | None = None) -> "Plan":
        return dataclasses.replace(self, online=online, settings=settings or self.settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plan") -> "Plan":
        """Every field checked (planner/plan_file.py)."""
        from planner.plan_file import plan_from_dict

        return plan_from_dict(cls, data, source)

    @classmethod
    def load(cls, path: Path) -> "Plan":
        from planner.plan_file import load_plan

        return load_plan(cls, path)
