"""Synthetic workloads: lengths from a named distribution, token ids drawn seeded from the vocabulary.

Used when no dataset file is given, and always labelled synthetic. Distributions:
- `sharegpt`: log-normal lengths (sigma 0.8) with the published ShareGPT means, 161 prompt /
  338 output tokens (vLLM paper), clipped to vLLM's filter (prompt 4..1024, total <= 2048);
- `alpaca`: the same with Alpaca's means, 19 / 58;
- `fixed`: every request `input_len` / `output_len` (default 128 / 128);
- `uniform`: lengths uniform in [len * (1 - range_ratio), len * (1 + range_ratio)] (vLLM's random dataset).
`--output-len` fixes the output length of every distribution. For models shorter than the
filter, `sharegpt`/`alpaca` lengths are clipped to fit (noted); `fixed`/`uniform` refuse instead.

Left out: text (synthetic prompts have token ids only, `prompt=None`).
"""
from __future__ import annotations

import math

import numpy as np

from pie_core.errors import BadInput
from runners.base import BenchRequest
from runners.workloads.common import MAX_PROMPT_LEN, MAX_TOTAL_LEN, MIN_PROMPT_LEN, WorkloadSpec
from runners.workloads.tokenize import RESERVED_IDS

PUBLISHED_MEANS = {"sharegpt": (161, 338), "alpaca": (19, 58)}  # prompt, output tokens (vLLM paper)
LOGNORMAL_SIGMA = 0.8
DEFAULT_LEN = 128


def _lognormal(rng: np.random.Generator, mean: float, count: int) -> np.ndarray:
    mu = math.log(mean) - LOGNORMAL_SIGMA**2 / 2  # so that the mean is `mean`
    return np.rint(rng.lognormal(mu, LOGNORMAL_SIGMA, count)).astype(int)


def _lengths(spec: WorkloadSpec, rng: np.random.Generator, max_model_len: int) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    count, notes = spec.num_prompts, []
    if spec.name in PUBLISHED_MEANS:
        prompt_mean, output_mean = PUBLISHED_MEANS[spec.name]
        cap = min(MAX_TOTAL_LEN, max_model_len)
        prompts = np.clip(_lognormal(rng, prompt_mean, count), min(MIN_PROMPT_LEN, cap - 1), min(MAX_PROMPT_LEN, cap - 1))
        outputs = (np.full(count, spec.output_len) if spec.output_len is not None
                   else _lognormal(rng, output_mean, count))
        outputs = np.clip(outputs, 1, cap - prompts)
        if cap < MAX_TOTAL_LEN:
            notes.append(f"lengths clipped to the model's max length {max_model_len}")
        fixed = f", output fixed at {spec.output_len}" if spec.output_len is not None else ""
        return prompts, outputs, f"log-normal(sigma {LOGNORMAL_SIGMA}), means {prompt_mean}/{output_mean}{fixed}", notes
    prompt_len = spec.input_len or DEFAULT_LEN
    output_len = spec.output_len or DEFAULT_LEN
    if spec.name == "fixed":
        prompts, outputs = np.full(count, prompt_len), np.full(count, output_len)
        description = f"fixed {prompt_len}/{output_len}"
    else:
        ratio = spec.range_ratio
        prompts = rng.integers(max(1, int(prompt_len * (1 - ratio))), int(prompt_len * (1 + ratio)) + 1, count)
        outputs = rng.integers(max(1, int(output_len * (1 - ratio))), int(output_len * (1 + ratio)) + 1, count)
        description = f"uniform {prompt_len}/{output_len} +-{ratio:.0%}"
    longest = int((prompts + outputs).max())
    if longest > max_model_len:
        raise BadInput(f"synthetic requests of up to {longest} tokens exceed the model's max length {max_model_len}",
                       "lower --input-len / --output-len (or --range-ratio)")
    return prompts, outputs, description, notes


def synthetic_requests(spec: WorkloadSpec, vocab_size: int, max_model_len: int) -> tuple[list[BenchRequest], str, list[str]]:
    """(requests, description of the distribution, notes)."""
    rng = np.random.default_rng(spec.seed)
    prompts, outputs, description, notes = _lengths(spec, rng, max_model_len)
    low = RESERVED_IDS if vocab_size > 2 * RESERVED_IDS else 0
    requests = []
    for index, (prompt_len, output_len) in enumerate(zip(prompts.tolist(), outputs.tolist())):
        ids = rng.integers(low, vocab_size, prompt_len)
        requests.append(BenchRequest(request_id=f"synthetic-{index}", prompt=None,
                                     prompt_token_ids=tuple(int(t) for t in ids), output_len=int(output_len)))
    return requests, description, notes
