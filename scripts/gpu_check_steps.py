"""The measuring steps of scripts/gpu_check.py; each runs in its own child process and returns a JSON-able dict.

Every step takes (out, dry, record, limit_s): the output folder, whether this is the CPU dry run,
`record(partial)`, which saves what the step has measured so far (a step its limit kills keeps
that), and the step's time limit (for the commands it runs). The GPU steps use `DEVICE`, `MODEL`,
`DTYPE` and the size constants below, which a rehearsal (`PIE_GPU_CHECK_REHEARSAL=1`, set by
`gpu_check.py --rehearse`) makes small and points at the CPU, Triton running under its interpreter. Engines are closed between runs so the next one finds the device memory free. Left out:
the driver, time limits and installing (gpu_check.py).
"""
from __future__ import annotations

import functools
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REHEARSAL = os.environ.get("PIE_GPU_CHECK_REHEARSAL") == "1"  # gpu_check.py --rehearse: the GPU steps, small, on a CPU
DEVICE = "cpu" if REHEARSAL else "cuda"
MODEL = "opt-125m" if REHEARSAL else "opt-1.3b"
DTYPE = "float32" if REHEARSAL else "float16"  # the engine runs' dtype (profile, transparency, tune, bench)
BATCH = 4 if REHEARSAL else 64  # the transparency and plan/bench batch: a real batch for an OPT-1.3b shape
SHARES = (0.0, 0.01, 0.02, 0.05, 0.10, 0.25)  # pooled shares of the batch's KV; a PCIe host's knee lies below 5 %
GEOMETRIES = {  # name: (dtype, heads, KV heads, head_dim): the decode shapes whose HBM fraction is reported
    "mha_fp16_dh64": ("float16", 32, 32, 64),  # OPT-1.3b
    "gqa_bf16_dh128": ("bfloat16", 32, 8, 128),  # Llama-3-8B
}
BLOCK_SIZE = 16
DECODE_POINTS = ((2, 64), (1, 300)) if REHEARSAL else ((32, 2048), (4, 8192))  # (batch, context); the second splits
PREFILL_POINT = (2, 24) if REHEARSAL else (8, 512)  # prompts x tokens
TRANSPARENCY_LENGTHS = (40, 8) if REHEARSAL else (512, 64)  # prompt, output tokens per sequence
BENCH_LENGTHS = (24, 8) if REHEARSAL else (161, 338)  # ShareGPT's mean prompt and output tokens, as `pie tune` plans


def env() -> dict:
    """The steps' environment: this checkout and its tests first on the import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def _pie(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run the pie CLI: its messages stream to the log as they come, its stdout (--json) is returned."""
    return subprocess.run([sys.executable, "-c", "from pie_cli.app import main; main()", *args], cwd=REPO,
                          stdout=subprocess.PIPE, text=True, timeout=timeout, check=False, env=env())


def _load(out: Path, name: str) -> dict:
    path = out / "steps" / f"{name}.json"
    return json.loads(path.read_text()).get("result", {}) if path.exists() else {}


def close(engine) -> None:
    """Free an engine's device memory and pinned pool before the next one is built."""
    engine.close()  # stops the copy thread, drops the model, device KV and host pool, empties torch's cache
    gc.collect()


def compiled_variants() -> int:
    """Triton attention kernels compiled in this process so far (every device, every specialisation)."""
    from runners.engine import triton_attention

    return sum(len(caches[0]) for kernel in (triton_attention._decode_kernel, triton_attention._merge_kernel,
                                             triton_attention._prefill_kernel)
               for caches in getattr(kernel, "device_caches", {}).values())


def step_environment(out: Path, dry: bool, record, limit_s: float) -> dict:
    import time

    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        info["triton"] = f"not importable: {err}"
    record(info)
    if torch.cuda.is_available() or REHEARSAL:
        from runners.engine.kernels import resolve_kernels
        from runners.engine.triton_smoke import AttentionGeometry

        info["kernels"] = {}
        if not REHEARSAL:
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                        memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
        for name, (dtype, heads, kv_heads, head_dim) in GEOMETRIES.items():
            began = time.perf_counter()
            paths = resolve_kernels(DEVICE, dtype, geometry=AttentionGeometry(dtype, heads, kv_heads, head_dim, BLOCK_SIZE))
            info["kernels"][name] = {**paths.to_dict(), "trial_s": time.perf_counter() - began,
                                     "compiled_variants_so_far": compiled_variants()}
            record(info)
    return info


def step_gpu_tests(out: Path, dry: bool, record, limit_s: float) -> dict:
    import xml.etree.ElementTree as ET

    report = out / "gpu_tests.xml"
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob("test_*.py")
                   if "mark.gpu" in path.read_text())  # collecting only these saves most of pytest's start-up
    # Output goes straight to this process's stdout, which is the log: a killed run leaves every line it wrote.
    try:
        exit_code = subprocess.run([sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider",
                                    "-o", "timeout=40", f"--junitxml={report}", *files], cwd=REPO, env=env(),
                                   check=False, timeout=limit_s - 5).returncode
    except subprocess.TimeoutExpired:
        exit_code = "timeout (the log has every test that finished)"
    cases = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return {"exit_code": exit_code, "files": files, "tests": cases,
            "counts": {outcome: list(cases.values()).count(outcome) for outcome in set(cases.values())}}


def step_profile(out: Path, dry: bool, record, limit_s: float) -> dict:
    path = out / "profile.json"
    result = _pie("profile", "--device", DEVICE, "--quick", "--model", MODEL, "--dtype", DTYPE,
                  "--output", str(path), timeout=limit_s - 5)
    if result.returncode != 0:
        raise RuntimeError(f"pie profile exited {result.returncode} (its messages are above)")
    from profiler.hardware_profile import HardwareProfile

    profile = HardwareProfile.from_dict(json.loads(path.read_text()))
    link = {f"{kind}_{direction}_gbps": profile.best_gbps(direction, kind)
            for kind in ("pinned", "pageable") for direction in ("h2d", "d2h", "bidirectional")}
    return {"profile": str(path), **link, "hbm_gbps": profile.memory_bandwidth_gbps,
            "matmul_tflops": profile.matmul_tflops, "dtype": DTYPE, "layer_points": len(profile.layer_timings),
            "kernels": profile.extra.get("kernels")}


def _time(call) -> float:
    from profiler.timing import time_call

    if REHEARSAL:  # the interpreter: one call says the code runs
        return time_call(call, device=DEVICE, repeats=1, warmup=0).median_s
    return time_call(call, device=DEVICE, repeats=7, warmup=2, calls_per_sample=5).median_s


def step_kernels(out: Path, dry: bool, record, limit_s: float) -> dict:
    import torch

    from profiler.memory import measure_copy_bandwidth
    from runners.engine import attention
    from runners.engine.kernels import resolve_kernels
    from runners.engine.triton_smoke import AttentionGeometry

    hbm = _load(out, "profile").get("hbm_gbps") or measure_copy_bandwidth(DEVICE, 1 << (26 if REHEARSAL else 30))[1]
    rows: dict = {"hbm_gbps_read_plus_write": hbm}
    for name, (dtype_name, heads, kv_heads, head_dim) in GEOMETRIES.items():
        dtype = getattr(torch, dtype_name)
        paths = resolve_kernels(DEVICE, dtype_name, geometry=AttentionGeometry(dtype_name, heads, kv_heads, head_dim, BLOCK_SIZE))
        compiled = compiled_variants()
        scale = head_dim ** -0.5
        for batch, context in DECODE_POINTS:
            blocks = batch * context // BLOCK_SIZE
            cache = torch.randn(blocks + 64, 2, BLOCK_SIZE, kv_heads, head_dim, dtype=dtype, device=DEVICE)
            tables = torch.randperm(blocks, device=DEVICE).view(batch, -1)
            lens = attention.Lengths.build([context] * batch, DEVICE)
            q = torch.randn(batch, heads, head_dim, dtype=dtype, device=DEVICE)
            read_bytes = batch * context * 2 * kv_heads * head_dim * dtype.itemsize
            row = {"decode_attention": paths.decode_attention, "fallbacks": list(paths.fallbacks)}
            for variant in ("triton", "torch"):
                seconds = _time(functools.partial(attention.paged_decode_attention, q, cache, tables, lens, scale, variant))
                row[f"{variant}_us"] = seconds * 1e6
                row[f"{variant}_kv_read_gbps"] = read_bytes / seconds / 1e9
                row[f"{variant}_fraction_of_hbm"] = read_bytes / seconds / 1e9 / hbm
            row["triton_over_torch"] = row["torch_us"] / row["triton_us"]
            rows[f"decode_{name}_b{batch}_ctx{context}"] = row
            del cache
            record(rows)
        prompts, tokens = PREFILL_POINT
        q = torch.randn(tokens * prompts, heads, head_dim, dtype=dtype, device=DEVICE)
        k, v = (torch.randn(tokens * prompts, kv_heads, head_dim, dtype=dtype, device=DEVICE) for _ in range(2))
        cache = torch.zeros(4, 2, BLOCK_SIZE, kv_heads, head_dim, dtype=dtype, device=DEVICE)
        layout = attention.PrefillLayout.build(range(0, (prompts + 1) * tokens, tokens), [0] * prompts, DEVICE)
        row = {}
        for variant in ("triton", "torch"):
            row[f"{variant}_us"] = 1e6 * _time(functools.partial(attention.paged_prefill_attention, q, k, v, layout, scale,
                                                                 cache, None, variant))
        row["triton_over_torch"] = row["torch_us"] / row["triton_us"]
        rows[f"prefill_{name}_{prompts}x{tokens}"] = row
        rows[f"compiles_inside_timed_calls_{name}"] = compiled_variants() - compiled
        record(rows)
    return rows


def step_correctness(out: Path, dry: bool, record, limit_s: float) -> dict:
    import torch
    from tiny_hf_model import save_model, tiny_model

    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    root = Path(tempfile.mkdtemp(prefix="pie-gpu-check-"))
    settings = {"pool_off": {"num_device_blocks": 64},
                "pool_stream": {"num_device_blocks": 38, "num_pool_blocks": 24, "prefetch_depth": 3},
                "rebuild_0.5": {"num_device_blocks": 38, "num_pool_blocks": 24, "prefetch_depth": 2, "rebuild_fraction": 0.5}}
    runs = {}
    for family in ("opt", "llama"):
        model = tiny_model(family, seed=0, perturb=0.3, num_hidden_layers=4, max_position_embeddings=96)
        save_model(model, root / family)
        generator = torch.Generator().manual_seed(1)
        prompts = [torch.randint(3, model.config.vocab_size, (int(n),), generator=generator).tolist()
                   for n in torch.randint(5, 30, (2 if REHEARSAL else 6,), generator=generator)]
        model = model.to(DEVICE)
        reference = []
        for prompt in prompts:
            tokens = list(prompt)
            with torch.no_grad():
                for _ in range(12):
                    tokens.append(int(model(torch.tensor([tokens], device=DEVICE)).logits[0, -1].argmax()))
            reference.append(tokens[len(prompt):])
        for name, extra in settings.items():
            if name == "rebuild_0.5" and family != "opt":
                continue
            engine = LLMEngine(EngineConfig(model=str(root / family), dtype="float32", device=DEVICE, block_size=4,
                                            max_num_seqs=6, **extra))
            outputs = engine.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
            runs[f"{family}/{name}"] = {"equal": [o.output_token_ids for o in outputs] == reference,
                                        "streamed_bytes": sum(s.h2d_bytes for s in engine.stats),
                                        "decode": engine.kernels.decode_attention, "fallbacks": list(engine.kernels.fallbacks)}
            close(engine)
            record({"runs": runs})
    return {"all_equal": all(run["equal"] for run in runs.values()), "runs": runs}


def _requests(count: int, prompt: int, output: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(4, vocab) for _ in range(prompt)], output) for _ in range(count)]


def step_transparency(out: Path, dry: bool, record, limit_s: float) -> dict:
    from benchmarks.bench_engine_transparency import run_once
    from runners.engine.config import EngineConfig

    prompt_len, output_len = TRANSPARENCY_LENGTHS
    requests = _requests(BATCH, prompt_len, output_len, 50000, seed=1)
    need = BATCH * -(-(prompt_len + output_len) // BLOCK_SIZE)  # blocks the batch's KV fills at its end
    base = EngineConfig(model=MODEL, dtype=DTYPE, device=DEVICE, random_weights=True, block_size=BLOCK_SIZE,
                        max_num_seqs=BATCH, max_num_batched_tokens=8192)
    layers = base.shape.num_layers
    result: dict = {"batch": BATCH, "prompt_len": prompt_len, "output_len": output_len, "kv_blocks_needed": need, "runs": {}}
    for share in SHARES:
        pooled = int(need * share)
        staging = -(-2 * pooled // layers)  # what CacheLayout charges the device budget for two staging slots
        # No slack: at the batch's peak exactly `pooled` blocks must live in the pool (a slack of even one block per
        # sequence would hold the 1 and 2 % shares on the device); peak_pool_blocks says what was pooled.
        config = base.replace(num_device_blocks=need - pooled + staging, num_pool_blocks=pooled, prefetch_depth=2)
        run, engine = run_once(config, requests)
        run["h2d_gbps_over_wall"] = run["h2d_bytes"] / run["wall_s"] / 1e9
        run["kernels"] = engine.kernels.to_dict()
        close(engine)
        result["runs"][f"{share:g}"] = run
        off = result["runs"]["0"]["output_tok_s"]
        for entry in result["runs"].values():
            entry["ratio_to_pool_off"] = entry["output_tok_s"] / off
        result["measured_knee_share"] = max((float(s) for s, r in result["runs"].items() if r["ratio_to_pool_off"] >= 0.97),
                                            default=0.0)
        record(result)
    result["knee_rule"] = "largest pooled share with output tok/s >= 0.97x pool-off"
    result["profiled_pinned_h2d_gbps"] = _load(out, "profile").get("pinned_h2d_gbps")
    return result


def step_plan_and_bench(out: Path, dry: bool, record, limit_s: float) -> dict:
    profile, plan_path = out / "profile.json", out / "plan.json"
    if not dry and not profile.exists():
        raise RuntimeError("no profile.json: the profile step did not finish, so there is nothing to plan from")
    source = ["--hardware", "h100-pcie"] if dry else ["--profile", str(profile)]
    # A device budget the engine surely finds free (the default, all of the GPU's memory, is not free once
    # CUDA and torch started); OPT-1.3b's batch of 64 needs a sixth of it.
    tuned = _pie("tune", "--model", MODEL, *source, "--dtype", DTYPE, "--max-num-seqs", str(BATCH),
                 "--gpu-memory", "2GB" if REHEARSAL else "24GB",
                 "--output", str(plan_path), "--json", timeout=25)
    if tuned.returncode != 0:
        raise RuntimeError(f"pie tune exited {tuned.returncode} (its messages are above)")
    plan = json.loads(tuned.stdout)
    result = {"tune_source": " ".join(source), "predicted": plan["predicted"], "settings": plan["settings"],
              "binding": plan.get("binding")}
    record(result)
    if dry:
        return {**result, "bench": "skipped: dry run (needs a GPU)"}
    # Every request as long as the workload's means the plan was made for, twice the batch: a full batch throughout.
    benched = _pie("bench", "--model", MODEL, "--plan", str(plan_path), "--device", DEVICE, "--dtype", DTYPE,
                   "--workload", "fixed", "--input-len", str(BENCH_LENGTHS[0]), "--output-len", str(BENCH_LENGTHS[1]),
                   "-n", str(2 * BATCH),
                   "--results-dir", str(out / "results"), "--json", timeout=limit_s - 30)
    if benched.returncode != 0:
        raise RuntimeError(f"pie bench exited {benched.returncode} (its messages are above)")
    measured = json.loads(benched.stdout)["summary"]
    result.update(measured_output_throughput=measured.get("output_throughput"),
                  predicted_output_tok_s=plan["predicted"]["output_tok_s"], bench_summary=measured)
    if measured.get("output_throughput"):
        result["measured_over_predicted"] = measured["output_throughput"] / plan["predicted"]["output_tok_s"]
    return result


STEP_FUNCTIONS = {"environment": step_environment, "gpu_tests": step_gpu_tests, "profile": step_profile,
                  "kernels": step_kernels, "correctness": step_correctness, "transparency": step_transparency,
                  "plan_and_bench": step_plan_and_bench}
