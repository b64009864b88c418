"""Settings for the `vllm` runner: options parsed and checked, the model directory, memory peaks.

`VllmSettings.from_spec` turns a `RunnerSpec` and its `options` into vLLM `EngineArgs` keywords,
with one-line errors for unknown or malformed options. `model_directory` gives vLLM something to
load without downloading: a local directory as is, or for a registry name a generated
`config.json` (vLLM then uses its dummy random weights). `process_tree_peak_rss_bytes` sums the
peak resident memory of this process and its children (vLLM's engine core and workers).

Left out: starting vLLM (runners/vllm_runner.py) and any option vLLM has that a benchmark of
one machine does not need (parallelism, LoRA, quantization, speculative decoding).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pie_core.dtypes import canonical_dtype
from pie_core.errors import BadInput
from pie_core.inputs import parse_options
from pie_core.shapes import ModelShape, resolve_model
from pie_core.sizes import GIB
from runners.base import RunnerSpec, peak_host_memory_bytes

KV_SPACE_ENV = "VLLM_CPU_KVCACHE_SPACE"
DEFAULT_CPU_KV_CACHE_SPACE_GIB = 4.0  # vLLM's own CPU default takes most of RAM, too much for a shared host

# option name -> parser; every option is optional
_OPTIONS: dict[str, type] = {"kv_cache_space_gib": float, "gpu_memory_utilization": float, "max_num_seqs": int,
                             "max_model_len": int, "enforce_eager": bool, "block_size": int, "warmup": bool}


@dataclass(frozen=True)
class VllmSettings:
    dtype: str = "bfloat16"
    seed: int = 0
    device: str = "cpu"
    kv_cache_space_gib: float | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    enforce_eager: bool = False
    block_size: int | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.kv_cache_space_gib is not None and not self.kv_cache_space_gib > 0:
            raise BadInput(f"vllm option kv_cache_space_gib must be > 0, got {self.kv_cache_space_gib}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise BadInput(f"vllm option gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
                           "on CPU it is the share of RAM the vLLM worker may use")
        for name in ("max_num_seqs", "max_model_len", "block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"vllm option {name} must be at least 1, got {value}")

    @classmethod
    def from_spec(cls, spec: RunnerSpec, environ: dict[str, str] | None = None) -> "VllmSettings":
        environ = os.environ if environ is None else environ
        options = parse_options("vllm", spec.options, _OPTIONS)
        env_space = environ.get(KV_SPACE_ENV, "").strip()
        if env_space and "kv_cache_space_gib" in options:
            raise BadInput(f"{KV_SPACE_ENV}={env_space} is set and so is kv_cache_space_gib={options['kv_cache_space_gib']}",
                           f"unset {KV_SPACE_ENV} or drop the option; vLLM would silently use the variable")
        if (spec.device == "cpu" and not env_space and "kv_cache_space_gib" not in options
                and "gpu_memory_utilization" not in options):
            options["kv_cache_space_gib"] = DEFAULT_CPU_KV_CACHE_SPACE_GIB
        return cls(dtype=canonical_dtype(spec.dtype), seed=spec.seed, device=spec.device, **options)

    def kv_cache_bytes(self) -> int | None:
        return None if self.kv_cache_space_gib is None else int(self.kv_cache_space_gib * GIB)

    def engine_kwargs(self) -> dict[str, Any]:
        """Keywords for `vllm.EngineArgs` (besides the model and load format)."""
        kwargs: dict[str, Any] = {"dtype": self.dtype, "seed": self.seed, "enforce_eager": self.enforce_eager,
                                  "disable_log_stats": True}
        if self.kv_cache_space_gib is not None:
            kwargs["kv_cache_memory_bytes"] = self.kv_cache_bytes()
        for name in ("gpu_memory_utilization", "max_num_seqs", "max_model_len", "block_size"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def to_config(self) -> dict[str, Any]:
        """The effective settings, for the run record's header."""
        return {**asdict(self), "kv_space_from_env": os.environ.get(KV_SPACE_ENV) or None,
                "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")}


def hf_config_from_shape(shape: ModelShape) -> dict[str, Any]:
    """A Hugging Face config.json for a registry shape, enough for vLLM to build the model."""
    if shape.family == "opt":
        return {"model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": shape.hidden_size,
                "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
                "ffn_dim": shape.intermediate_size, "vocab_size": shape.vocab_size,
                "max_position_embeddings": shape.max_positions,
                "word_embed_proj_dim": shape.word_embed_proj_dim or shape.hidden_size,
                "do_layer_norm_before": shape.do_layer_norm_before, "activation_function": "relu",
                "enable_bias": True, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
                "torch_dtype": "float16"}
    architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    config = {"model_type": shape.family, "architectures": [architecture[shape.family]],
              "hidden_size": shape.hidden_size, "num_hidden_layers": shape.num_layers,
              "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
              "intermediate_size": shape.intermediate_size, "vocab_size": shape.vocab_size,
              "max_position_embeddings": shape.max_positions, "rope_theta": shape.rope_theta,
              "rms_norm_eps": shape.norm_eps, "tie_word_embeddings": shape.tie_word_embeddings,
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    if shape.sliding_window is not None:
        config["sliding_window"] = shape.sliding_window
    return config


def model_directory(model: str, scratch: Path) -> tuple[Path, bool]:
    """(directory vLLM loads, whether it must use dummy weights). Never downloads."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput(f"'{path}' has no config.json", "pass a Hugging Face model directory or a registry name")
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        return path, not has_weights
    shape = resolve_model(model)  # BadInput for unknown names, with suggestions
    (scratch / "config.json").write_text(json.dumps(hf_config_from_shape(shape), indent=2))
    return scratch, True


def _peak_rss_bytes(pid: int) -> int:
    """VmHWM (peak resident set) of one process, 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_tree_peak_rss_bytes() -> int:
    """Sum of peak resident memory of this process and its live children (an upper bound of the
    simultaneous peak). Falls back to this process alone where /proc or psutil is missing."""
    try:
        import psutil

        children = [child.pid for child in psutil.Process().children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil is optional here
        children = []
    own = _peak_rss_bytes(os.getpid()) or peak_host_memory_bytes()
    return own + sum(_peak_rss_bytes(pid) for pid in children)
