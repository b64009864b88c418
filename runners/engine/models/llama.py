"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) as small free functions over a dict of weights.

RMSNorm (computed in fp32, as Hugging Face does), rotary embeddings in the rotate-half
convention, grouped-query attention (Hkv <= Hq), SwiGLU MLP, optional q/k/v biases (Qwen2),
tied or separate lm_head. q/k/v and gate/up are fused into one GEMM each at build time, and
every GEMM goes through `Linear` (models/linear.py: weights prepacked for oneDNN on the CPU).
The attention is a callback the engine supplies, so K arrives at the cache already rotated.
The RoPE tables of a step's positions are computed once (`prepare_positions`) and reused by every
layer; a plain positions tensor still works (computed per call).

Left out: rope scaling (Llama 3.1 long context), Mistral's sliding window (the kernels do not
mask it), Qwen2's sliding-window layers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pie_core.shapes import ModelShape
from runners.engine.models.common import Attention, init_common
from runners.engine.models.linear import Linear


@dataclass(frozen=True)
class LlamaLayer:
    qkv: Linear  # [h + 2 * kv_dim, h], bias for Qwen2
    o: Linear
    gate_up: Linear  # [2 * ffn, h]
    down: Linear
    input_norm_weight: torch.Tensor
    post_norm_weight: torch.Tensor


def layer_from_weights(weights: dict[str, torch.Tensor], index: int, qkv_bias: bool, prepack: bool | str | None = None) -> LlamaLayer:
    linear = functools.partial(Linear, prepack=prepack)
    p = f"layers.{index}."
    attn = p + "self_attn."
    return LlamaLayer(
        qkv=linear(torch.cat([weights[f"{attn}{n}_proj.weight"] for n in "qkv"]),
                   torch.cat([weights[f"{attn}{n}_proj.bias"] for n in "qkv"]) if qkv_bias else None),
        o=linear(weights[attn + "o_proj.weight"]),
        gate_up=linear(torch.cat([weights[p + "mlp.gate_proj.weight"], weights[p + "mlp.up_proj.weight"]])),
        down=linear(weights[p + "mlp.down_proj.weight"]),
        input_norm_weight=weights[p + "input_layernorm.weight"],
        post_norm_weight=weights[p + "post_attention_layernorm.weight"])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, 1, dh] for 0-based positions (fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


@dataclass(frozen=True)
class RotaryPositions:
    """A step's positions with their cos/sin tables, computed once (`LlamaModel.prepare_positions`) for every layer."""

    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def _cos_sin(positions: torch.Tensor | RotaryPositions, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(positions, RotaryPositions):
        return positions.cos, positions.sin
    return rope_cos_sin(positions, shape.head_dim, shape.rope_theta)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def project_qkv(layer: LlamaLayer, shape: ModelShape, x: torch.Tensor, positions: torch.Tensor | RotaryPositions):
    """Normed input -> q[T, Hq, dh], k[T, Hkv, dh] (both rotated), v[T, Hkv, dh]."""
    tokens, head_dim = x.shape[0], shape.head_dim
    q, k, v = layer.qkv(x).split([shape.hidden_size, shape.kv_dim, shape.kv_dim], dim=-1)
    cos, sin = _cos_sin(positions, shape)
    q = apply_rope(q.reshape(tokens, shape.num_heads, head_dim), cos, sin)
    k = apply_rope(k.reshape(tokens, shape.num_kv_heads, head_dim), cos, sin)
    return q, k, v.reshape(tokens, shape.num_kv_heads, head_dim)


def layer_forward(layer: LlamaLayer, shape: ModelShape, index: int, hidden: torch.Tensor,
                  positions: torch.Tensor, attention: Attention, rows: torch.Tensor | None = None) -> torch.Tensor:
    q, k, v = project_qkv(layer, shape, rms_norm(hidden, layer.input_norm_weight, shape.norm_eps), positions)
    out = attention(index, q, k, v).reshape(hidden.shape[0], shape.hidden_size)
    if rows is not None:  # only these rows go on (the step's last layer)
        hidden, out = hidden[rows], out[rows]
    hidden = hidden + layer.o(out)
    gate, up = layer.gate_up(rms_norm(hidden, layer.post_norm_weight, shape.norm_eps)).chunk(2, dim=-1)
    return hidden + layer.down(F.silu(gate) * up)


def layer_kv_from_input(layer: LlamaLayer, shape: ModelShape, layer_input: torch.Tensor,
                        positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K (rotated) and V of a layer recomputed from its stored input activations."""
    tokens, head_dim, h, kv = layer_input.shape[0], shape.head_dim, shape.hidden_size, shape.kv_dim
    x = rms_norm(layer_input, layer.input_norm_weight, shape.norm_eps)
    k, v = layer.qkv(x)[:, h:].split(kv, dim=-1)  # the q part is wasted; rebuilds are a small share of tokens
    cos, sin = _cos_sin(positions, shape)
    k = apply_rope(k.reshape(tokens, shape.num_kv_heads, head_dim), cos, sin)
    return k, v.reshape(tokens, shape.num_kv_heads, head_dim)


class LlamaModel:
    """Llama/Mistral/Qwen2 with the engine's per-layer interface."""

    def __init__(self, shape: ModelShape, weights: dict[str, torch.Tensor], num_layers: int,
                 prepack: bool | str | None = None):
        init_common(self, shape, weights, num_layers)
        self.norm_weight = weights["norm.weight"]
        self.lm_head = Linear(weights.get("lm_head.weight", self.embed_tokens), prepack=prepack)
        self.layers = [layer_from_weights(weights, i, shape.qkv_bias, prepack) for i in range(num_layers)]

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.embed_tokens)

    def prepare_positions(self, positions: torch.Tensor) -> RotaryPositions:
        """The step's positions with their RoPE tables, for every layer's `layer_forward`/`layer_kv_from_input`."""
        cos, sin = rope_cos_sin(positions, self.shape.head_dim, self.shape.rope_theta)
        return RotaryPositions(positions, cos, sin)

    def layer_forward(self, index: int, hidden: torch.Tensor, positions: torch.Tensor, attention: Attention,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
        return layer_forward(self.layers[index], self.shape, index, hidden, positions, attention, rows)

    def layer_kv_from_input(self, index: int, layer_input: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return layer_kv_from_input(self.layers[index], self.shape, layer_input, positions)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden, self.norm_weight, self.shape.norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.head_input(hidden))
