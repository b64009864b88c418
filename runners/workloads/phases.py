"""The phased synthetic workload: a light phase of short chats, then a burst of long contexts (seeded).

Made to show what adaptive expansion does when demand changes: the first half of the requests
(`light-*`) are short chats (prompts 16-48, outputs 16-32 tokens) arriving as a Poisson process
at the light rate (`--request-rate`, default 4/s); the second half (`burst-*`) are long contexts
(prompts `--input-len` +-25 %, default 512; outputs 48-96) arriving at eight times that rate,
starting after a quiet gap of 12 light-phase arrival intervals (3 s at 4/s) after the light
phase's last arrival, so each phase is served on its own. `--output-len` fixes every output.
Lengths are clipped to the model's max length. Labelled synthetic; token ids are uniform over
the vocabulary. Left out: more than two phases.
"""
from __future__ import annotations

import math

import numpy as np

from runners.base import BenchRequest
from runners.workloads.common import WorkloadSpec
from runners.workloads.tokenize import RESERVED_IDS

DEFAULT_LIGHT_RATE = 4.0
BURST_RATE_FACTOR = 8.0
GAP_INTERVALS = 12  # quiet time between the phases, in light-phase mean arrival gaps
DEFAULT_BURST_PROMPT = 512
PHASES = ("light", "burst")


def phase_of(request_id: str) -> str:
    return request_id.split("-", 1)[0]


def phased_requests(spec: WorkloadSpec, vocab_size: int, max_model_len: int,
                    request_rate: float) -> tuple[list[BenchRequest], str]:
    """(requests with arrivals, description)."""
    rng = np.random.default_rng(spec.seed)
    rate = request_rate if math.isfinite(request_rate) else DEFAULT_LIGHT_RATE
    num_light = max(1, spec.num_prompts // 2)
    num_burst = spec.num_prompts - num_light
    low = RESERVED_IDS if vocab_size > 2 * RESERVED_IDS else 0
    burst_prompt = spec.input_len or DEFAULT_BURST_PROMPT
    requests: list[BenchRequest] = []
    clock = 0.0
    for phase, count, phase_rate in (("light", num_light, rate), ("burst", num_burst, rate * BURST_RATE_FACTOR)):
        for index in range(count):
            if phase == "light":
                prompt_len, output_len = int(rng.integers(16, 49)), int(rng.integers(16, 33))
            else:
                prompt_len = int(rng.integers(int(burst_prompt * 0.75), int(burst_prompt * 1.25) + 1))
                output_len = int(rng.integers(48, 97))
            output_len = spec.output_len or output_len
            prompt_len = max(1, min(prompt_len, max_model_len - output_len))
            if requests:
                clock += float(rng.exponential(1.0 / phase_rate))
                if phase == "burst" and index == 0:
                    clock += GAP_INTERVALS / rate
            ids = rng.integers(low, vocab_size, prompt_len)
            requests.append(BenchRequest(request_id=f"{phase}-{index}", prompt=None, prompt_token_ids=tuple(int(t) for t in ids),
                                         output_len=min(output_len, max_model_len - 1), arrival_s=clock))
    description = (f"phases: {num_light} short chats (prompts 16-48, outputs 16-32) at {rate:g}/s, a {GAP_INTERVALS / rate:g} s "
                   f"gap, then {num_burst} long "
                   f"contexts (prompts {burst_prompt} +-25%, outputs 48-96) at {rate * BURST_RATE_FACTOR:g}/s")
    return requests, description
