"""`pie serve` for tests: in-process on a thread (`InProcessServer`), or as a `pie serve` subprocess (`ServeProcess`).

Both bind 127.0.0.1 on a free port, wait a bounded time for readiness, and stop what they started (the
subprocess by its process id) even when the test fails. `read_stream` reads one SSE response to its end;
`post` sends raw bytes and reads the whole answer.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
STARTUP_LIMIT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(url: str, payload: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """POST raw bytes as JSON to `url`; (status, the whole body). A dropped connection or a timeout raises."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def metric(url: str, name: str) -> float:
    """The value of one unlabelled-or-single-series metric in /metrics."""
    _, body = get(url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


class InProcessServer:
    """`runners.serve.server.PieServer` on its own event loop in a thread; `with InProcessServer(...) as s: s.url`."""

    def __init__(self, model: str, options: dict[str, Any] | None = None, dtype: str = "float32", **settings: Any):
        from runners.base import RunnerSpec
        from runners.serve.server import PieServer, ServeSettings

        self.lines: list[str] = []
        spec = RunnerSpec(model=str(model), dtype=dtype, device="cpu", seed=0, options=dict(options or {}))
        self.server = PieServer(spec, ServeSettings(port=0, **settings), self.lines.append)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-serve-http", daemon=True)

    def __enter__(self) -> "InProcessServer":
        self.server.engine_loop.run_in_thread()
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=STARTUP_LIMIT_S)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    @property
    def engine(self) -> Any:
        return self.server.engine


class ServeProcess:
    """`pie serve --model MODEL ARGS...` in a subprocess (its own session), ready when /health answers."""

    def __init__(self, model: str, *args: str, log_path: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "pie_cli.app", "serve", "--model", str(model), "--port", str(self.port),
                   "--device", "cpu", *args]
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})}, start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            try:
                if get(self.url + "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"pie serve exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"pie serve not ready after {STARTUP_LIMIT_S} s:\n{self.log()}")
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


async def read_stream(session: Any, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                      ) -> tuple[int, list[Any]]:
    """POST a streaming request; (status, the decoded `data:` payloads, "[DONE]" kept as the string)."""
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            return response.status, [await response.json()]
        payloads = []
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                data = line[len("data:"):].strip()
                payloads.append(data if data == "[DONE]" else json.loads(data))
        return 200, payloads
