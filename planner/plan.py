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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import readable_file
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
        if not isinstance(data, dict):
            raise BadInput(f"{source} is not a pie plan (expected a JSON object)")
        if data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise BadInput(f"{source} has plan schema version {data.get('schema_version')!r}; this pie reads "
                           f"{PLAN_SCHEMA_VERSION}", "re-run `pie tune` to make a new plan")
        try:
            fields = dict(data)
            fields["settings"] = EngineSettings(**{key: value for key, value in dict(data["settings"]).items()
                                                   if key not in ("model", "dtype")})
            fields["predicted"] = Performance(**data["predicted"])
            fields["baseline"] = Performance(**data["baseline"])
            fields["binding"] = tuple(data["binding"])
            fields["explanation"] = tuple(data["explanation"])
            return cls(**fields)
        except (KeyError, TypeError) as err:
            raise BadInput(f"{source} is not a valid pie plan ({err})", "re-run `pie tune` to make a new plan") from None

    @classmethod
    def load(cls, path: Path) -> "Plan":
        path = readable_file(path, "plan", "write one with `pie tune --output plan.json`")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadInput(f"plan '{path}' is not valid JSON ({err})", "re-run `pie tune` to make a new plan") from None
        return cls.from_dict(data, source=f"plan '{path}'")
