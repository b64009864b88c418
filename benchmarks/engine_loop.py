"""A minimal generation loop over the engine's model and kernels, with a per-op time breakdown.

Used by bench_engine_throughput.py as the `pie-kernels` runner: every request arrives at once,
prompts are prefilled in packed chunks of at most `max_batched_tokens`, then all sequences
decode together until each has its `output_len` tokens (greedy). Blocks come from one flat
`kv_cache[L * n, 2, block, Hkv, dh]` exactly as the engine lays it out, handed out in
scattered order so the kernels never rely on contiguity. It answers "how fast are the model
and kernels themselves", and where a decode step's time goes.

Left out: scheduling, preemption, the CPU pool — that is the engine's job (llm_engine.py).
"""
from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from pie_core.shapes import load_shape_from_dir
from runners.engine.attention import paged_decode_attention, prefill_attention, write_kv
from runners.engine.kernels import resolve_kernels
from runners.engine.models import build_model
from runners.engine.sampler import sample
from runners.engine.sampling_params import SamplingParams


class Timer:
    """Accumulates wall seconds per label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def run(self, label: str, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.seconds[label] += time.perf_counter() - start
        return result


def run_kernel_loop(model_dir: Path, requests: list[tuple[list[int], int]], block_size: int = 16,
                    max_batched_tokens: int = 2048, seed: int = 0, dtype: str = "bfloat16") -> dict:
    started = time.perf_counter()
    shape = load_shape_from_dir(Path(model_dir))
    kernels = resolve_kernels("cpu", dtype)  # the engine's own choice for this machine
    model = build_model(shape, dtype, "cpu", weights_dir=Path(model_dir), prepack=kernels.prepack)
    blocks_needed = [-(-(len(prompt) + output_len) // block_size) for prompt, output_len in requests]
    blocks_per_layer = sum(blocks_needed)
    kv_cache = torch.zeros(model.num_layers * blocks_per_layer, 2, block_size, shape.num_kv_heads, shape.head_dim,
                           dtype=model.dtype)
    free = list(range(blocks_per_layer))
    random.Random(seed).shuffle(free)
    tables = [[free.pop() for _ in range(n)] for n in blocks_needed]
    width = max(blocks_needed)
    greedy = SamplingParams(max_tokens=1)
    timer = Timer()
    startup_s = time.perf_counter() - started

    def slots(seq: int, positions: list[int]) -> list[int]:
        return [tables[seq][p // block_size] * block_size + p % block_size for p in positions]

    def forward(input_ids, positions, slot_base, attend):
        """slot_base[T]: slots in layer 0; layer i adds i * blocks_per_layer * block_size."""
        hidden = timer.run("embed", model.embed, input_ids, positions)
        for layer in range(model.num_layers):
            offset = layer * blocks_per_layer

            def attention(index, q, k, v, offset=offset):
                timer.run("write_kv", write_kv, kv_cache, slot_base + offset * block_size, k, v)
                return attend(offset, q, k, v)

            hidden = model.layer_forward(layer, hidden, positions, attention)
        return hidden

    outputs: list[list[int]] = [[] for _ in requests]
    begin = time.perf_counter()
    with torch.inference_mode():
        # Prefill: pack whole prompts into chunks of at most max_batched_tokens.
        order, chunk, chunk_tokens = list(range(len(requests))), [], 0
        chunks = []
        for seq in order:
            length = len(requests[seq][0])
            if chunk and chunk_tokens + length > max_batched_tokens:
                chunks.append(chunk)
                chunk, chunk_tokens = [], 0
            chunk.append(seq)
            chunk_tokens += length
        chunks.append(chunk)
        for chunk in chunks:
            ids = torch.tensor([t for seq in chunk for t in requests[seq][0]])
            positions = torch.tensor([p for seq in chunk for p in range(len(requests[seq][0]))])
            slot_base = torch.tensor([s for seq in chunk for s in slots(seq, range(len(requests[seq][0])))])
            bounds = [0]
            for seq in chunk:
                bounds.append(bounds[-1] + len(requests[seq][0]))
            cu_seqlens = torch.tensor(bounds)
            hidden = forward(ids, positions, slot_base,
                             lambda offset, q, k, v: timer.run("prefill_attention", prefill_attention, q, k, v, cu_seqlens, model.attention_scale))
            last = hidden[torch.tensor(bounds[1:]) - 1]
            logits = timer.run("logits", model.logits, last)
            for seq, token in zip(chunk, timer.run("sample", sample, logits, [greedy] * len(chunk), [None] * len(chunk))):
                outputs[seq].append(token)
        prefill_s = time.perf_counter() - begin
        steps = 0
        while True:
            running = [seq for seq in range(len(requests)) if len(outputs[seq]) < requests[seq][1]]
            if not running:
                break
            steps += 1
            positions_list = [len(requests[seq][0]) + len(outputs[seq]) - 1 for seq in running]
            ids = torch.tensor([outputs[seq][-1] for seq in running])
            positions = torch.tensor(positions_list)
            slot_base = torch.tensor([slots(seq, [p])[0] for seq, p in zip(running, positions_list)])
            table = torch.tensor([tables[seq] + [0] * (width - len(tables[seq])) for seq in running])
            context_lens = positions + 1

            def decode_attention(offset, q, k, v, table=table, context_lens=context_lens):
                return timer.run("decode_attention", paged_decode_attention, q, kv_cache, table + offset, context_lens,
                                 model.attention_scale, kernels.decode_variant)

            hidden = forward(ids, positions, slot_base, decode_attention)
            logits = timer.run("logits", model.logits, hidden)
            for seq, token in zip(running, timer.run("sample", sample, logits, [greedy] * len(running), [None] * len(running))):
                outputs[seq].append(token)
    wall_s = time.perf_counter() - begin
    breakdown = {label: round(seconds, 3) for label, seconds in sorted(timer.seconds.items())}
    breakdown["layers_other_s (GEMMs, norms, residuals)"] = round(wall_s - sum(timer.seconds.values()), 3)
    return {"wall_s": wall_s, "startup_s": startup_s, "output_tokens": sum(len(o) for o in outputs),
            "prompt_tokens": sum(len(p) for p, _ in requests), "outputs": outputs,
            "details": {"prefill_s": round(prefill_s, 3), "decode_s": round(wall_s - prefill_s, 3), "decode_steps": steps,
                        "kernels": kernels.to_dict(),
                        "seconds_by_op": breakdown, "torch_threads": torch.get_num_threads()}}
