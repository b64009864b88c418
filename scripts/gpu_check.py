"""One short run of everything pie's CUDA paths need measured, for the first GPU machine at hand.

    python scripts/gpu_check.py OUT_DIR [--budget-s 450] [--steps a,b] [--dry-run]

Writes OUT_DIR/gpu_check.json (rewritten after every step, so a killed run keeps what finished)
and OUT_DIR/gpu_check.log (every step's output). Each step runs in its own child process under
a timeout (its box, cut to what is left of `--budget-s`), so a failure or a hang in one leaves the
others' results. Steps (`STEPS`):

- `environment`: versions, the GPU, the kernels the engine resolves (Triton or the named fallback);
- `gpu_tests`: the suite's `gpu`-marked tests (Triton compiled on the GPU among them), per test;
- `profile`: `pie profile --device cuda --quick --model opt-1.3b`: pinned/pageable H2D, D2H, both
  at once, HBM bandwidth, matmul rate, the layer grid;
- `correctness`: greedy tokens of the engine == transformers (fp32, CUDA) for a tiny OPT and a tiny
  GQA Llama: pool off, pool on (copy stream), rebuild 0.5 (OPT);
- `attention_kernel`: decode attention time and GB/s of K/V read, Triton vs the PyTorch path, against
  the profiled HBM bandwidth;
- `throughput`: engine vs `transformers.generate`, OPT-1.3b shape, random fp16 weights, one batch;
- `transparency`: the same batch with 0 / 10 / 25 / 50 % of its KV pooled: tok/s ratio, stall
  fraction, streamed GB/s against the profiled pinned H2D peak, and the measured knee;
- `plan`: `pie tune` on the profile, the planner's largest transparent pooled share next to the knee.

`--dry-run` (CPU, in the suite): checks the arguments, finds the steps, runs `environment` and
`plan` (on the built-in `h100-pcie` sheet) and writes the JSON and log; the GPU steps are recorded
as skipped. Left out: multi-GPU, installing anything (scripts/gpu_check.sh does that).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = "opt-1.3b"
BATCH = 32
SHARES = (0.0, 0.1, 0.25, 0.5)
STEPS = {  # name: (timeout box in seconds, needs a GPU)
    "environment": (30, False), "gpu_tests": (120, True), "profile": (75, True), "correctness": (45, True),
    "attention_kernel": (30, True), "throughput": (60, True), "transparency": (90, True), "plan": (20, False),
}


def _pie(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from pie_cli.app import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False, env=_env())


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def _load(out: Path, name: str) -> dict:
    path = out / "steps" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


# --- steps (each runs in a child process and returns a JSON-able dict) -------------------------
def step_environment(out: Path, dry: bool) -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        info["triton"] = f"not importable: {err}"
    if torch.cuda.is_available():
        from runners.engine.kernels import resolve_kernels

        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    kernels_float16=resolve_kernels("cuda", "float16").to_dict())
    return info


def step_gpu_tests(out: Path, dry: bool) -> dict:
    import xml.etree.ElementTree as ET

    report = out / "gpu_tests.xml"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                             f"--junitxml={report}", "tests"], cwd=REPO, capture_output=True, text=True, env=_env(),
                            check=False, timeout=STEPS["gpu_tests"][0] - 5)
    print(result.stdout[-6000:], result.stderr[-2000:])
    cases = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return {"exit_code": result.returncode, "summary": (result.stdout.strip().splitlines() or [""])[-1], "tests": cases}


def step_profile(out: Path, dry: bool) -> dict:
    path = out / "profile.json"
    result = _pie("profile", "--device", "cuda", "--quick", "--model", MODEL, "--dtype", "float16",
                  "--output", str(path), timeout=STEPS["profile"][0] - 5)
    print(result.stderr[-4000:])
    if result.returncode != 0:
        raise RuntimeError(f"pie profile exited {result.returncode}: {result.stderr[-500:]}")
    from profiler.hardware_profile import HardwareProfile

    profile = HardwareProfile.from_dict(json.loads(path.read_text()))
    link = {f"{kind}_{direction}_gbps": profile.best_gbps(direction, kind)
            for kind in ("pinned", "pageable") for direction in ("h2d", "d2h", "bidirectional")}
    return {"profile": str(path), **link, "hbm_gbps": profile.memory_bandwidth_gbps,
            "matmul_tflops_float16": profile.matmul_tflops, "layer_points": len(profile.layer_timings),
            "kernels": profile.extra.get("kernels")}


def step_correctness(out: Path, dry: bool) -> dict:
    import torch
    import transformers

    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    root = Path(tempfile.mkdtemp(prefix="pie-gpu-check-"))
    torch.manual_seed(0)
    models = {
        "opt": transformers.OPTForCausalLM(transformers.OPTConfig(
            vocab_size=97, hidden_size=32, num_hidden_layers=4, ffn_dim=64, num_attention_heads=4,
            max_position_embeddings=96, word_embed_proj_dim=32)).eval(),
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=101, hidden_size=48, num_hidden_layers=4, intermediate_size=80, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=128)).eval()}
    settings = {"pool_off": {"num_device_blocks": 64},
                "pool_stream": {"num_device_blocks": 38, "num_pool_blocks": 24, "prefetch_depth": 3},
                "rebuild_0.5": {"num_device_blocks": 38, "num_pool_blocks": 24, "prefetch_depth": 2, "rebuild_fraction": 0.5}}
    results = {}
    for family, model in models.items():
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.3)
        model.save_pretrained(root / family, safe_serialization=True)
        generator = torch.Generator().manual_seed(1)
        prompts = [torch.randint(3, model.config.vocab_size, (int(n),), generator=generator).tolist()
                   for n in torch.randint(5, 30, (6,), generator=generator)]
        reference = []
        for prompt in prompts:
            tokens = list(prompt)
            with torch.no_grad():
                for _ in range(12):
                    tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
            reference.append(tokens[len(prompt):])
        for name, extra in settings.items():
            if name == "rebuild_0.5" and family != "opt":
                continue
            engine = LLMEngine(EngineConfig(model=str(root / family), dtype="float32", device="cuda", block_size=4,
                                            max_num_seqs=6, **extra))
            outputs = engine.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
            results[f"{family}/{name}"] = {
                "equal": [o.output_token_ids for o in outputs] == reference,
                "streamed_bytes": sum(s.h2d_bytes for s in engine.stats), "decode": engine.kernels.decode_attention}
    return {"all_equal": all(r["equal"] for r in results.values()), "runs": results}


def step_attention_kernel(out: Path, dry: bool) -> dict:
    import torch

    from profiler.timing import time_call
    from runners.engine import attention

    heads, head_dim, block_size = 32, 64, 16  # OPT-1.3b
    rows = {}
    for batch, context in ((BATCH, 2048), (8, 4096)):
        blocks = batch * context // block_size
        cache = torch.randn(blocks + 64, 2, block_size, heads, head_dim, dtype=torch.float16, device="cuda")
        tables = torch.randperm(blocks, device="cuda").view(batch, -1)
        lens = torch.full((batch,), context, device="cuda")
        q = torch.randn(batch, heads, head_dim, dtype=torch.float16, device="cuda")
        read_bytes = batch * context * 2 * heads * head_dim * 2
        for path in ("triton", "torch"):
            call = functools.partial(attention.paged_decode_attention, q, cache, tables, lens, head_dim ** -0.5, path)
            try:
                timing = time_call(call, device="cuda", repeats=9, warmup=3, calls_per_sample=5)
            except Exception as err:  # noqa: BLE001 - one path failing still leaves the other's figure
                rows[f"b{batch}_ctx{context}_{path}"] = {"error": f"{type(err).__name__}: {err}"}
                continue
            rows[f"b{batch}_ctx{context}_{path}"] = {"median_us": timing.median_s * 1e6,
                                                     "kv_read_gbps": read_bytes / timing.median_s / 1e9}
    hbm = _load(out, "profile").get("result", {}).get("hbm_gbps")
    for row in rows.values():  # the profile counts a copy's read + write; a kernel that only reads is held to the same figure
        if "kv_read_gbps" in row:
            row["fraction_of_hbm"] = row["kv_read_gbps"] / hbm if hbm else None
    return {"shape": f"Hq=Hkv={heads}, dh={head_dim}, block {block_size}, fp16", "profiled_hbm_gbps": hbm, "rows": rows}


def _requests(count: int, prompt: int, output: int, vocab: int, seed: int = 0):
    import random

    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(prompt)] for _ in range(count)], output


def step_throughput(out: Path, dry: bool) -> dict:
    import torch
    import transformers

    from pie_core.shapes import REGISTRY
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams
    from runners.hf_runner import hf_config_from_shape

    shape = REGISTRY[MODEL]
    prompts, output = _requests(BATCH, 128, 128, shape.vocab_size)
    engine = LLMEngine(EngineConfig(model=MODEL, dtype="float16", device="cuda", random_weights=True, block_size=16,
                                    num_device_blocks=BATCH * 16 + 64, max_num_seqs=BATCH, max_num_batched_tokens=4096))
    params = SamplingParams(max_tokens=output, ignore_eos=True)
    engine.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    began = time.perf_counter()
    outputs = engine.generate(prompts, params)
    pie_s = time.perf_counter() - began
    pie_tokens = sum(len(o.output_token_ids) for o in outputs)
    kernels = engine.kernels.to_dict()
    del engine
    torch.cuda.empty_cache()
    model = transformers.AutoModelForCausalLM.from_config(hf_config_from_shape(shape), torch_dtype=torch.float16).cuda().eval()
    ids = torch.tensor(prompts, device="cuda")
    kwargs = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 1}
    with torch.no_grad():
        model.generate(ids[:2], max_new_tokens=4, min_new_tokens=4, **kwargs)
        torch.cuda.synchronize()
        began = time.perf_counter()
        generated = model.generate(ids, max_new_tokens=output, min_new_tokens=output, **kwargs)
        torch.cuda.synchronize()
        hf_s = time.perf_counter() - began
    hf_tokens = (generated.shape[1] - ids.shape[1]) * BATCH
    return {"model": f"{MODEL} shape, random fp16 weights", "batch": BATCH, "prompt_len": 128, "output_len": output,
            "pie_output_tok_s": pie_tokens / pie_s, "hf_output_tok_s": hf_tokens / hf_s,
            "pie_over_hf": (pie_tokens / pie_s) / (hf_tokens / hf_s), "kernels": kernels}


def step_transparency(out: Path, dry: bool) -> dict:
    from benchmarks.bench_engine_transparency import run_once
    from runners.engine.config import EngineConfig

    prompts, output = _requests(BATCH, 512, 64, 50000, seed=1)
    requests = [(prompt, output) for prompt in prompts]
    need = BATCH * -(-(512 + output) // 16)
    base = EngineConfig(model=MODEL, dtype="float16", device="cuda", random_weights=True, block_size=16,
                        max_num_seqs=BATCH, max_num_batched_tokens=8192)
    layers = base.shape.num_layers
    runs = {}
    for share in SHARES:
        pooled = int(need * share)
        config = base.replace(num_device_blocks=need - pooled + BATCH + -(-2 * pooled // layers),
                              num_pool_blocks=pooled, prefetch_depth=2)
        result, engine = run_once(config, requests)
        result["h2d_gbps_over_wall"] = result["h2d_bytes"] / result["wall_s"] / 1e9
        result["block_layer_bytes"] = engine.cache.block_layer_bytes
        runs[f"{share:g}"] = result
        del engine
    off = runs["0"]["output_tok_s"]
    for result in runs.values():
        result["ratio_to_pool_off"] = result["output_tok_s"] / off
    knee = max((float(s) for s, r in runs.items() if r["ratio_to_pool_off"] >= 0.95), default=0.0)
    peak = _load(out, "profile").get("result", {}).get("pinned_h2d_gbps")
    return {"batch": BATCH, "prompt_len": 512, "output_len": output, "kv_blocks_needed": need, "runs": runs,
            "measured_knee_share": knee, "knee_rule": "largest pooled share with tok/s >= 0.95x pool-off",
            "profiled_pinned_h2d_gbps": peak}


def step_plan(out: Path, dry: bool) -> dict:
    profile = out / "profile.json"
    source = ["--hardware", "h100-pcie"] if dry or not profile.exists() else ["--profile", str(profile)]
    result = _pie("tune", "--model", MODEL, *source, "--dtype", "float16", "--max-num-seqs", str(BATCH), "--json",
                  timeout=STEPS["plan"][0] - 3)
    if result.returncode != 0:
        raise RuntimeError(f"pie tune exited {result.returncode}: {result.stderr[-500:]}")
    plan = json.loads(result.stdout)
    predicted = plan["predicted"]
    # The planner's transparency rule: a step's pooled bytes hide while their copy takes no longer than
    # the step's compute, so the largest hidden share = (bytes the link moves in one compute time) / batch KV.
    link_gbps = predicted["streamed_bytes_per_step"] / predicted["copy_ms_per_step"] * 1e-6 if predicted.get("copy_ms_per_step") else None
    link_gbps = link_gbps or plan.get("hardware", {}).get("link_h2d_gbps")
    sweep = _load(out, "transparency").get("result", {})
    share = None
    if sweep and link_gbps:
        first = sweep["runs"]["0"]
        kv_bytes = first["peak_device_blocks"] * first["block_layer_bytes"] * 24  # OPT-1.3b: 24 layers
        share = min(1.0, link_gbps * 1e9 * predicted["compute_ms_per_step"] / 1e3 / kv_bytes)
    return {"source": " ".join(source), "predicted": predicted, "binding": plan.get("binding"),
            "link_h2d_gbps_used": link_gbps, "predicted_largest_transparent_share": share,
            "measured_knee_share": sweep.get("measured_knee_share")}


# --- driver ------------------------------------------------------------------------------------
def run_step(name: str, out: Path, dry: bool) -> None:
    """Child process: run one step and write OUT/steps/NAME.json."""
    began = time.perf_counter()
    result = globals()[f"step_{name}"](out, dry)
    (out / "steps").mkdir(exist_ok=True)
    (out / "steps" / f"{name}.json").write_text(json.dumps(
        {"status": "ok", "seconds": time.perf_counter() - began, "result": result}, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of all steps")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: parse, find the steps, run the CPU ones")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = parser.parse_args(argv)
    chosen = args.steps.split(",")
    unknown = [name for name in chosen if name not in STEPS or f"step_{name}" not in globals()]
    if unknown:
        parser.error(f"unknown steps {unknown}; expected some of {', '.join(STEPS)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step:
        run_step(args.step, args.out, args.dry_run)
        return 0
    deadline = time.monotonic() + args.budget_s
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
              "budget_s": args.budget_s, "steps": {}}
    for name in chosen:  # results of an earlier run in this folder must not pass for this one's
        (args.out / "steps" / f"{name}.json").unlink(missing_ok=True)
    log = (args.out / "gpu_check.log").open("a")
    for name in chosen:
        box, needs_gpu = STEPS[name]
        left = deadline - time.monotonic()
        if args.dry_run and needs_gpu:
            entry = {"status": "skipped", "why": "dry run (needs a GPU)", "timeout_s": box}
        elif left < 5:
            entry = {"status": "skipped", "why": f"budget spent ({args.budget_s:g} s)"}
        else:
            timeout = min(box, left)
            command = [sys.executable, __file__, str(args.out), "--step", name] + (["--dry-run"] if args.dry_run else [])
            print(f"== {name} (timeout {timeout:.0f} s)", file=log, flush=True)
            began = time.monotonic()
            try:
                done = subprocess.run(command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout, check=False)
                stored = _load(args.out, name)
                if done.returncode == 0 and stored:
                    entry = stored
                else:
                    entry = {"status": "failed", "exit_code": done.returncode, "why": "see gpu_check.log"}
            except subprocess.TimeoutExpired:
                entry = {"status": "timeout", "timeout_s": timeout}
            entry["wall_s"] = time.monotonic() - began
        print(f"{name}: {entry['status']}", file=sys.stderr, flush=True)
        report["steps"][name] = entry
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    log.close()
    failed = [name for name, entry in report["steps"].items() if entry["status"] in ("failed", "timeout")]
    print(f"wrote {args.out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
