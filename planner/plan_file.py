"""Reading a plan file: the JSON `pie tune` wrote, checked field by field before a `Plan` is built.

Every field is checked against its type, sign and range (pie_core/json_fields.py): the engine settings
(each setting's range comes from its declaration, runners/engine/settings.py, and the block size is a
power of two) and the predicted figures (finite, none negative), then across fields (a model or dtype
that an older plan kept inside its settings is the plan's). A problem
is one `BadInput` naming the file and the field's JSON path (`settings.num_pool_blocks`), what was
found, and `pie tune` as the fix.

Left out: what the plan means (planner/plan.py) and writing it (`Plan.save`).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import check_block_size
from pie_core.json_fields import NON_NEGATIVE, Range, Where, read_dataclass
from pie_core.json_files import read_json_file

HINT = "re-run `pie tune --output plan.json` to make a new plan"


def settings_bounds() -> dict[str, Range]:
    """Each engine setting's range, from its one declaration (runners/engine/settings.py)."""
    from runners.engine.settings import EngineSettings

    bounds = {}
    for item in dataclasses.fields(EngineSettings):
        minimum, maximum = item.metadata.get("minimum"), item.metadata.get("maximum")
        if minimum is not None or maximum is not None:
            bounds[item.name] = Range(minimum=minimum, maximum=maximum)
    return bounds


def plan_from_dict(plan_type: type, data: Any, source: str = "plan") -> Any:
    """A `plan_type` (planner/plan.py's `Plan`, which hands itself in) from parsed JSON, every field checked."""
    from runners.engine.settings import EngineSettings

    hints = typing.get_type_hints(plan_type)
    version = next(f.default for f in dataclasses.fields(plan_type) if f.name == "schema_version")
    where = Where(source, HINT)
    if not isinstance(data, dict):
        raise BadInput(f"{source} is not a pie plan (expected a JSON object)", HINT)
    if data.get("schema_version") != version:
        raise where.at("schema_version").error(f"is {data.get('schema_version')!r}; this pie reads plan version {version}")
    settings = data.get("settings")
    if isinstance(settings, dict) and isinstance(settings.get("block_size"), int) and settings["block_size"] >= 1:
        try:
            check_block_size(settings["block_size"], "block_size")
        except BadInput as err:
            raise where.at("settings").at("block_size").error(err.message.removeprefix("block_size "), ) from None
    performance_type = hints["predicted"]
    performance = {f.name: NON_NEGATIVE for f in dataclasses.fields(performance_type)}
    plan = read_dataclass(plan_type, data, where, nested_bounds={EngineSettings: settings_bounds(),
                                                                 performance_type: performance})
    for name in ("model", "dtype"):  # plans written before the settings were one declaration kept these inside too
        inside = settings.get(name) if isinstance(settings, dict) else None
        if inside is not None and inside != getattr(plan, name):
            raise where.at("settings").at(name).error(f"is {inside!r} but the plan's {name} is {getattr(plan, name)!r}")
    return plan


def load_plan(plan_type: type, path: Path) -> Any:
    """A plan from a file `pie tune` wrote; any problem is one `BadInput` naming the file and the field."""
    data = read_json_file(path, "plan", "write one with `pie tune --output plan.json`", HINT)
    return plan_from_dict(plan_type, data, source=f"plan '{path}'")
