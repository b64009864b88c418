"""`pie` with every engine step slowed by a fraction of its own wall time: the A/B side of bench_compare_aa.py.

Usage: python benchmarks/slowed_pie.py FRACTION bench ARGS...  (the rest is a normal `pie` command line).
It wraps the engine each in-process runner hands to the one request loop (runners/request_loop.py),
sleeping FRACTION x the step's wall time after each step, so a run is a known amount slower without
any test hook in the product. Left out: the openai runner (its server is another process).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class SlowedEngine:
    """A `StepEngine` whose steps take (1 + fraction) times as long."""

    def __init__(self, engine, fraction: float):
        self.engine, self.fraction = engine, fraction
        self.name = engine.name

    def add(self, request):
        self.engine.add(request)

    def step(self):
        began = time.perf_counter()
        deltas = self.engine.step()
        time.sleep(self.fraction * (time.perf_counter() - began))
        return deltas


def parse_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"error: slowdown fraction {text!r} is not a number (hint: e.g. 0.2)") from None
    if not 0 <= value < 10:
        raise SystemExit(f"error: slowdown fraction {value} is out of range (hint: give a fraction in [0, 10))")
    return value


def install(fraction: float) -> None:
    """Slow every in-process runner's engine by `fraction`."""
    from runners import hf_runner, pie_runner, request_loop, vllm_runner

    real = request_loop.drive_engine

    def drive_slowed(engine, *args, **kwargs):
        return real(SlowedEngine(engine, fraction), *args, **kwargs)

    for module in (pie_runner, hf_runner, vllm_runner):
        module.drive_engine = drive_slowed


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python benchmarks/slowed_pie.py FRACTION bench ARGS...")
    install(parse_fraction(argv[0]))
    from pie_cli.app import main as pie_main

    sys.argv = ["pie", *argv[1:]]
    pie_main()


if __name__ == "__main__":
    main(sys.argv[1:])
