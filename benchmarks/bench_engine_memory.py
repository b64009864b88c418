"""Host memory over a long closed loop: does the engine's RSS stay flat as thousands of requests finish?

OPT-125m-shaped model with seeded random weights in `--dtype` (auto: bf16 where native, else
fp32), or any registry name or local model directory given as `--model`. A closed loop keeps
`--max-in-flight` short requests running (prompts of 8-32 random token ids, 4-16 output tokens,
seeded, EOS ignored); each finished request is replaced at once until `--num-requests` have
been added. After every `--checkpoint-every` finished requests it records the peak RSS
(`getrusage` ru_maxrss), the current RSS (/proc/self/statm), the requests the engine still
holds (its private `_sequences` and `_outputs`; the figure this benchmark is about), and the
`IterationStats` kept in `engine.stats` (one per iteration, kept for the engine's lifetime).

Headline: growth of the peak RSS from the first checkpoint to the last (target < 5 %); the first
checkpoint comes after the warm-up and the first thousand requests, so one-time allocations
(weights, KV cache, allocator pools) are in the baseline. Memory outside the engine's Python
state grows too: with bf16 weights prepacked for oneDNN, ideep and oneDNN cache one primitive
per distinct (token count, weight shape) -- up to `LRU_CACHE_CAPACITY` and
`ONEDNN_PRIMITIVE_CACHE_CAPACITY` entries (1024 each by default), so RSS rises while new
batch token counts appear and levels off after; the record keeps both variables as set. Writes
docs/results/engine_memory_<machine>.json (or `--out`). Left out: throughput (see
bench_engine_throughput.py) and device memory. Run it alone:
`flock /tmp/pie-heavy.lock python benchmarks/bench_engine_memory.py`. `--quick`: 24 requests, 4 in
flight, a reading every 8.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_transparency import machine, write_record  # noqa: E402
from benchmarks.bench_dtype import add_dtype_argument, resolve_bench_dtype  # noqa: E402
from quick_mode import add_quick_argument  # noqa: E402
from runners.engine.config import EngineConfig  # noqa: E402
from runners.engine.llm_engine import LLMEngine  # noqa: E402
from runners.engine.sampling_params import SamplingParams  # noqa: E402

BLOCK_SIZE = 16
PROMPT_RANGE = (8, 32)
OUTPUT_RANGE = (4, 16)
CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")  # oneDNN primitive caches (see above)


@dataclass(frozen=True)
class Checkpoint:
    num_finished: int
    elapsed_s: float
    num_steps: int
    peak_rss_bytes: int
    current_rss_bytes: int
    num_sequences_held: int  # Sequences the engine still keeps (the requests in flight, since the fix)
    num_outputs_held: int  # RequestOutputs likewise
    num_iteration_stats: int


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class ClosedLoop:
    """Keeps `max_in_flight` requests running until `num_requests` have been added."""

    def __init__(self, engine: LLMEngine, num_requests: int, max_in_flight: int, seed: int):
        self.engine, self.num_requests = engine, num_requests
        self.rng = random.Random(seed)
        self.vocab_size = engine.model.shape.vocab_size
        self.num_added = self.num_finished = self.num_output_tokens = self.num_wrong_length = 0
        self.expected: dict[str, int] = {}
        for _ in range(min(max_in_flight, num_requests)):
            self._add()

    def _add(self) -> None:
        prompt = [self.rng.randrange(4, self.vocab_size) for _ in range(self.rng.randint(*PROMPT_RANGE))]
        max_tokens = self.rng.randint(*OUTPUT_RANGE)
        request_id = f"memory-{self.num_added}"
        self.engine.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        self.expected[request_id] = max_tokens
        self.num_added += 1

    def step(self) -> int:
        """One engine iteration; returns how many requests finished in it."""
        finished = 0
        for output in self.engine.step():
            if not output.finished:
                continue
            finished += 1
            self.num_output_tokens += len(output.output_token_ids)
            self.num_wrong_length += len(output.output_token_ids) != self.expected.pop(output.request_id)
            if self.num_added < self.num_requests:
                self._add()
        self.num_finished += finished
        return finished


def reading(engine: LLMEngine, loop: ClosedLoop, elapsed_s: float, num_steps: int) -> Checkpoint:
    point = Checkpoint(num_finished=loop.num_finished, elapsed_s=elapsed_s, num_steps=num_steps,
                       peak_rss_bytes=peak_rss_bytes(), current_rss_bytes=current_rss_bytes(),
                       num_sequences_held=len(engine._sequences), num_outputs_held=len(engine._outputs),
                       num_iteration_stats=len(engine.stats))
    print(f"{point.num_finished:>7} finished  {point.elapsed_s:7.1f} s  "
          f"peak RSS {point.peak_rss_bytes / 2**20:8.1f} MiB  current {point.current_rss_bytes / 2**20:8.1f} MiB  "
          f"held {point.num_sequences_held:>5}/{point.num_outputs_held:<5}  stats {point.num_iteration_stats:>7}",
          file=sys.stderr)
    return point


def run(engine: LLMEngine, args: argparse.Namespace) -> tuple[list[Checkpoint], ClosedLoop]:
    """The closed loop, read after every `checkpoint_every` finished requests and at the end."""
    loop = ClosedLoop(engine, args.num_requests, args.max_in_flight, args.seed)
    checkpoints: list[Checkpoint] = []
    began = time.perf_counter()
    num_steps = 0
    while engine.has_unfinished_requests():
        before = loop.num_finished
        loop.step()
        num_steps += 1
        if loop.num_finished // args.checkpoint_every > before // args.checkpoint_every:
            checkpoints.append(reading(engine, loop, time.perf_counter() - began, num_steps))
    if checkpoints[-1].num_finished != loop.num_finished:
        checkpoints.append(reading(engine, loop, time.perf_counter() - began, num_steps))
    return checkpoints, loop


def growth(first: int, last: int) -> float:
    return (last - first) / first if first else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=5000)
    parser.add_argument("--max-in-flight", type=int, default=16, help="requests running at once")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="finished requests between RSS readings")
    parser.add_argument("--model", default="opt-125m", help="registry name (random weights) or local model directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target-growth", type=float, default=0.05, help="largest acceptable peak RSS growth")
    parser.add_argument("--out", type=Path, default=None)
    add_dtype_argument(parser)
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.num_requests, args.max_in_flight, args.checkpoint_every = 24, 4, 8
    if args.num_requests < 2 * args.checkpoint_every:
        parser.error(f"--num-requests {args.num_requests} gives fewer than two checkpoints of {args.checkpoint_every}")
    if args.max_in_flight < 1:
        parser.error(f"--max-in-flight must be at least 1, got {args.max_in_flight}")
    dtype = args.dtype = resolve_bench_dtype(args.dtype, parser, args.device)

    blocks_per_request = -(-(PROMPT_RANGE[1] + OUTPUT_RANGE[1]) // BLOCK_SIZE)
    config = EngineConfig(model=args.model, dtype=dtype, device=args.device, block_size=BLOCK_SIZE,
                          num_device_blocks=args.max_in_flight * blocks_per_request + 8, max_num_seqs=args.max_in_flight,
                          seed=args.seed)
    engine = LLMEngine(config)
    warm_up_began = time.perf_counter()
    engine.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=4, ignore_eos=True))  # untimed, before any reading
    warmup_s = time.perf_counter() - warm_up_began
    checkpoints, loop = run(engine, args)
    first, last = checkpoints[0], checkpoints[-1]
    peak_growth = growth(first.peak_rss_bytes, last.peak_rss_bytes)
    current_growth = growth(first.current_rss_bytes, last.current_rss_bytes)
    weights = f"random {dtype} weights" if engine.model.random_weights else f"{dtype} weights from the directory"
    print(f"\npeak RSS {first.peak_rss_bytes / 2**20:.1f} MiB after {first.num_finished} requests -> "
          f"{last.peak_rss_bytes / 2**20:.1f} MiB after {last.num_finished}: growth {peak_growth * 100:.2f} % "
          f"(target < {args.target_growth * 100:g} %: {'met' if peak_growth < args.target_growth else 'NOT met'})")
    print(f"current RSS growth {current_growth * 100:.2f} %; sequences/outputs held at the end "
          f"{last.num_sequences_held}/{last.num_outputs_held}; "
          f"{last.num_iteration_stats} IterationStats kept; {loop.num_wrong_length} requests of the wrong length; "
          f"{last.elapsed_s:.1f} s for {loop.num_finished} requests ({loop.num_output_tokens} output tokens)")
    record = {
        "benchmark": "engine_memory", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(), "model": f"{args.model} ({weights})",
        "config": asdict(config), "kernels": engine.kernels.to_dict(),
        "workload": {"num_requests": args.num_requests, "max_in_flight": args.max_in_flight, "seed": args.seed,
                     "prompt_range": list(PROMPT_RANGE), "output_range": list(OUTPUT_RANGE), "arrivals": "closed loop",
                     "synthetic": True},
        "environment": {name: os.environ.get(name) for name in CACHE_VARIABLES},
        "warmup_s": warmup_s, "checkpoints": [asdict(point) for point in checkpoints],
        "peak_rss_growth": peak_growth, "current_rss_growth": current_growth, "target_growth": args.target_growth,
        "target_met": peak_growth < args.target_growth, "num_output_tokens": loop.num_output_tokens,
        "num_wrong_length": loop.num_wrong_length, "wall_s": last.elapsed_s,
    }
    write_record(record, "engine_memory", args.out, args.quick)


if __name__ == "__main__":
    main()
