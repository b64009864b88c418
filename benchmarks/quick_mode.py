"""`--quick` for the benchmarks: the whole code path on a tiny workload, in seconds, so no script rots unseen.

A quick run measures nothing worth keeping: it is what tests/test_scripts_run.py runs for every
script under benchmarks/ and scripts/. So its JSON goes where `--out` says, or, without `--out`,
into a fresh temporary folder; never into docs/results/, where the committed figures live, and
its targets are printed but do not set the exit status. Left out: choosing the tiny sizes, which
each benchmark does for its own workload.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def add_quick_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a tiny workload that runs every step in seconds (figures mean nothing); writes to --out "
                             "or a temporary folder, never docs/results")


def output_path(given: Path | None, default: Path, quick: bool) -> Path:
    """Where a run writes its JSON (or, for a folder, its files): `given`, else `default`, else, quick, a temporary folder."""
    if not quick:
        return given or default
    if given is None:
        return Path(tempfile.mkdtemp(prefix="pie-quick-")) / default.name
    if given.resolve().is_relative_to(RESULTS.resolve()):
        raise SystemExit(f"error: --quick output {given} is inside docs/results (hint: give --out a path outside it, "
                         "or leave it out for a temporary folder)")
    return given
