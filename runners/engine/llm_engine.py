"""`LLMEngine`: requests in, tokens out, one scheduler iteration per `step()`.

Builds the model (local safetensors, or seeded random weights labelled as such) and an
`EngineCore` (engine_core.py: cache layout with staging charged against the device budget, block
manager, scheduler, finish rule, `IterationStats`) whose executor is a `ModelRunner` over the KV
storage; each `step()` is one core iteration (schedule -> execute -> commit -> finish -> stats),
and this class keeps the requests' outputs. Requests that cannot ever run (prompt
longer than the context, or than what the budgets can hold) are refused at `add_request`
with `BadInput`; in `generate` such a request comes back with finish_reason "error" and the
others run on.

A request's bookkeeping (its `Sequence` and `RequestOutput`) lives only while it is unfinished:
the `step()` that returns its final output drops it (the caller holds that output), so a long
closed loop keeps state for the requests in flight only, and a finished request's id may be
used again (an aborted request keeps only its output, see `abort_request`). Nothing per token
touches the file system (the shape and the EOS ids are read at construction). `stats` keeps
one `IterationStats` per iteration for the engine's lifetime.

Left out: detokenisation (token ids only), streaming callbacks, async serving, LoRA.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from pie_core.capability import DeviceCapability
from pie_core.errors import BadInput
from runners.engine import loader
from runners.engine.config import EngineConfig, check_request
from runners.engine.engine_core import EngineCore
from runners.engine.kernels import OWN_GEMMS, resolve_kernels
from runners.engine.kv_cache import KVCache
from runners.engine.model_runner import ModelRunner
from runners.engine.models import build_model
from runners.engine.models.linear import amx_refusals
from runners.engine.outputs import IterationStats, RequestOutput
from runners.engine.sampler import make_generator
from runners.engine.sampling_params import SamplingParams
from runners.engine.sequence import Sequence
from runners.engine.triton_smoke import AttentionGeometry


def _weights_dir(config: EngineConfig) -> Path | None:
    path = Path(config.model).expanduser()
    found = path.is_dir() and loader.has_weights(path)
    if config.random_weights is True:
        return None
    if config.random_weights is False and not found:
        raise BadInput(f"'{config.model}' has no *.safetensors weights", "pass a model directory, or allow random weights")
    return path if found else None


def _eos_token_ids(config: EngineConfig) -> set[int]:
    path = Path(config.model).expanduser() / "config.json"
    if not path.is_file():
        return set()
    value = json.loads(path.read_text()).get("eos_token_id")
    return set(value) if isinstance(value, list) else ({value} if isinstance(value, int) else set())


class LLMEngine:
    def __init__(self, config: EngineConfig, capability: DeviceCapability | None = None):
        """`capability`: the device record kernels are chosen from (default: this machine's, detected)."""
        self.config = config
        shape = config.shape
        self.kernels = resolve_kernels(config.device, config.dtype, capability, config.decode_kernel, config.prepack,
                                       geometry=AttentionGeometry.of(shape, config.dtype, config.block_size))
        self.model = build_model(shape, config.dtype, config.device, seed=config.seed, weights_dir=_weights_dir(config),
                                 prepack=self.kernels.prepack)
        refused = getattr(self.model.lm_head, "fallback", None)
        if self.kernels.linear in OWN_GEMMS:  # weights its layout does not take went to oneDNN (or plain): say which
            self.kernels = dataclasses.replace(self.kernels, fallbacks=(*self.kernels.fallbacks, *amx_refusals(self.model)))
        elif refused:  # the trial reorder passed but a real weight's did not: say so, run on plain GEMMs
            self.kernels = dataclasses.replace(self.kernels, linear="torch-linear",
                                               fallbacks=(*self.kernels.fallbacks, f"{refused}; plain GEMMs"))
        self.core = EngineCore(config, self._model_runner, _eos_token_ids(config))
        self.layout, self.block_manager, self.scheduler = self.core.layout, self.core.block_manager, self.core.scheduler
        self.stats: list[IterationStats] = self.core.stats
        self.eos_token_ids = self.core.eos_token_ids
        pageable = self.cache.pageable + (self.runner.prefetcher.pageable if self.runner.prefetcher else ())
        if pageable:  # host memory the driver would not page-lock: said where fallbacks are said
            self.kernels = dataclasses.replace(self.kernels, fallbacks=(*self.kernels.fallbacks, *pageable))
        self._sequences: dict[str, Sequence] = {}
        self._outputs: dict[str, RequestOutput] = {}
        self._order = itertools.count()
        self._generate_calls = itertools.count()
        self.closed = False

    def _model_runner(self, core: EngineCore) -> ModelRunner:
        """The core's executor: the KV storage for its layout and the forward pass on real tensors."""
        self.cache = KVCache(core.layout, self.config.shape, self.model.dtype, torch.device(self.config.device))
        self.runner = ModelRunner(self.model, self.cache, core.layout, self.config.copy_worker, self.kernels.decode_variant,
                                  self.kernels.prefill_variant)
        return self.runner

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the prefetcher's copy thread and release the model, the device KV cache and the host pool.

        Unfinished requests are aborted. Idempotent; a closed engine refuses new requests and steps.
        `with LLMEngine(config) as engine:` closes it on the way out.
        """
        if self.closed:
            return
        self.closed = True
        for request_id in list(self._sequences):
            self.abort_request(request_id)
        self.runner.close()
        self.runner = self.cache = self.model = self.core.executor = None
        if torch.device(self.config.device).type == "cuda":
            torch.cuda.empty_cache()  # hand the cache's blocks back to the driver, not only to torch's allocator

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this engine is closed; build a new LLMEngine")

    # --- properties and knobs ----------------------------------------------------------------
    @property
    def num_device_blocks(self) -> int:
        """Resident device KV blocks (the config's budget less the staging charge)."""
        return self.layout.num_device_blocks

    @property
    def num_pool_blocks(self) -> int:
        return self.layout.num_pool_blocks

    @property
    def pool_limit_blocks(self) -> int:
        return self.block_manager.pool_limit_blocks

    def set_pool_limit(self, num_blocks: int) -> None:
        """Cap pool use; takes effect at the next step (blocks move back or sequences are preempted)."""
        self.core.set_pool_limit(num_blocks)

    def check_invariants(self) -> None:
        live = self.scheduler.running + list(self.scheduler.waiting)
        self.block_manager.check_invariants(live)
        assert {seq.request_id for seq in live} == set(self._sequences), \
            f"engine holds {sorted(self._sequences)} but the scheduler {sorted(seq.request_id for seq in live)}"
        assert all(self._outputs[request_id].finish_reason == "abort" or request_id in self._sequences
                   for request_id in self._outputs), "a finished request's output is still held"

    # --- requests ----------------------------------------------------------------------------
    def _validate(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        if request_id in self._sequences:
            raise BadInput(f"request id '{request_id}' is already in use")
        check_request(request_id, prompt, params.max_tokens, self.config, self.config.shape.vocab_size,
                      self.layout.num_device_blocks)

    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        self._check_open()
        prompt = [int(token) for token in prompt_token_ids]
        self._validate(request_id, prompt, sampling_params)
        order = next(self._order)
        arrival = time.perf_counter() if arrival_time is None else arrival_time
        seq = Sequence(request_id, prompt, sampling_params, arrival, order)
        seq.generator = make_generator(sampling_params, fallback_seed=self.config.seed * 1_000_003 + order)
        self._sequences[request_id] = seq
        self._outputs[request_id] = RequestOutput(request_id=request_id, prompt_token_ids=prompt, arrival_time=arrival)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop an unfinished request and free its blocks; returns its output (finish_reason "abort"),
        None for an unknown or finished id. `step()` never returns an aborted request, so its output
        stays in `_outputs` (its `Sequence` is dropped) until the id is used again."""
        seq = self._sequences.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        output = self._outputs[request_id]
        output.finished, output.finish_reason = True, "abort"
        return output

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # --- the loop ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One iteration of the engine core; the outputs of the requests it advanced (finished ones for the last time)."""
        self._check_open()
        scheduled, committed = self.core.step()
        changed = []
        for seq, _token, reason in committed:
            output = self._outputs[seq.request_id]
            output.output_token_ids = list(seq.output_token_ids)
            output.first_token_time, output.token_times = seq.first_token_time, seq.token_times
            output.num_preemptions = seq.num_preemptions
            if reason is not None:
                output.finished, output.finish_reason = True, reason
                del self._sequences[seq.request_id], self._outputs[seq.request_id]  # returned below, never again
            changed.append(output)
        for seq in scheduled.preempted:
            self._outputs[seq.request_id].num_preemptions = seq.num_preemptions
        return changed

    def generate(self, prompts: list[list[int]], sampling_params: SamplingParams | list[SamplingParams]) -> list[RequestOutput]:
        """Run prompts to completion; a refused prompt returns finish_reason 'error' with `error` set."""
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise BadInput(f"{len(prompts)} prompts but {len(params)} sampling params", "give one per prompt, or one for all")
        prefix = f"gen{next(self._generate_calls)}-"
        outputs: list[RequestOutput] = []
        for index, (prompt, request_params) in enumerate(zip(prompts, params)):
            request_id = f"{prefix}{index}"
            try:
                self.add_request(request_id, prompt, request_params)
                outputs.append(self._outputs[request_id])
            except BadInput as err:
                outputs.append(RequestOutput(request_id=request_id, prompt_token_ids=list(prompt), finished=True,
                                             finish_reason="error", arrival_time=time.perf_counter(), error=err.one_line()))
        while self.has_unfinished_requests():
            self.step()
        return outputs
