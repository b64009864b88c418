"""Model shapes: a registry of known architectures and loading from a Hugging Face config.json.

A `ModelShape` holds the hyper-parameters that decide memory and cost: parameter and weight
bytes, KV bytes per token (and per layer), activation bytes per token. It knows nothing of
weights or torch; the engine builds modules from it and the planner does arithmetic on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pie_core.dtypes import dtype_bytes
from pie_core.errors import BadInput, suggest
from pie_core.model_dir import MISSING, config_value, read_config

FAMILIES = ("opt", "llama", "mistral", "qwen2")


# ModelShape field -> the Hugging Face config.json key it comes from (OPT names some of them differently)
CONFIG_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
               "intermediate_size": "intermediate_size (ffn_dim in OPT)", "max_positions": "max_position_embeddings"}


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str  # one of FAMILIES; mistral and qwen2 share the Llama block structure
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    word_embed_proj_dim: int | None = None  # OPT only; differs from hidden for opt-350m
    do_layer_norm_before: bool = True  # OPT only; False for opt-350m
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v; OPT on every linear
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    sliding_window: int | None = None
    rope_scaling: str | None = None  # e.g. "llama3" for Llama 3.1; the Pie engine does not implement it

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise BadInput(f"model family '{self.family}' is not supported", f"supported: {', '.join(FAMILIES)}")
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size", "max_positions"):
            if getattr(self, field) <= 0:
                key = CONFIG_KEYS.get(field, field)
                raise BadInput(f"{self.name}: {field} must be positive, got {getattr(self, field)}",
                               f"fix '{key}' in the model's config.json (save_pretrained writes a valid one)")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise BadInput(f"{self.name}: hidden_size {self.hidden_size} / num_heads {self.num_heads} / num_kv_heads {self.num_kv_heads} do not divide evenly",
                           "fix the model's config.json: hidden_size must be a multiple of num_attention_heads, and "
                           "num_attention_heads of num_key_value_heads")

    # --- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def is_opt(self) -> bool:
        return self.family == "opt"

    @property
    def kv_dim(self) -> int:
        """Width of K (or V) for one token in one layer: kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    def layer_params(self) -> int:
        h, f, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        if self.is_opt:
            attention = 4 * h * h + 4 * h
            mlp = 2 * h * f + f + h
            norms = 2 * 2 * h
            return attention + mlp + norms
        attention = h * h + 2 * h * kv + h * h + ((h + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * h * f
        norms = 2 * h
        return attention + mlp + norms

    def embedding_params(self) -> int:
        """Token (+ position) embeddings, projections, final norm and an untied lm_head."""
        h, v = self.hidden_size, self.vocab_size
        if self.is_opt:
            proj = self.word_embed_proj_dim or h
            params = v * proj + (self.max_positions + 2) * h
            if proj != h:
                params += 2 * h * proj  # project_in and project_out
            if self.do_layer_norm_before:
                params += 2 * h  # final layer norm
            return params  # OPT ties lm_head to the token embedding
        params = v * h + h
        if not self.tie_word_embeddings:
            params += v * h
        return params

    def num_params(self) -> int:
        return self.embedding_params() + self.num_layers * self.layer_params()

    def weight_bytes(self, dtype: str = "float16") -> int:
        return self.num_params() * dtype_bytes(dtype)

    def layer_weight_bytes(self, dtype: str = "float16") -> int:
        return self.layer_params() * dtype_bytes(dtype)

    def kv_bytes_per_token_per_layer(self, dtype: str = "float16") -> int:
        return 2 * self.kv_dim * dtype_bytes(dtype)

    def kv_bytes_per_token(self, dtype: str = "float16") -> int:
        """2 * layers * kv_heads * head_dim * bytes per element."""
        return self.num_layers * self.kv_bytes_per_token_per_layer(dtype)

    def activation_bytes_per_token_per_layer(self, dtype: str = "float16") -> int:
        """A layer's input activation for one token (what the KVPR rebuild path keeps)."""
        return self.hidden_size * dtype_bytes(dtype)

    def activation_bytes_per_token(self, dtype: str = "float16") -> int:
        return self.num_layers * self.activation_bytes_per_token_per_layer(dtype)

    @property
    def rebuild_saves_bytes(self) -> bool:
        """Rebuilding K/V from activations moves fewer bytes only when h < 2 * kv_heads * head_dim."""
        return self.hidden_size < 2 * self.kv_dim

    def layer_flops_per_token(self) -> int:
        """Dense matmul FLOPs of one layer for one token (2 per multiply-add), attention excluded."""
        return 2 * (self.layer_params() - (4 * self.hidden_size if self.is_opt else 2 * self.hidden_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _opt(name: str, h: int, layers: int, heads: int, proj: int | None = None, pre_norm: bool = True) -> ModelShape:
    return ModelShape(name=name, family="opt", hidden_size=h, num_layers=layers, num_heads=heads,
                      num_kv_heads=heads, intermediate_size=4 * h, vocab_size=50272, max_positions=2048,
                      word_embed_proj_dim=proj or h, do_layer_norm_before=pre_norm, tie_word_embeddings=True)


def _llama(name: str, h: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, positions: int,
           family: str = "llama", **extra) -> ModelShape:
    return ModelShape(name=name, family=family, hidden_size=h, num_layers=layers, num_heads=heads,
                      num_kv_heads=kv, intermediate_size=ffn, vocab_size=vocab, max_positions=positions, **extra)


REGISTRY: dict[str, ModelShape] = {s.name: s for s in [
    _opt("opt-125m", 768, 12, 12),
    _opt("opt-350m", 1024, 24, 16, proj=512, pre_norm=False),
    _opt("opt-1.3b", 2048, 24, 32),
    _opt("opt-2.7b", 2560, 32, 32),
    _opt("opt-6.7b", 4096, 32, 32),
    _opt("opt-13b", 5120, 40, 40),
    _opt("opt-30b", 7168, 48, 56),
    _opt("opt-66b", 9216, 64, 72),
    _llama("llama-2-7b", 4096, 32, 32, 32, 11008, 32000, 4096, norm_eps=1e-5),
    _llama("llama-2-13b", 5120, 40, 40, 40, 13824, 32000, 4096, norm_eps=1e-5),
    _llama("llama-2-70b", 8192, 80, 64, 8, 28672, 32000, 4096, norm_eps=1e-5),
    _llama("llama-3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, rope_theta=500000.0),
    _llama("llama-3-70b", 8192, 80, 64, 8, 28672, 128256, 8192, rope_theta=500000.0),
    _llama("llama-3.1-8b", 4096, 32, 32, 8, 14336, 128256, 131072, rope_theta=500000.0, rope_scaling="llama3"),
    _llama("llama-3.1-70b", 8192, 80, 64, 8, 28672, 128256, 131072, rope_theta=500000.0, rope_scaling="llama3"),
    _llama("mistral-7b", 4096, 32, 32, 8, 14336, 32000, 32768, family="mistral", sliding_window=4096),
    _llama("qwen2.5-7b", 3584, 28, 28, 4, 18944, 152064, 32768, family="qwen2", qkv_bias=True,
           rope_theta=1000000.0, norm_eps=1e-6),
]}


def shape_from_hf_config(config: dict, name: str) -> ModelShape:
    """Build a shape from a Hugging Face config.json dictionary (each field of its declared kind)."""
    def value(key: str, kind: type, default=MISSING):
        return config_value(config, key, kind, name, default)

    model_type = value("model_type", str, "")
    if model_type == "opt":
        h = value("hidden_size", int)
        return ModelShape(
            name=name, family="opt", hidden_size=h, num_layers=value("num_hidden_layers", int),
            num_heads=value("num_attention_heads", int), num_kv_heads=value("num_attention_heads", int),
            intermediate_size=value("ffn_dim", int, 4 * h), vocab_size=value("vocab_size", int),
            max_positions=value("max_position_embeddings", int, 2048),
            word_embed_proj_dim=value("word_embed_proj_dim", int, h),
            do_layer_norm_before=value("do_layer_norm_before", bool, True), tie_word_embeddings=True)
    if model_type in ("llama", "mistral", "qwen2"):
        heads = value("num_attention_heads", int)
        windowed = value("use_sliding_window", bool, model_type == "mistral")
        return ModelShape(
            name=name, family=model_type, hidden_size=value("hidden_size", int),
            num_layers=value("num_hidden_layers", int), num_heads=heads,
            num_kv_heads=value("num_key_value_heads", int, heads),
            intermediate_size=value("intermediate_size", int), vocab_size=value("vocab_size", int),
            max_positions=value("max_position_embeddings", int, 4096),
            tie_word_embeddings=value("tie_word_embeddings", bool, False),
            qkv_bias=model_type == "qwen2" or value("attention_bias", bool, False),
            rope_theta=value("rope_theta", float, 10000.0), norm_eps=value("rms_norm_eps", float, 1e-5),
            sliding_window=value("sliding_window", int, None) if windowed else None,
            rope_scaling=_rope_scaling_type(value("rope_scaling", dict, None)))
    raise BadInput(f"{name}: model_type '{model_type}' is not supported",
                   "supported: opt, llama, mistral, qwen2")


def _rope_scaling_type(rope_scaling: dict | None) -> str | None:
    if not rope_scaling:
        return None
    return str(rope_scaling.get("rope_type") or rope_scaling.get("type") or "unknown")


def load_shape_from_dir(path: Path) -> ModelShape:
    return shape_from_hf_config(read_config(path), name=str(path))


def resolve_model(name_or_path: str) -> ModelShape:
    """A registry name ('opt-30b', case-insensitive, 'facebook/' prefixes allowed) or a local directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_shape_from_dir(path)
    key = name_or_path.strip().lower().split("/")[-1]
    key = key.replace("meta-llama-", "llama-").replace("-hf", "").replace("-v0.1", "")
    if key in REGISTRY:
        return REGISTRY[key]
    if "/" in name_or_path or path.suffix or name_or_path.startswith("."):
        raise BadInput(f"model directory '{name_or_path}' does not exist", "give an existing local Hugging Face directory or a registry name (see `pie models`)")
    raise BadInput(f"unknown model '{name_or_path}'", suggest(key, REGISTRY))
