"""Weights for the engine's models: local Hugging Face safetensors, or seeded random weights.

One table, `expected_tensors(shape, num_layers)`, names every tensor a model family needs
and its shape; both paths below fill that table, so a model file never sees where its
weights came from. Names are the Hugging Face names with the wrapper prefix removed
(`model.decoder.`, `decoder.`, `model.`): `layers.0.self_attn.q_proj.weight`, `embed_tokens.weight`.

- `check_weights` reads only the `*.safetensors` headers (pie_core/model_dir.py) and raises `BadInput`
  for a corrupt or truncated file, a tensor of the wrong shape or missing tensors, before anything
  is loaded (runners call it before a record is opened); `load_weights` checks the same way, then
  reads the tensors, maps names and casts to the engine dtype. Tied embeddings: OPT always
  reads its logits through `embed_tokens`; Llama-family models without `lm_head.weight` in the
  files must say `tie_word_embeddings` in their config.
- `random_weights` draws N(0, 0.02) matrices, zero biases and unit norm weights from one
  `torch.Generator(seed)`, tensor by tensor in table order, so a seed means the same model.

Left out: `.bin` (pickle) checkpoints, sharded-index validation beyond "every file is read",
quantised weights, and rope scaling (Llama 3.1 long-context scaling is not applied).
"""
from __future__ import annotations

from pathlib import Path

import torch

from pie_core.errors import BadInput
from pie_core.model_dir import safetensors_index
from pie_core.shapes import ModelShape

_PREFIXES = ("model.decoder.", "decoder.", "model.")


def torch_dtype(name: str) -> torch.dtype:
    from pie_core.dtypes import canonical_dtype

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[canonical_dtype(name)]


def _opt_tensors(shape: ModelShape, num_layers: int) -> dict[str, tuple[int, ...]]:
    h, f, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    proj = shape.word_embed_proj_dim or h
    table: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, proj), "embed_positions.weight": (shape.max_positions + 2, h)}
    if proj != h:
        table["project_in.weight"] = (h, proj)
        table["project_out.weight"] = (proj, h)
    if shape.do_layer_norm_before:
        table["final_layer_norm.weight"] = (h,)
        table["final_layer_norm.bias"] = (h,)
    for i in range(num_layers):
        p = f"layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            table[f"{p}self_attn.{name}.weight"] = (h, h)
            table[f"{p}self_attn.{name}.bias"] = (h,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            table[f"{p}{norm}.weight"] = (h,)
            table[f"{p}{norm}.bias"] = (h,)
        table[f"{p}fc1.weight"], table[f"{p}fc1.bias"] = (f, h), (f,)
        table[f"{p}fc2.weight"], table[f"{p}fc2.bias"] = (h, f), (h,)
    return table


def _llama_tensors(shape: ModelShape, num_layers: int) -> dict[str, tuple[int, ...]]:
    h, f, v, kv = shape.hidden_size, shape.intermediate_size, shape.vocab_size, shape.kv_dim
    table: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, h), "norm.weight": (h,)}
    if not shape.tie_word_embeddings:
        table["lm_head.weight"] = (v, h)
    for i in range(num_layers):
        p = f"layers.{i}."
        for name, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            table[f"{p}self_attn.{name}.weight"] = (rows, h)
            if shape.qkv_bias and name != "o_proj":
                table[f"{p}self_attn.{name}.bias"] = (rows,)
        table[f"{p}mlp.gate_proj.weight"] = (f, h)
        table[f"{p}mlp.up_proj.weight"] = (f, h)
        table[f"{p}mlp.down_proj.weight"] = (h, f)
        table[f"{p}input_layernorm.weight"] = (h,)
        table[f"{p}post_attention_layernorm.weight"] = (h,)
    return table


def expected_tensors(shape: ModelShape, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, by canonical name, with its shape (first `num_layers` layers)."""
    layers = shape.num_layers if num_layers is None else num_layers
    if not 1 <= layers <= shape.num_layers:
        raise BadInput(f"num_layers must be in 1..{shape.num_layers} for {shape.name}, got {layers}")
    return _opt_tensors(shape, layers) if shape.is_opt else _llama_tensors(shape, layers)


def canonical_name(hf_name: str) -> str:
    """'model.decoder.layers.0.fc1.weight' -> 'layers.0.fc1.weight'; 'lm_head.weight' stays."""
    for prefix in _PREFIXES:
        if hf_name.startswith(prefix):
            return hf_name[len(prefix):]
    return hf_name


def has_weights(directory: Path) -> bool:
    return Path(directory).is_dir() and any(Path(directory).glob("*.safetensors"))


def check_weights(shape: ModelShape, directory: Path, num_layers: int | None = None) -> dict[str, tuple[str, Path]]:
    """Canonical name -> (stored name, file) of every tensor the model needs, from the files' headers alone."""
    directory = Path(directory)
    index = safetensors_index(directory)
    if not index:
        raise BadInput(f"'{directory}' has no *.safetensors files", "save the model with save_pretrained(safe_serialization=True), or run with random weights")
    table = expected_tensors(shape, num_layers)
    found: dict[str, tuple[str, Path]] = {}
    for hf_name, entry in index.items():
        name = canonical_name(hf_name)
        if name not in table or name in found:
            continue
        if entry.shape != table[name]:
            raise BadInput(f"{entry.file.name}: tensor {hf_name} has shape {entry.shape}, expected {table[name]}",
                           "does config.json match the weights?")
        found[name] = (hf_name, entry.file)
    missing = [name for name in table if name not in found]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise BadInput(f"'{directory}' lacks {len(missing)} tensor(s): {shown}",
                       "is the checkpoint complete and of the family config.json names?")
    return found


def load_weights(shape: ModelShape, directory: Path, dtype: str, device: str,
                 num_layers: int | None = None) -> dict[str, torch.Tensor]:
    """Read the tensors of `expected_tensors` from `directory/*.safetensors` (checked first), cast and move them."""
    from safetensors import SafetensorError, safe_open

    target = torch_dtype(dtype)
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, (hf_name, path) in check_weights(shape, directory, num_layers).items():
        by_file.setdefault(path, []).append((name, hf_name))
    weights: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name, hf_name in names:
                    weights[name] = handle.get_tensor(hf_name).to(device=device, dtype=target)
        except SafetensorError as err:
            raise BadInput(f"cannot read '{path}': {err}", "re-save the model with save_pretrained(safe_serialization=True)") from None
    return weights


def random_weights(shape: ModelShape, dtype: str, device: str, seed: int = 0,
                   num_layers: int | None = None) -> dict[str, torch.Tensor]:
    """Seeded random weights of the registry shape: N(0, 0.02) matrices, zero biases, unit norms."""
    generator = torch.Generator().manual_seed(seed)
    target = torch_dtype(dtype)
    weights: dict[str, torch.Tensor] = {}
    for name, size in expected_tensors(shape, num_layers).items():
        is_norm = "norm" in name
        if name.endswith(".bias"):
            tensor = torch.zeros(size, dtype=target)
        elif is_norm:
            tensor = torch.ones(size, dtype=target)
        else:  # drawn in the target dtype: no fp32 copy of a 1-GB embedding on the way
            tensor = torch.empty(size, dtype=target).normal_(0.0, 0.02, generator=generator)
        weights[name] = tensor.to(device=device)
    return weights
