"""examples/ci/ab.sh end to end on this machine: A/A false alarms and a 10% slowdown caught.

The script under test is the one a user's CI calls. This benchmark makes a git repository holding this
checkout's files with three commits: `base`, `equal` (a comment line added, no code change) and
`slowed` (every engine step sleeps `--slowdown` times its own wall time after it, appended to
runners/request_loop.py: a real slowdown in the code, not a test hook). Then it runs
`ab.sh --env current` for each pair: A/A pairs compare `base` with `equal`, A/B pairs `base` with
`slowed`, each at the example's runs per side (examples/ci/pie-bench.yml RUNS) with its rules, and
counts the pairs whose verdict fired (exit 3). Targets: A/A false alarms <= 5% of pairs, the slowdown
caught in >= 9 of 10. ab.sh is run from the fixture's copy, so editing the checkout changes no run.

The runs use a small OPT-shaped model with seeded random weights (a config.json written here) and one
OpenMP thread (`--threads`), so a pair takes about a minute on a 2-core machine; the example's opt-125m
runs are longer, and so less noisy relative to a 10% change. `--quick`: one pair of each kind at 2 runs
per side with a tinier model (a real check, about a minute; its JSON goes to --out or a temporary
folder, never docs/results); `--dry-run`: make the repository and print the commands, run nothing
(seconds). Writes docs/results/ab_interleaved.json.

Usage: python benchmarks/bench_ab_interleaved.py [--pairs 20] [--ab-pairs 10] [--quick|--dry-run]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # quick_mode, also when a test loads this file by path

from quick_mode import RESULTS, add_quick_argument, output_path  # noqa: E402

AB_SCRIPT = ROOT / "examples" / "ci" / "ab.sh"
WORKFLOW = ROOT / "examples" / "ci" / "pie-bench.yml"

SLOWDOWN_PATCH = '''

# A/B fixture (benchmarks/bench_ab_interleaved.py): every engine step takes (1 + {fraction}) times its own
# wall time, a real slowdown of this commit for examples/ci/ab.sh to find.
import time as _fixture_time  # noqa: E402


class _FixtureSlowedEngine:
    def __init__(self, engine):
        self.engine, self.name = engine, engine.name

    def add(self, request):
        self.engine.add(request)

    def step(self):
        began = _fixture_time.perf_counter()
        deltas = self.engine.step()
        _fixture_time.sleep({fraction} * (_fixture_time.perf_counter() - began))
        return deltas


_fixture_drive_engine = drive_engine


def drive_engine(engine, *args, **kwargs):  # noqa: F811
    return _fixture_drive_engine(_FixtureSlowedEngine(engine), *args, **kwargs)
'''


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ab fixture", "GIT_AUTHOR_EMAIL": "ab@example.invalid",
           "GIT_COMMITTER_NAME": "ab fixture", "GIT_COMMITTER_EMAIL": "ab@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def make_fixture_repo(repo: Path, slowdown: float, source: Path = ROOT) -> dict[str, str]:
    """A git repository at `repo` with this checkout's files: commits base, equal, slowed; returns their shas."""
    listed = subprocess.run(["git", "-C", str(source), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        origin = source / name
        if origin.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, repo / name)
    _git(repo, "init", "--quiet")
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", "base")
    shas = {"base": _git(repo, "rev-parse", "HEAD")}
    loop = repo / "runners" / "request_loop.py"
    original = loop.read_text(encoding="utf-8")
    loop.write_text(original + "\n# an equal commit: this comment is the only change\n", encoding="utf-8")
    _git(repo, "commit", "--quiet", "-am", "equal")
    shas["equal"] = _git(repo, "rev-parse", "HEAD")
    loop.write_text(original + SLOWDOWN_PATCH.format(fraction=slowdown), encoding="utf-8")
    _git(repo, "commit", "--quiet", "-am", f"slowed by {slowdown:g}")
    shas["slowed"] = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "--quiet", shas["base"])
    return shas


def write_model_dir(directory: Path, hidden_size: int, num_layers: int) -> Path:
    """An OPT-shaped config.json (the engine fills seeded random weights; nothing is downloaded)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "opt", "activation_function": "relu", "do_layer_norm_before": True,
              "enable_bias": True, "layer_norm_elementwise_affine": True, "tie_word_embeddings": True,
              "hidden_size": hidden_size, "word_embed_proj_dim": hidden_size, "ffn_dim": 4 * hidden_size,
              "num_attention_heads": 4, "num_hidden_layers": num_layers, "vocab_size": 2048,
              "max_position_embeddings": 512, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}
    (directory / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return directory


def example_settings() -> tuple[int, list[str]]:
    """RUNS and RULES of examples/ci/pie-bench.yml (the pair's runs per side and rules)."""
    text = WORKFLOW.read_text(encoding="utf-8")
    runs = int(re.search(r'^\s*RUNS:\s*"?(\d+)"?', text, re.MULTILINE)[1])
    rules = re.findall(r"--fail-on\s+(\S+)", re.search(r"^\s*RULES:(.*)$", text, re.MULTILINE)[1])
    return runs, rules


def ab_command(repo: Path, head: str, base: str, workdir: Path, args: argparse.Namespace,
               rules: list[str], model: Path) -> list[str]:
    # the fixture's own copy of ab.sh: editing the checkout's while a long run goes on changes nothing
    command = ["bash", str(repo / AB_SCRIPT.relative_to(ROOT)), "--env", "current", "--python", sys.executable, "--repo", str(repo),
               "--workdir", str(workdir), "--runs", str(args.runs_per_side), "--format", "json"]
    command += [word for rule in rules for word in ("--fail-on", rule)]
    return command + [base, head, "--", "--model", str(model), "--workload", "uniform", "--input-len",
                      str(args.input_len), "--output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
                      "--seed", "0"]


def run_pair(kind: str, index: int, command: list[str], workdir: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else dict(os.environ)
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall_s = time.perf_counter() - began
    if done.returncode not in (0, 3):
        raise SystemExit(f"{kind} pair {index}: ab.sh exited {done.returncode}: {done.stderr.strip()[-600:]}")
    payload = json.loads(done.stdout)
    rows = {row["metric"]: row for row in payload["rows"]}
    pick = ("before", "after", "change_pct", "p_value", "significant")
    summary = {"pair": index, "exit_code": done.returncode, "fired": payload["fired_rules"], "wall_s": round(wall_s, 1),
               "output_throughput": {k: rows["output_throughput"][k] for k in pick},
               "p99_ttft_ms": {k: rows["p99_ttft_ms"][k] for k in pick}}
    print(f"{kind} pair {index}: exit {done.returncode}, output_throughput "
          f"{rows['output_throughput']['change_pct']:+.1f}% (p={rows['output_throughput']['p_value']:.3g}), "
          f"{wall_s:.0f} s", file=sys.stderr, flush=True)
    summary["machine"] = _machine(workdir)
    summary["runs_output_throughput"] = _run_throughputs(workdir)
    return summary


def _run_throughputs(workdir: Path) -> list[list]:
    """[label, output tok/s] of each timed run, in the order they ran."""
    runs = []
    for path in sorted((workdir / "results").glob("*.jsonl")):
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        summary = next((line.get("summary") for line in lines if line.get("summary")), None) or {}
        runs.append([lines[0].get("label"), lines[0].get("run_id"), summary.get("output_throughput")])
    return [[label, value] for label, _, value in sorted(runs, key=lambda run: run[1])]


def _machine(workdir: Path) -> dict:
    record = next(iter(sorted((workdir / "results").glob("*.jsonl"))), None)
    if record is None:
        return {}
    header = json.loads(record.read_text(encoding="utf-8").splitlines()[0])
    fingerprint = header.get("fingerprint") or header.get("header", {}).get("fingerprint") or {}
    keys = ("cpu_model", "cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping", "cpu_cores")
    return {**{k: fingerprint.get(k) for k in keys},
            "torch_cpu_capability": (fingerprint.get("capability") or {}).get("torch_cpu_capability")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    example_runs, example_rules = example_settings()
    parser.add_argument("--pairs", type=int, default=20, help="A/A pairs (base against the equal commit)")
    parser.add_argument("--ab-pairs", type=int, default=10, help="A/B pairs (base against the slowed commit)")
    parser.add_argument("--runs-per-side", type=int, default=example_runs, help="default: the example's RUNS")
    parser.add_argument("--slowdown", type=float, default=0.1, help="the slowed commit's extra step time, a fraction")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (0: inherit)")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder, removed at the end")
    add_quick_argument(parser)  # here: 1 pair of each kind, 2 runs per side, a tinier model (about a minute)
    parser.add_argument("--dry-run", action="store_true", help="make the repository, print the commands, run nothing")
    parser.add_argument("--output", "--out", type=Path, help="default: docs/results/ab_interleaved.json")
    parser.add_argument("--summarize-only", type=Path, metavar="JSON",
                        help="run nothing; rewrite the summary of this results file from its pairs (planned: --pairs, --ab-pairs)")
    args = parser.parse_args()
    if args.summarize_only:
        return resummarize(args, args.summarize_only, example_rules)
    if args.quick:
        args.pairs, args.ab_pairs, args.runs_per_side = 1, 1, 2
        args.hidden_size, args.num_layers, args.num_prompts, args.output_len = 32, 2, 8, 32
    output = None if args.dry_run else output_path(args.output, RESULTS / "ab_interleaved.json", args.quick)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pie-ab-bench-"))
    repo = workdir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    try:
        shas = make_fixture_repo(repo, args.slowdown)
        model = write_model_dir(workdir / "model", args.hidden_size, args.num_layers)
        plan = [("aa", k, shas["base"], shas["equal"]) for k in range(args.pairs)]
        plan += [("ab", k, shas["base"], shas["slowed"]) for k in range(args.ab_pairs)]
        # A/A and A/B pairs alternate, so a slow stretch of the shared machine falls on both kinds.
        counts = {"aa": args.pairs, "ab": args.ab_pairs}
        plan.sort(key=lambda item: (item[1] + 0.5) / counts[item[0]])
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        pairs: dict[str, list[dict]] = {"aa": [], "ab": []}
        for kind, index, base, head in plan:
            command = ab_command(repo, head, base, workdir / f"{kind}-{index}", args, example_rules, model)
            if args.dry_run:
                print(" ".join(command))
                continue
            pairs[kind].append(run_pair(kind, index, command, workdir / f"{kind}-{index}", args.threads))
            result = summarize(args, pairs, example_rules, started)
            if output:  # after every pair, so a long run stopped early keeps what it measured
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if args.dry_run:
            return 0
        print(f"A/A: fired on {result['aa']['pairs_fired']}/{result['aa']['pairs']} pairs; A/B ({args.slowdown:.0%} slower): "
              f"caught in {result['ab']['pairs_fired']}/{result['ab']['pairs']}" + (f" -> {output}" if output else ""))
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def summarize(args: argparse.Namespace, pairs: dict[str, list[dict]], rules: list[str], started: str) -> dict:
    machines = [p["machine"] for kind in pairs for p in pairs[kind]]
    result = {"command": " ".join([Path(sys.executable).name] + sys.argv), "started_at": started,
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": next((m for m in machines if m), {}),
              "distinct_machines_seen": len({json.dumps(m, sort_keys=True) for m in machines if m}),
              "machine_shared": "shared with other agents' builds and tests while it ran; interleaving base and head "
                                "is what keeps the verdict from measuring that load",
              "procedure": f"examples/ci/ab.sh --env current: worktrees of base and head, one untimed warm-up each, "
                           f"then base, head, ... {args.runs_per_side} runs per side, same seed, pie compare with the rules",
              "runs_per_side": args.runs_per_side, "rules": rules, "slowdown": args.slowdown,
              "omp_num_threads": args.threads,
              "workload": {"model": f"OPT-shaped, hidden {args.hidden_size}, {args.num_layers} layers, seeded random weights",
                           "input_len": args.input_len, "output_len": args.output_len, "num_prompts": args.num_prompts},
              "targets": {"aa_fired_share_max": 0.05, "ab_caught_min": "9 of 10"},
              "pairs_planned": {"aa": args.pairs, "ab": args.ab_pairs},
              "complete": len(pairs["aa"]) >= args.pairs and len(pairs["ab"]) >= args.ab_pairs}
    for kind, items in pairs.items():
        fired = sum(p["exit_code"] == 3 for p in items)
        changes = [p["output_throughput"]["change_pct"] for p in items if p["output_throughput"]["change_pct"] is not None]
        result[kind] = {"pairs": len(items), "pairs_fired": fired, "fired_share": fired / len(items) if items else None,
                        "output_throughput_change_pct_median": statistics.median(changes) if changes else None,
                        "pair_wall_s_mean": statistics.fmean(p["wall_s"] for p in items) if items else None,
                        **run_noise(items, args.runs_per_side, len(rules)),
                        "per_pair": [{k: v for k, v in p.items() if k != "machine"} for p in items]}
    result["targets_met"] = {"aa": result["aa"]["pairs"] > 0 and result["aa"]["fired_share"] <= 0.05,
                             "ab": result["ab"]["pairs"] > 0 and result["ab"]["pairs_fired"] >= 0.9 * result["ab"]["pairs"]}
    return result


def run_noise(items: list[dict], runs_per_side: int, num_rules: int, alpha: float = 0.05) -> dict:
    """The runs' noise: median over pairs of the within-side standard deviation of log output throughput,
    and the smallest slowdown a t-test on `runs_per_side` runs per side (at alpha / rules) catches 90% of the time."""
    from scipy import stats

    sds = []
    for pair in items:
        sides = {}
        for label, value in pair.get("runs_output_throughput", []):
            if value:
                sides.setdefault(label, []).append(math.log(value))
        if len(sides) == 2 and all(len(v) > 1 for v in sides.values()):
            sds.append(math.sqrt(statistics.fmean([statistics.variance(v) for v in sides.values()])))
    if not sds:
        return {}
    sd = statistics.median(sds)
    freedom = 2 * runs_per_side - 2
    needed = (stats.t.ppf(1 - alpha / num_rules / 2, freedom) + stats.t.ppf(0.9, freedom)) * sd * math.sqrt(2 / runs_per_side)
    return {"run_log_sd_median": sd, "smallest_slowdown_caught_90pct_pct": 100 * (1 - math.exp(-needed))}


def resummarize(args: argparse.Namespace, path: Path, rules: list[str]) -> int:
    """Rewrite the summary of a results file from its per-pair records (e.g. one a long run stopped early)."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    pairs = {kind: [{**pair, "machine": saved.get("machine", {})} for pair in saved[kind]["per_pair"]] for kind in ("aa", "ab")}
    args.runs_per_side, args.slowdown, args.threads = saved["runs_per_side"], saved["slowdown"], saved["omp_num_threads"]
    result = summarize(args, pairs, saved.get("rules", rules), saved["started_at"])
    result["finished_at"], result["command"] = saved["finished_at"], saved["command"]
    result["summarized_by"] = " ".join([Path(sys.executable).name] + sys.argv)
    result["workload"] = saved["workload"]
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"A/A: fired on {result['aa']['pairs_fired']}/{result['aa']['pairs']} pairs; A/B: caught in "
          f"{result['ab']['pairs_fired']}/{result['ab']['pairs']} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
