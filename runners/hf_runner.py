"""The `hf` runner: Hugging Face `transformers` generate, the reference the Pie engine is checked against.

Requests are served in static batches through the one request loop (runners/request_loop.py):
whatever has been released (up to `batch_size`, default `max_concurrency` or 16) is left-padded
and generated greedily for the longest output in the batch, with EOS disabled so every request
gets exactly its `output_len` tokens (after one untimed two-token warm-up). Token timestamps
come from a stopping criterion called after each generated token; a batch's tokens share those
times, and TTFT counts from release as for every runner. A local directory with safetensors is loaded as is; a registry
name (or a directory without weights) gets the engine loader's seeded random weights, mapped
to transformers' parameter names, so `pie` and `hf` run the same model for the same seed.

Left out: continuous batching (that is what the engine is for), sampling other than greedy.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import OptionType, parse_options
from pie_core.shapes import ModelShape, resolve_model
from runners.base import (
    BenchRequest,
    PreparedRun,
    RequestDone,
    RunnerResult,
    RunnerSpec,
    machine_fingerprint,
    peak_host_memory_bytes,
)
from runners.request_loop import TokenDelta, drive_engine

DEFAULT_BATCH_SIZE = 16
OPTIONS = {"batch_size": OptionType(int, minimum=1, example="16")}  # declared types (pie_core/inputs.py)


def hf_config_from_shape(shape: ModelShape) -> Any:
    import transformers

    if shape.is_opt:
        return transformers.OPTConfig(
            vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
            ffn_dim=shape.intermediate_size, num_attention_heads=shape.num_heads,
            max_position_embeddings=shape.max_positions, word_embed_proj_dim=shape.word_embed_proj_dim or shape.hidden_size,
            do_layer_norm_before=shape.do_layer_norm_before, enable_bias=True, tie_word_embeddings=True)
    common = dict(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                  intermediate_size=shape.intermediate_size, num_attention_heads=shape.num_heads,
                  num_key_value_heads=shape.num_kv_heads, max_position_embeddings=shape.max_positions,
                  rms_norm_eps=shape.norm_eps, rope_theta=shape.rope_theta, tie_word_embeddings=shape.tie_word_embeddings)
    if shape.family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    if shape.family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=shape.sliding_window)
    return transformers.LlamaConfig(**common, attention_bias=shape.qkv_bias)


def load_hf_model(model: str, dtype: str, device: str, seed: int) -> tuple[Any, bool]:
    """(transformers model in eval mode, whether its weights are seeded random)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from runners.engine import loader

    transformers.utils.logging.disable_progress_bar()  # stderr belongs to pie's own progress display
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device '{device}' asked for, but CUDA is not available", "use --device cpu")
    shape = resolve_model(model)
    path = Path(model).expanduser()
    target = loader.torch_dtype(dtype)
    if path.is_dir() and loader.has_weights(path):
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=target, local_files_only=True)
        return hf_model.to(device).eval(), False
    config = AutoConfig.from_pretrained(str(path), local_files_only=True) if path.is_dir() else hf_config_from_shape(shape)
    with no_init_weights():
        hf_model = AutoModelForCausalLM.from_config(config)
    weights = loader.random_weights(shape, dtype, "cpu", seed)
    parameters = dict(hf_model.named_parameters())
    with torch.no_grad():
        for hf_name, parameter in parameters.items():
            name = loader.canonical_name(hf_name)
            if name == "lm_head.weight" and name not in weights:  # tied: tie_weights() below points it at the embedding
                continue
            if name not in weights:
                raise BadInput(f"{model}: no seeded weight for transformers parameter {hf_name}",
                               "this model family's parameter names are not mapped")
            parameter.data = weights[name].clone()
    hf_model.tie_weights()
    if "lm_head.weight" not in weights and hf_model.get_output_embeddings().weight is not hf_model.get_input_embeddings().weight:
        hf_model.get_output_embeddings().weight = hf_model.get_input_embeddings().weight
    return hf_model.to(device=device, dtype=target).eval(), True


class _TokenClock:
    """A stopping criterion that never stops: it records when each generated token appeared."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if input_ids.is_cuda:
            torch.cuda.synchronize(input_ids.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFRunner:
    name = "hf"

    def prepare(self, spec: RunnerSpec) -> PreparedRun:
        options = parse_options("hf runner", spec.options, OPTIONS)
        batch_size = options.get("batch_size") or spec.max_concurrency or DEFAULT_BATCH_SIZE
        if spec.max_concurrency is not None:
            batch_size = min(batch_size, spec.max_concurrency)
        path = Path(spec.model).expanduser()
        from runners.engine.loader import check_weights, has_weights

        if path.is_dir() and has_weights(path):
            check_weights(resolve_model(spec.model), path)  # a corrupt file fails here, before any record
        config = {"model": spec.model, "dtype": spec.dtype, "device": spec.device, "seed": spec.seed,
                  "batch_size": batch_size, "random_weights": not (path.is_dir() and has_weights(path)),
                  "decoding": "greedy, eos disabled, static left-padded batches"}
        return PreparedRun(spec, config, machine_fingerprint(spec.device))

    def run(self, prepared: PreparedRun, requests: Sequence[BenchRequest], on_request_done: RequestDone) -> RunnerResult:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        spec, config = prepared.spec, prepared.config
        hf_model, _ = load_hf_model(spec.model, spec.dtype, spec.device, spec.seed)
        pad_id = hf_model.config.pad_token_id if hf_model.config.pad_token_id is not None else 0
        hf_model.generation_config.eos_token_id = None
        device = torch.device(spec.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warmup_s = self._warm_up(hf_model, requests, pad_id, device, GenerationConfig)
        backend = _HFStepEngine(hf_model, config["batch_size"], pad_id, device, GenerationConfig, StoppingCriteriaList)
        driven = drive_engine(backend, requests, spec.max_concurrency, spec.save_outputs, on_request_done,
                              hold_for_arrivals=spec.precise_arrivals)
        peak_device = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        return RunnerResult(duration_s=driven.duration_s, config=config,
                            telemetry={"num_batches": driven.num_steps, "warmup_s": warmup_s},
                            peak_device_memory_bytes=peak_device, peak_host_memory_bytes=peak_host_memory_bytes())

    @staticmethod
    def _warm_up(hf_model: Any, requests: Sequence[BenchRequest], pad_id: int, device: Any, generation_config_cls: Any) -> float:
        """Two untimed tokens for the first prompt, so one-time start-up costs stay out of the timings."""
        import torch

        if not requests:
            return 0.0
        began = time.perf_counter()
        ids = torch.tensor([list(requests[0].prompt_token_ids)], device=device)
        with torch.no_grad():
            hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              generation_config=generation_config_cls(do_sample=False, max_new_tokens=2, eos_token_id=None,
                                                                      pad_token_id=pad_id))
        return time.perf_counter() - began


class _HFStepEngine:
    """`transformers.generate` behind `runners.request_loop.StepEngine`: each step is one static,
    left-padded batch of up to `batch_size` requests that have been released, run to the longest
    output; every token is stamped as `generate` makes it (a stopping-criteria callback)."""

    name = "hf"

    def __init__(self, hf_model: Any, batch_size: int, pad_id: int, device: Any, generation_config_cls: Any,
                 criteria_cls: Any):
        self.hf_model, self.batch_size, self.pad_id, self.device = hf_model, batch_size, pad_id, device
        self.generation_config_cls, self.criteria_cls = generation_config_cls, criteria_cls
        self.queue: deque[BenchRequest] = deque()

    def add(self, request: BenchRequest) -> None:
        self.queue.append(request)

    def step(self) -> list[TokenDelta]:
        import torch

        batch = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
        width = max(r.prompt_len for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):  # left padding
            input_ids[row, width - request.prompt_len:] = torch.tensor(request.prompt_token_ids)
            attention_mask[row, width - request.prompt_len:] = 1
        clock = _TokenClock()
        settings = self.generation_config_cls(do_sample=False, max_new_tokens=max(r.output_len for r in batch),
                                              eos_token_id=None, pad_token_id=self.pad_id)
        try:
            with torch.no_grad():
                generated = self.hf_model.generate(input_ids=input_ids.to(self.device),
                                                   attention_mask=attention_mask.to(self.device),
                                                   generation_config=settings, stopping_criteria=self.criteria_cls([clock]))
        except (RuntimeError, ValueError) as err:
            return [TokenDelta(r.request_id, (), True, error=f"{type(err).__name__}: {err}") for r in batch]
        new_tokens = generated[:, width:].tolist()
        return [TokenDelta(r.request_id, new_tokens[row][:r.output_len], True, clock.times[:r.output_len])
                for row, r in enumerate(batch)]
