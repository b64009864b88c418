"""The append-only results store: one JSON-lines file per run, never overwritten.

`RecordWriter` writes a run as it happens (header, then each request as it finishes, then the
summary), flushing every line so an interrupted run keeps what it measured. `ResultsStore`
lists, loads and selects records. Torch-free.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import readable_file
from pie_core.json_files import to_jsonable
from results.record import RequestSample, RunHeader, RunRecord, header_from_dict

SUFFIX = ".jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(runner: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{runner}-{secrets.token_hex(3)}"


def git_commit(cwd: Path | None = None) -> str | None:
    """The current commit (with '+dirty' if the tree has changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RecordWriter:
    """Writes one run. Use as a context manager; `finish()` marks the record complete."""

    def __init__(self, path: Path, header: RunHeader):
        self.path = path
        self._file = open(path, "x", encoding="utf-8")  # "x": never overwrite a record
        self._write({"type": "header", **dataclasses.asdict(header)})

    def _write(self, obj: dict[str, Any]) -> None:
        self._file.write(json.dumps(to_jsonable(obj)) + "\n")
        self._file.flush()

    def add(self, sample: RequestSample) -> None:
        self._write({"type": "request", **dataclasses.asdict(sample)})

    def finish(self, summary: dict[str, Any], telemetry: dict[str, Any] | None = None,
               timeline: list[dict[str, Any]] | tuple = ()) -> None:
        self._write({"type": "summary", "summary": summary, "telemetry": telemetry or {}, "timeline": list(timeline),
                     "finished_at": utc_now()})
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        """Close and remove a record that holds nothing measured (a run that failed before any request finished)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_record(path: Path) -> RunRecord:
    """Read a record file; a torn last line (killed mid-write) is ignored and the run is incomplete."""
    path = readable_file(path, "record", "pass a record file, a run id, or a selector (see `pie show`)")
    source = f"record '{path}'"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"cannot read {source}: {err}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # torn final line of an interrupted run
                break
            raise BadInput(f"{source} is corrupt at line {number}", "the file is not valid JSON lines") from None
    if not entries or not isinstance(entries[0], dict) or entries[0].get("type") != "header":
        raise BadInput(f"{source} is not a pie run record (no header line)", "pass a file written by `pie bench`")
    header = header_from_dict({k: v for k, v in entries[0].items() if k != "type"}, source)
    requests, summary, telemetry, timeline, finished_at = [], None, {}, [], None
    for entry in entries[1:]:
        kind = entry.get("type") if isinstance(entry, dict) else None
        try:
            if kind == "request":
                requests.append(RequestSample.from_dict(entry))
            elif kind == "summary":
                summary, telemetry, finished_at = entry["summary"], entry.get("telemetry", {}), entry.get("finished_at")
                timeline = list(entry.get("timeline") or [])
        except (TypeError, KeyError) as err:
            raise BadInput(f"{source} has an invalid {kind} line ({err})") from None
    return RunRecord(header=header, requests=tuple(requests), summary=summary, telemetry=telemetry,
                     timeline=tuple(timeline), finished_at=finished_at, source=str(path))


class ResultsStore:
    """A directory of run records (default `.pie/results/`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"results directory '{self.root}' is a file, not a directory",
                           "pass --results-dir a directory; it is made if missing")

    def writer(self, header: RunHeader) -> RecordWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        return RecordWriter(self.root / f"{header.run_id}{SUFFIX}", header)

    def paths(self) -> list[Path]:
        return sorted(self.root.glob(f"*{SUFFIX}")) if self.root.is_dir() else []

    def records(self) -> list[RunRecord]:
        """Every readable record, oldest first; unreadable files are skipped (use load() to see why)."""
        found = []
        for path in self.paths():
            try:
                found.append(load_record(path))
            except BadInput:
                continue
        return sorted(found, key=lambda r: (r.header.created_at, r.run_id))

    def load(self, ref: str) -> RunRecord:
        """A record by file path or by run id (a unique prefix is enough)."""
        path = Path(ref)
        if path.suffix == SUFFIX or path.exists():
            return load_record(path)
        matches = [p for p in self.paths() if p.stem.startswith(ref)]
        if len(matches) == 1:
            return load_record(matches[0])
        if len(matches) > 1:
            raise BadInput(f"run id '{ref}' matches {len(matches)} records in {self.root}", "give more of the id")
        raise BadInput(f"no record '{ref}' in {self.root}", "see `pie show` for stored runs, or pass a file path")

    def select(self, **filters: str | None) -> list[RunRecord]:
        """Records whose header fields match every given filter (label, model, runner, git_commit, sweep_id).

        git_commit matches by prefix; the others exactly.
        """
        active = {k: v for k, v in filters.items() if v is not None}
        chosen = []
        for record in self.records():
            header = dataclasses.asdict(record.header)
            ok = True
            for key, wanted in active.items():
                value = header.get(key)
                if key == "git_commit":
                    ok = ok and value is not None and str(value).startswith(wanted)
                else:
                    ok = ok and value == wanted
            if ok:
                chosen.append(record)
        return chosen
