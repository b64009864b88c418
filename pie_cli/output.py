"""Human output to stderr (messages, progress) and data to stdout (tables, or JSON with --json).

Every command builds its result as plain data, then calls `Output.table` / `Output.json`.
With `--json`, only JSON goes to stdout and everything human goes to stderr, so
`pie ... --json | jq` always works.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pie_core.formatting import format_cell
from pie_core.json_files import to_jsonable


def print_error_json(message: str, hint: str | None, exit_code: int, details: dict[str, Any] | None = None) -> None:
    """The one JSON object a failed command writes on stdout under --json: the error, the hint, the exit code, and
    what was kept (e.g. `record_path` of a partial record, `runs` finished before the failure)."""
    payload = {"error": message, "hint": hint, "exit_code": exit_code, **(details or {})}
    print(json.dumps(to_jsonable(payload), indent=2), flush=True)


class Output:
    """The one output helper: `data` console on stdout, `messages` console on stderr."""

    def __init__(self, json_mode: bool = False):
        self.json_mode = json_mode
        # Outside a terminal (pipes, CI logs) rich would wrap at 80 columns and cut names.
        self.data = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
        self.messages = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

    def info(self, text: str) -> None:
        self.messages.print(text)

    def warn(self, text: str) -> None:
        self.messages.print(f"[yellow]warning:[/yellow] {text}")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              highlight_row: int | None = None, caption: str | None = None) -> None:
        """A rich table: on stdout normally, on stderr under --json (stdout is for JSON)."""
        table = Table(title=title, caption=caption, title_justify="left")
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for i, row in enumerate(rows):
            cells = [format_cell(v) for v in row]
            table.add_row(*cells, style="bold green" if i == highlight_row else None)
        (self.messages if self.json_mode else self.data).print(table)

    def json(self, payload: Any) -> None:
        print(json.dumps(to_jsonable(payload), indent=2, sort_keys=False))

    def progress(self, transient: bool = True) -> Progress:
        """A progress display on stderr (never mixes with stdout data)."""
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=self.messages,
                        transient=transient)
