"""No file in the repository holds what an unfinished git merge leaves behind.

A merge on 2026-12-06 (3a51190) committed README.md with both sides of a conflict and its markers, and
every later session read and extended that README without noticing; this test is what notices.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The opening and closing markers are unambiguous; a bare "=======" line is also a setext heading in text.
MARKER = re.compile(rb"^(<{7}|>{7})( |$)", re.MULTILINE)


def _tracked_files() -> list[Path]:
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an unpacked archive): every file
        return [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.name]
    return [ROOT / name for name in done.stdout.decode().split("\0") if name]


def conflicted(files: list[Path], root: Path = ROOT) -> list[str]:
    """`path:line` (from `root`) of each conflict marker in the text files among `files`; binary files are skipped."""
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:  # listed by git but deleted in the work tree
            continue
        if b"\0" in data[:8192]:
            continue
        for match in MARKER.finditer(data):
            line = data.count(b"\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(root)}:{line}")
    return found


def test_no_file_holds_merge_conflict_markers():
    files = _tracked_files()
    assert len(files) > 100, f"found only {len(files)} files to check; the listing went wrong"
    found = conflicted(files)
    assert not found, f"unresolved merge conflict markers (resolve the conflict and drop them): {', '.join(found)}"


def test_the_check_sees_a_conflict(tmp_path):
    sample = tmp_path / "notes.md"
    sample.write_text("# title\n=======\nkept\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> main\n")
    assert conflicted([sample], tmp_path) == ["notes.md:4", "notes.md:8"]
    sample.write_text("# title\n=======\n<<<<<<<<\n a >>>>>>> b\n")  # a heading, a longer run, mid-line
    assert conflicted([sample], tmp_path) == []
    (tmp_path / "blob.bin").write_bytes(b"\0\1<<<<<<< HEAD\n")
    assert conflicted([tmp_path / "blob.bin"], tmp_path) == []
