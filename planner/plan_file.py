"""Reading a plan file: the JSON `pie tune` wrote, checked field by field before a `Plan` is built.

Every field is checked against its type, sign and range (pie_core/json_fields.py): the engine settings
(a power-of-two block size, at least one device block, a pool of zero or more blocks, a prefetch depth
of one or more, a rebuild fraction in [0, 1], positive batch limits) and the predicted figures
(finite, none negative), then across fields (the settings' model and dtype are the plan's). A problem
is one `BadInput` naming the file and the field's JSON path (`settings.num_pool_blocks`), what was
found, and `pie tune` as the fix.

Left out: what the plan means (planner/plan.py) and writing it (`Plan.save`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import check_block_size
from pie_core.json_fields import FRACTION, NON_NEGATIVE, Range, Where, read_dataclass
from pie_core.json_files import read_json_file

HINT = "re-run `pie tune --output plan.json` to make a new plan"
_AT_LEAST_ONE = Range(minimum=1)
SETTINGS_BOUNDS = {"block_size": _AT_LEAST_ONE, "num_device_blocks": _AT_LEAST_ONE, "num_pool_blocks": NON_NEGATIVE,
                   "prefetch_depth": _AT_LEAST_ONE, "rebuild_fraction": FRACTION, "max_num_seqs": _AT_LEAST_ONE,
                   "max_num_batched_tokens": _AT_LEAST_ONE}


def plan_from_dict(data: Any, source: str = "plan") -> Any:
    """A `Plan` from parsed JSON, every field checked (module docstring)."""
    from planner.plan import PLAN_SCHEMA_VERSION, EngineSettings, Performance, Plan

    where = Where(source, HINT)
    if not isinstance(data, dict):
        raise BadInput(f"{source} is not a pie plan (expected a JSON object)", HINT)
    if data.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise where.at("schema_version").error(f"is {data.get('schema_version')!r}; this pie reads plan version "
                                               f"{PLAN_SCHEMA_VERSION}")
    settings = data.get("settings")
    if isinstance(settings, dict) and isinstance(settings.get("block_size"), int) and settings["block_size"] >= 1:
        try:
            check_block_size(settings["block_size"], "block_size")
        except BadInput as err:
            raise where.at("settings").at("block_size").error(err.message.removeprefix("block_size "), ) from None
    performance = {f.name: NON_NEGATIVE for f in dataclasses.fields(Performance)}
    plan = read_dataclass(Plan, data, where, nested_bounds={EngineSettings: SETTINGS_BOUNDS, Performance: performance})
    for name in ("model", "dtype"):
        if getattr(plan.settings, name) != getattr(plan, name):
            raise where.at("settings").at(name).error(f"is {getattr(plan.settings, name)!r} but the plan's {name} is "
                                                      f"{getattr(plan, name)!r}")
    return plan


def load_plan(path: Path) -> Any:
    """A `Plan` from a file `pie tune` wrote; any problem is one `BadInput` naming the file and the field."""
    data = read_json_file(path, "plan", "write one with `pie tune --output plan.json`", HINT)
    return plan_from_dict(data, source=f"plan '{path}'")
