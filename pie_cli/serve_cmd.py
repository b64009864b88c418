"""`pie serve`: the Pie engine behind an OpenAI-compatible HTTP server (runners/serve/, docs/serve.md).

Parses the flags; `runners.serve.server.resolve_serve` turns them into the same `RunnerSpec` that `pie
bench --runner pie` gets (`--plan`, `--pool-blocks`, `--device-blocks`, `--adaptive`, `-O` engine options,
`--dtype auto` resolved the same way), and `run_server` runs it with the server's `ServeSettings`. It prints
the URL once the engine is warm and one line per window of engine iterations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pie_cli.bench_cmd import parse_options
from pie_cli.dtype_option import DtypeAutoOpt, announce_dtype
from pie_cli.options import DeviceOpt, ModelOpt, SeedOpt
from pie_cli.output import Output


def serve(
    model: ModelOpt = "opt-125m",
    plan: Annotated[Optional[Path], typer.Option("--plan", help="A `pie tune` plan (its engine settings; adaptive if it says so).")] = None,
    pool_blocks: Annotated[Optional[int], typer.Option("--pool-blocks", help="KV blocks in the CPU pool (overrides the plan).")] = None,
    device_blocks: Annotated[Optional[int], typer.Option("--device-blocks", help="KV blocks on the device (overrides the plan).")] = None,
    adaptive: Annotated[bool, typer.Option("--adaptive", help="Move the pool limit with the live load (within --pool-blocks).")] = False,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-O", help="Engine option KEY=VALUE (repeatable), as for `pie bench`, e.g. -O max_num_seqs=32.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0 picks a free one).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' on /v1/ routes.")] = None,
    served_model_name: Annotated[Optional[str], typer.Option("--served-model-name", help="The model name clients send (default: --model as given).")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting for their first token before new ones get 503.")] = 1024,
    shutdown_grace: Annotated[float, typer.Option("--shutdown-grace", help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")] = 30.0,
    dtype: DtypeAutoOpt = "auto",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Serve the Pie engine over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /metrics).

    Examples:
      pie serve --model opt-125m --port 8000
      pie serve --model DIR --pool-blocks 768 --adaptive --api-key secret
      pie bench --runner openai -O base_url=http://127.0.0.1:8000   # from another shell
    """
    from runners.serve.server import ServeArgs, ServeSettings, resolve_serve, run_server

    out = Output()
    settings = ServeSettings(host=host, port=port, api_key=api_key, served_model_name=served_model_name,
                             max_queue=max_queue, shutdown_grace_s=shutdown_grace)
    spec, resolution = resolve_serve(ServeArgs(
        model=model, plan=plan, pool_blocks=pool_blocks, device_blocks=device_blocks, adaptive=adaptive,
        options=parse_options(option or [], {"plan": str(plan) if plan else None, "num_pool_blocks": pool_blocks,
                                             "num_device_blocks": device_blocks, "adaptive": True if adaptive else None},
                              None), dtype=dtype, device=device, seed=seed))

    def log(line: str) -> None:
        out.messages.print(line, markup=False, highlight=False)

    announce_dtype(out, resolution, spec.device)
    run_server(spec, settings, log)
