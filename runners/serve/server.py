"""Start, run and stop `pie serve`: the engine as `pie bench --runner pie` builds it, its thread, the HTTP app.

`resolve_serve` turns the engine flags into a `RunnerSpec` as runners/resolve.py does for `pie bench
--runner pie`; `PieServer(spec, settings, log)` prepares and builds the engine exactly as the pie runner
does (runners/pie_runner.py `prepare`: plan, engine options, `--adaptive` pool control, the same checks
before any work), warms it up with one short request, and `start()` binds the HTTP server (127.0.0.1 unless told
otherwise; port 0 picks a free one) and returns its URL. `shutdown()` stops accepting (the listening
socket closes; requests on open connections get 503), lets in-flight requests finish for up to
`shutdown_grace_s`, then aborts the rest (their streams end with an error chunk), and stops the engine
loop, which closes the engine. `run_server` is the blocking form for the CLI: the engine is built and
stepped on the main thread and the HTTP server runs on a second one (engine_loop.py says why it must be
this way round on a CPU); SIGINT or SIGTERM start that shutdown, and it returns normally (exit 0).

Why aiohttp.web: it is already a dependency (the openai runner's client), it streams with plain
`StreamResponse.write`, and it can cancel a handler when its client disconnects, which is how an
abandoned stream frees its blocks. vLLM's own stack (FastAPI on uvicorn) would add three packages
for the same asyncio server.

Left out: TLS, multiple models, and more than one engine.
"""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from pie_core.errors import BadInput
from runners.base import RunnerSpec
from runners.gc_freeze import frozen_heap
from runners.pie_runner import PieRunner, pool_control
from runners.serve.app import ServeApp, ServedModel
from runners.serve.engine_loop import EngineLoop
from runners.serve.metrics import ServeMetrics
from runners.serve.text import ServeText

SIGNAL_POLL_S = 0.1  # how often the HTTP thread looks for SIGINT/SIGTERM
ABORT_WAIT_S = 5.0  # after aborting at the end of the grace period, how long handlers get to write their error


@dataclass(frozen=True)
class ServeArgs:
    """`pie serve`'s engine flags as parsed (the same as `pie bench --runner pie`'s)."""

    model: str
    plan: Path | None = None
    pool_blocks: int | None = None
    device_blocks: int | None = None
    adaptive: bool = False
    options: dict[str, str] = field(default_factory=dict)  # -O KEY=VALUE, keys normalised
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0


def resolve_serve(args: ServeArgs) -> tuple[RunnerSpec, Any]:
    """The engine's `RunnerSpec` and the dtype decision, by the resolve step's own pieces (runners/resolve.py), as
    for `pie bench --runner pie`: the device, the plan read once, the engine flags and kernel switches merged into
    the options, and `--dtype auto` (the plan's with a plan, else what the device multiplies natively)."""
    from pie_core.device_probe import check_device, resolve_device
    from runners.resolve import plan_and_dtype, runner_options

    device = check_device(resolve_device(args.device))
    plan, dtype = plan_and_dtype(args.plan, args.dtype, device)
    return RunnerSpec(model=args.model, dtype=dtype.dtype, device=device, seed=args.seed,
                      options=runner_options(args, "pie"), plan=plan), dtype


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None  # default: --model as given
    max_queue: int = 1024  # requests waiting for their first token before new ones get 503
    shutdown_grace_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BadInput(f"--port must be in 0..65535, got {self.port}", "e.g. --port 8000 (0 picks a free port)")
        if self.max_queue < 1:
            raise BadInput(f"--max-queue must be at least 1, got {self.max_queue}", "e.g. --max-queue 1024")
        if not self.shutdown_grace_s >= 0:
            raise BadInput(f"--shutdown-grace must be >= 0 seconds, got {self.shutdown_grace_s}", "e.g. --shutdown-grace 30")
        if self.api_key is not None and not self.api_key.strip():
            raise BadInput("--api-key is empty", "give a key, or leave the option out")


def _warm_up(engine: Any, params_cls: Any) -> float:
    """One short untimed request, so one-time costs (kernel builds, first GEMMs) are paid before the URL is printed."""
    began = time.perf_counter()
    prompt = [index % engine.model.shape.vocab_size for index in range(4, 20)]
    engine.add_request("__pie_serve_warmup__", prompt, params_cls(max_tokens=2, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    return time.perf_counter() - began


class PieServer:
    def __init__(self, spec: RunnerSpec, settings: ServeSettings, log: Callable[[str], None]):
        from runners.engine.llm_engine import LLMEngine
        from runners.engine.sampling_params import SamplingParams

        self.spec, self.settings, self.log = spec, settings, log
        prepared = PieRunner().prepare(spec)  # plan, options, weights, memory fit: checked before any work
        self.described = prepared.config
        engine_config, controller = prepared.state
        self.text = ServeText.load(spec.model)
        self.engine = LLMEngine(engine_config)
        try:
            self.warmup_s = _warm_up(self.engine, SamplingParams)
        except BaseException:
            self.engine.close()
            raise
        name = settings.served_model_name or spec.model
        self.model = ServedModel(name=name, root=spec.model, engine_config=self.engine.config,
                                 vocab_size=self.engine.model.shape.vocab_size,
                                 num_device_blocks=self.engine.num_device_blocks, text_description=self.text.description)
        self.metrics = ServeMetrics(name, self.engine.num_device_blocks, self.engine.num_pool_blocks)
        self.app = ServeApp(self.model, self.text, self.metrics, settings.api_key, settings.max_queue, log)
        self.control = pool_control(spec, controller, self.engine.set_pool_limit, time.perf_counter(),
                                    self.engine.scheduler.pool_blocks_needed)
        self.engine_loop = EngineLoop(self.engine, self.metrics, self.control, log)  # run() by the engine's thread
        self.app.engine = self.engine_loop
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.engine_loop.connect(lambda events: loop.call_soon_threadsafe(self.app.deliver, events))
        self._runner = web.AppRunner(self.app.build(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=ABORT_WAIT_S)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await self._site.start()
        except OSError as err:
            await self._runner.cleanup()
            self.engine_loop.stop()
            raise BadInput(f"cannot listen on {self.settings.host}:{self.settings.port}: {err.strerror or err}",
                           "choose another --port (0 picks a free one) or --host") from None
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.settings.host}:{port}"
        return self.url

    async def shutdown(self) -> None:
        self.app.accepting = False
        if self._site is not None:
            await self._site.stop()
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while self.app.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.app.active:
            self.log(f"grace period of {self.settings.shutdown_grace_s:g} s over: aborting {len(self.app.streams)} request(s)")
            for request_id in list(self.app.streams):
                self.engine_loop.abort(request_id, "the server is shutting down; the request was aborted")
            deadline = time.monotonic() + ABORT_WAIT_S
            while self.app.active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if self._runner is not None:
            await self._runner.cleanup()
        self.engine_loop.stop()  # run() returns after the step under way and closes the engine

    def ready_line(self) -> str:
        pool = self.engine.config.num_pool_blocks
        adaptive = " (adaptive)" if self.described.get("adaptive") else ""
        weights = "seeded random weights" if self.described.get("random_weights") else "weights from the model directory"
        return (f"pie serve: ready at {self.url} - model '{self.model.name}' ({weights}, {self.engine.config.dtype} on "
                f"{self.engine.config.device}); device {self.engine.num_device_blocks} blocks, pool {pool} blocks{adaptive}; "
                f"tokens: {self.text.description}; warm-up {self.warmup_s:.1f} s")


def run_server(spec: RunnerSpec, settings: ServeSettings, log: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; returns when everything has stopped.

    The engine is built and stepped here, on the main thread; HTTP runs on a thread of its own. A signal
    sets a flag that the HTTP thread polls; its shutdown stops the engine loop, so `run()` returns here."""
    server = PieServer(spec, settings, log)
    stop_requested = threading.Event()
    failure: list[BaseException] = []

    async def serve_http() -> None:
        try:
            await server.start()
            log(server.ready_line())
            while not stop_requested.is_set():
                await asyncio.sleep(SIGNAL_POLL_S)
            log(f"pie serve: stopping (up to {settings.shutdown_grace_s:g} s for {server.app.active} in-flight request(s))")
            await server.shutdown()
            log("pie serve: stopped")
        except BaseException as err:  # noqa: BLE001 - re-raised on the main thread (a port in use is a BadInput)
            failure.append(err)
        finally:
            server.engine_loop.stop()  # whatever happened here, the main thread's engine loop returns

    previous = {signum: signal.signal(signum, lambda *_: stop_requested.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=asyncio.run, args=(serve_http(),), name="pie-serve-http", daemon=True)
    try:
        http.start()
        with frozen_heap():
            server.engine_loop.run()  # until the HTTP thread's shutdown stops it; closes the engine
        http.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failure:
        raise failure[0]
