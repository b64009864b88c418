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
from pie_core.inputs import check_path_length, readable_file
from pie_core.json_files import to_jsonable
from pie_core.json_fields import decode_text
from results.record import HINT, RequestSample, RunHeader, RunRecord, parse_record

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
    """Read and check a record file (results/record.py: `parse_record`); any problem is one BadInput naming it."""
    path = readable_file(path, "record", "pass a record file, a run id, or a selector (see `pie show`)")
    source = f"record '{path}'"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BadInput(f"cannot read {source}: {err.strerror or err}", "check the file's permissions") from None
    return parse_record(decode_text(raw, source, HINT), source, str(path))


def looks_like_record(path: Path) -> bool:
    """Whether `path` is a file whose first line is a run record's header (what no other writer may replace)."""
    try:
        with open(path, "rb") as file:
            start = file.read(64).decode("utf-8", "replace").replace(" ", "")
    except OSError:
        return False
    return start.startswith('{"type":"header"')


def check_outside_store(path: Path, flag: str, store_root: Path | None = None) -> Path:
    """`path` unless writing there would replace a run record or put a file into a results store (bad input).

    A store is `store_root`, or any directory that already holds a run record."""
    path = Path(path).expanduser()
    hint = f"give {flag} a path outside the results directory, e.g. {flag} {path.name if not path.name.endswith(SUFFIX) else 'out'}"
    if path.is_file() and looks_like_record(path):
        raise BadInput(f"{flag} '{path}' is a run record; writing there would destroy it", hint)
    directory = path.parent.resolve() if path.parent.exists() else None
    if directory is None:
        return path
    if store_root is not None and Path(store_root).expanduser().exists() and directory == Path(store_root).expanduser().resolve():
        raise BadInput(f"{flag} '{path}' is inside the results directory '{store_root}', which only `pie bench` writes", hint)
    if any(looks_like_record(other) for other in sorted(directory.glob(f"*{SUFFIX}"))[:50]):
        raise BadInput(f"{flag} '{path}' is inside a results directory ('{path.parent}' holds run records), "
                       "which only `pie bench` writes", hint)
    return path


class ResultsStore:
    """A directory of run records (default `.pie/results/`)."""

    def __init__(self, root: Path):
        self.root = check_path_length(Path(root), "--results-dir")
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"results directory '{self.root}' is a file, not a directory",
                           "pass --results-dir a directory; it is made if missing")
        self._scanned: tuple | None = None  # (records, unreadable), read once per store object

    def writer(self, header: RunHeader) -> RecordWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        self._scanned = None
        return RecordWriter(self.root / f"{header.run_id}{SUFFIX}", header)

    def paths(self) -> list[Path]:
        return sorted(self.root.glob(f"*{SUFFIX}")) if self.root.is_dir() else []

    def records(self) -> list[RunRecord]:
        """Every readable record, oldest first; files it cannot read are left out and kept in `unreadable()`."""
        return list(self._scan()[0])

    def unreadable(self) -> list[tuple[Path, str]]:
        """(file, why) for each record file in the store that could not be read, in file order."""
        return list(self._scan()[1])

    def _scan(self) -> tuple[tuple[RunRecord, ...], tuple[tuple[Path, str], ...]]:
        if self._scanned is None:
            found, broken = [], []
            for path in self.paths():
                try:
                    found.append(load_record(path))
                except BadInput as err:
                    broken.append((path, err.message))
            self._scanned = (tuple(sorted(found, key=lambda r: (r.header.created_at, r.run_id))), tuple(broken))
        return self._scanned

    def load(self, ref: str) -> RunRecord:
        """A record by file path or by run id (a unique prefix is enough)."""
        if not ref.strip():
            raise BadInput("an empty run id was given", "pass a run id (see `pie show`) or a record file")
        path = check_path_length(Path(ref), "run")
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
