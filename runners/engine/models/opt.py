"""OPT decoder (facebook/opt-*) as small free functions over a dict of weights.

Pre-norm (`do_layer_norm_before`, every size but opt-350m) and post-norm layers, learned
positions with OPT's offset of 2, ReLU MLP, optional project_in/project_out when
`word_embed_proj_dim` differs from hidden, logits through the tied token embedding.
q, k and v are fused into one GEMM at build time; every GEMM goes through `Linear`
(models/linear.py: weights prepacked for oneDNN on the CPU, with fc1's ReLU fused). The attention itself is a callback the
engine supplies (docs/engine-interfaces.md), so this file holds no KV cache.

Left out: dropout, OPT's `enable_bias=False` and `layer_norm_elementwise_affine=False` variants.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pie_core.shapes import ModelShape
from runners.engine.models.common import Attention, init_common
from runners.engine.models.linear import Linear

_POSITION_OFFSET = 2


@dataclass(frozen=True)
class OPTLayer:
    qkv: Linear  # [3h, h]: q, k, v stacked
    out: Linear
    attn_norm_weight: torch.Tensor
    attn_norm_bias: torch.Tensor
    fc1: Linear
    fc2: Linear
    mlp_norm_weight: torch.Tensor
    mlp_norm_bias: torch.Tensor


def layer_from_weights(weights: dict[str, torch.Tensor], index: int, prepack: bool | str | None = None) -> OPTLayer:
    linear = functools.partial(Linear, prepack=prepack)
    p = f"layers.{index}."
    attn = p + "self_attn."
    return OPTLayer(
        qkv=linear(torch.cat([weights[f"{attn}{n}_proj.weight"] for n in "qkv"]),
                   torch.cat([weights[f"{attn}{n}_proj.bias"] for n in "qkv"])),
        out=linear(weights[attn + "out_proj.weight"], weights[attn + "out_proj.bias"]),
        attn_norm_weight=weights[p + "self_attn_layer_norm.weight"], attn_norm_bias=weights[p + "self_attn_layer_norm.bias"],
        fc1=linear(weights[p + "fc1.weight"], weights[p + "fc1.bias"]),
        fc2=linear(weights[p + "fc2.weight"], weights[p + "fc2.bias"]),
        mlp_norm_weight=weights[p + "final_layer_norm.weight"], mlp_norm_bias=weights[p + "final_layer_norm.bias"])


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def attention_block(layer: OPTLayer, shape: ModelShape, index: int, x: torch.Tensor, attention: Attention,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
    """x is the (already normed, for pre-norm) input; returns the out-projected attention output (of `rows` only,
    when given)."""
    tokens = x.shape[0]
    h, heads, head_dim = shape.hidden_size, shape.num_heads, shape.head_dim
    q, k, v = layer.qkv(x).split(h, dim=-1)
    out = attention(index, q.view(tokens, heads, head_dim), k.view(tokens, heads, head_dim),
                    v.view(tokens, heads, head_dim)).reshape(tokens, h)
    return layer.out(out if rows is None else out[rows])


def mlp_block(layer: OPTLayer, x: torch.Tensor) -> torch.Tensor:
    return layer.fc2(layer.fc1(x, relu=True))


def layer_forward(layer: OPTLayer, shape: ModelShape, index: int, hidden: torch.Tensor, attention: Attention,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    eps = shape.norm_eps
    residual = hidden if rows is None else hidden[rows]
    if shape.do_layer_norm_before:
        normed = layer_norm(hidden, layer.attn_norm_weight, layer.attn_norm_bias, eps)
        hidden = residual + attention_block(layer, shape, index, normed, attention, rows)
        return hidden + mlp_block(layer, layer_norm(hidden, layer.mlp_norm_weight, layer.mlp_norm_bias, eps))
    hidden = layer_norm(residual + attention_block(layer, shape, index, hidden, attention, rows), layer.attn_norm_weight,
                        layer.attn_norm_bias, eps)
    return layer_norm(hidden + mlp_block(layer, hidden), layer.mlp_norm_weight, layer.mlp_norm_bias, eps)


def layer_kv_from_input(layer: OPTLayer, shape: ModelShape, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of a layer recomputed from its stored input activations (the KVPR rebuild path)."""
    h, heads, head_dim = shape.hidden_size, shape.num_heads, shape.head_dim
    x = layer_input
    if shape.do_layer_norm_before:
        x = layer_norm(x, layer.attn_norm_weight, layer.attn_norm_bias, shape.norm_eps)
    k, v = layer.qkv(x)[:, h:].split(h, dim=-1)  # the q third is wasted; rebuilds are a small share of tokens
    tokens = x.shape[0]
    return k.reshape(tokens, heads, head_dim), v.reshape(tokens, heads, head_dim)


class OPTModel:
    """OPT with the engine's per-layer interface; weights come from `runners.engine.loader`."""

    def __init__(self, shape: ModelShape, weights: dict[str, torch.Tensor], num_layers: int,
                 prepack: bool | str | None = None):
        linear = functools.partial(Linear, prepack=prepack)
        init_common(self, shape, weights, num_layers)
        self.embed_positions = weights["embed_positions.weight"]
        self.project_in = linear(weights["project_in.weight"]) if "project_in.weight" in weights else None
        self.project_out = linear(weights["project_out.weight"]) if "project_out.weight" in weights else None
        self.final_norm_weight = weights.get("final_layer_norm.weight")
        self.final_norm_bias = weights.get("final_layer_norm.bias")
        self.layers = [layer_from_weights(weights, i, prepack) for i in range(num_layers)]
        self.lm_head = linear(self.embed_tokens)  # tied; a prepacked copy when packing applies

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = F.embedding(input_ids, self.embed_tokens)
        if self.project_in is not None:
            x = self.project_in(x)
        return x + F.embedding(positions + _POSITION_OFFSET, self.embed_positions)

    def prepare_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """OPT's positions enter at the embedding only: the layers take them as they are."""
        return positions

    def layer_forward(self, index: int, hidden: torch.Tensor, positions: torch.Tensor, attention: Attention,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
        return layer_forward(self.layers[index], self.shape, index, hidden, attention, rows)

    def layer_kv_from_input(self, index: int, layer_input: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return layer_kv_from_input(self.layers[index], self.shape, layer_input)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.final_norm_weight is not None:
            hidden = layer_norm(hidden, self.final_norm_weight, self.final_norm_bias, self.shape.norm_eps)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.head_input(hidden))
