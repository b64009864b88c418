"""Run the `pie` console entry point in-process, the way a user's shell would (tests only)."""
from __future__ import annotations

import sys

import pytest

from pie_cli.app import main


def run_pie(args, monkeypatch, capsys):
    """Call `pie ARGS` through `main()`; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["pie", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err
