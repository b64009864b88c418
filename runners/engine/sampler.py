"""Next-token sampling: greedy, temperature and top-p (nucleus), seeded per request.

`sample(logits[N, V], params, generators, c_variant)` returns one token id per row. Greedy rows
(temperature 0) are one batched argmax: on the CPU with bf16 logits, the engine's C library's
(`greedy_argmax.c`, the build the engine's decode attention uses: `c_variant`; 0.73 against 2.92 ms
for 96 rows of OPT's 50,272 logits, benchmarks/bench_decode_step.py), elsewhere `max(dim=-1)`.
Both take the first maximum; the C one never lets NaN win. Random rows draw from their own
`torch.Generator`, made once per request by `make_generator`, so a seeded request produces the
same tokens whatever else is in the batch and whichever order the batch has. A request without a
seed gets a generator seeded from the engine seed and its request index, so a whole run is
reproducible.

Left out: top-k, min-p, repetition/presence penalties, logprobs, beam search.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from runners.engine import c_kernels
from runners.engine.sampling_params import SamplingParams


def make_generator(params: SamplingParams, fallback_seed: int) -> torch.Generator | None:
    """A CPU generator for a random-sampling request; None for greedy requests."""
    if params.greedy:
        return None
    return torch.Generator().manual_seed(params.seed if params.seed is not None else fallback_seed)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches `top_p`; renormalise."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits[V]."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    probs = top_p_filter(probs, params.top_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def greedy_tokens(logits: torch.Tensor, c_variant: str | None = None) -> list[int]:
    """The first maximum of each row of logits[N, V]: the C library's argmax for bf16 CPU rows when `c_variant` loads."""
    if c_variant and logits.device.type == "cpu" and logits.dtype == torch.bfloat16 and logits.dim() == 2:
        library = c_kernels.load(c_variant)
        if library is not None:
            rows = logits.contiguous()
            out = torch.empty(rows.shape[0], dtype=torch.int64)
            library.argmax_rows_bf16(rows.data_ptr(), rows.shape[0], rows.shape[1], out.data_ptr())
            return out.tolist()
    return logits.max(dim=-1).indices.tolist()  # first maximum, like argmax; faster on bf16 CPU rows (docs/engine-cpu-performance.md)


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None], c_variant: str | None = None) -> list[int]:
    """Token ids for logits[N, V], row i sampled with params[i] and generators[i]; `c_variant`: the engine's C build."""
    if logits.shape[0] != len(params) or len(params) != len(generators):
        raise ValueError(f"sample: {logits.shape[0]} logit rows, {len(params)} params, {len(generators)} generators")
    tokens = greedy_tokens(logits, c_variant)
    for row, (row_params, generator) in enumerate(zip(params, generators)):
        if not row_params.greedy:
            if generator is None:
                raise ValueError(f"sample: row {row} samples at temperature {row_params.temperature} but has no generator")
            tokens[row] = sample_row(logits[row], row_params, generator)
    return tokens
