"""A/A and A/B check of `pie compare` on real `pie bench` runs on this machine.

A/A: `--pairs` pairs of sides, each side `--runs-per-side` runs of the same configuration, base
and new runs interleaved (A B A B ...) so slow drifts of a shared machine hit both sides. The
rules must fire on at most 5% of pairs. A/B: the new side runs through benchmarks/slowed_pie.py
(each engine step sleeps `--slowdown` times its own wall time after it); the throughput rule must
fire on every pair. The same runs are also compared one against one
(k-th base run vs k-th new run) to show what a single run per side can and cannot tell.

Each run uses one OpenMP thread by default (`--threads`): on a shared 2-core machine two threads
against another job's threads made some runs 10-20x slower, noise no test can see through.

Usage (heavy; take the shared lock):
  flock /tmp/pie-heavy.lock python benchmarks/bench_compare_aa.py --pairs 20 --ab-pairs 10
  python benchmarks/bench_compare_aa.py --analyze-only --results-dir .pie/compare_aa/<stamp>

Writes docs/results/compare_aa.json and, from the first pairs, the markdown of a clean and of a
regressed comparison (docs/results/compare_markdown_{clean,regression}.md). `--quick`: one A/A and one
A/B pair of one 2-request run a side (give a tiny `--model`), the store beside `--output`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pie_cli.compare_cmd import to_markdown  # noqa: E402
from results.compare import CompareOptions, Side, compare, resolve_side  # noqa: E402
from results.rules import parse_rules  # noqa: E402
from results.store import ResultsStore  # noqa: E402
from quick_mode import add_quick_argument, output_path  # noqa: E402

DEFAULT_BENCH = ("pie bench --model {model} --runner {runner} --workload uniform --input-len 32 --output-len 32 "
                 "--num-prompts {num_prompts} --seed 0 --results-dir {results_dir} --label {label} --json")
DEFAULT_RULES = ("output_throughput:-5%", "p99_ttft_ms:+10%")


def bench(template: str, label: str, args: argparse.Namespace, slowdown: float | None) -> float:
    """One `pie bench` run; returns its wall time in seconds. A failed run is retried once."""
    command = template.format(model=args.model, runner=args.runner, num_prompts=args.num_prompts,
                              results_dir=args.results_dir, label=label)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # no OpenMP oversubscription against other jobs
    words = shlex.split(command)
    if slowdown:  # `pie bench ...` -> `python benchmarks/slowed_pie.py FRACTION bench ...`
        words = [sys.executable, str(ROOT / "benchmarks" / "slowed_pie.py"), str(slowdown), *words[1:]]
    elif words[0] == "pie":  # this checkout's pie, with this Python, whatever is on PATH
        words = [sys.executable, "-m", "pie_cli.app", *words[1:]]
    for attempt in range(2):
        start = time.perf_counter()
        done = subprocess.run(words, env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode == 0:
            return time.perf_counter() - start
        print(f"run {label} failed (attempt {attempt + 1}): {done.stderr.strip()[-300:]}", file=sys.stderr)
    raise SystemExit(f"pie bench failed twice for {label}: {command}")


def run_all(args: argparse.Namespace) -> dict[str, list[float]]:
    wall = {"aa": [], "ab": []}
    total = (args.pairs + args.ab_pairs) * args.runs_per_side * 2
    done = 0
    for kind, pairs, slowdown in (("aa", args.pairs, None), ("ab", args.ab_pairs, args.slowdown)):
        for pair in range(pairs):
            for _ in range(args.runs_per_side):  # interleaved: base, new, base, new ...
                wall[kind].append(bench(args.bench, f"{kind}-{pair}-base", args, None))
                wall[kind].append(bench(args.bench, f"{kind}-{pair}-new", args, slowdown))
                done += 2
                print(f"{done}/{total} runs", file=sys.stderr, flush=True)
    return wall


def _row(comparison, metric: str) -> dict:
    rows = comparison.frame.set_index("metric")
    if metric not in rows.index:
        return {}
    row = rows.loc[metric]
    number = lambda v: None if v is None or v != v else float(v)  # noqa: E731
    return {"change_pct": number(row["change_pct"]), "p_value": number(row["p_value"]),
            "significant": None if row["significant"] is None else bool(row["significant"])}


def analyze(args: argparse.Namespace, rules: tuple) -> dict:
    store = ResultsStore(args.results_dir)
    result: dict = {}
    examples = {}
    for kind, pairs in (("aa", args.pairs), ("ab", args.ab_pairs)):
        per_pair, single = [], {"comparisons": 0, "fired": 0, "fired_with_fail_untested": 0, "throughput_rule_fired": 0,
                                "throughput_rule_fired_with_fail_untested": 0}
        for pair in range(pairs):
            base = resolve_side(f"label={kind}-{pair}-base", store)
            new = resolve_side(f"label={kind}-{pair}-new", store)
            comparison = compare(base, new, rules, CompareOptions(alpha=args.alpha))
            examples.setdefault((kind, comparison.regression), comparison)
            per_pair.append({"pair": pair, "fired": list(comparison.fired),
                             "output_throughput": _row(comparison, "output_throughput"),
                             "p99_ttft_ms": _row(comparison, "p99_ttft_ms")})
            for one_base, one_new in zip(base.records, new.records):
                sides = (Side(one_base.run_id, (one_base,)), Side(one_new.run_id, (one_new,)))
                plain = compare(*sides, rules, CompareOptions(alpha=args.alpha))
                loose = compare(*sides, rules, CompareOptions(alpha=args.alpha, allow_untested=True))
                single["comparisons"] += 1
                single["fired"] += plain.regression
                single["fired_with_fail_untested"] += loose.regression
                single["throughput_rule_fired"] += rules[0].text in plain.fired
                single["throughput_rule_fired_with_fail_untested"] += rules[0].text in loose.fired
        fired = sum(bool(p["fired"]) for p in per_pair)
        throughput_fired = sum(rules[0].text in p["fired"] for p in per_pair)
        result[kind] = {"pairs": pairs, "pairs_where_any_rule_fired": fired,
                        "pairs_where_throughput_rule_fired": throughput_fired,
                        "fired_share": fired / pairs if pairs else None, "per_pair": per_pair,
                        "single_run_per_side": single}
    throughputs = [r.summary["output_throughput"] for r in store.records() if r.header.label
                   and r.header.label.startswith("aa-") and r.summary and "output_throughput" in r.summary]
    if len(throughputs) > 1:
        result["aa_output_throughput_tok_s"] = {"mean": statistics.fmean(throughputs),
                                                "cv_pct": 100 * statistics.stdev(throughputs) / statistics.fmean(throughputs),
                                                "num_runs": len(throughputs)}
    any_record = next(iter(store.records()), None)
    result["machine"] = any_record.header.fingerprint if any_record else {}
    for (kind, regression), comparison in examples.items():
        name = "regression" if regression else "clean"
        if (kind, name) in (("aa", "clean"), ("ab", "regression")):
            path = args.output.parent / f"compare_markdown_{name}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(to_markdown(comparison) + "\n", encoding="utf-8")
            result[f"markdown_{name}"] = str(path)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20, help="A/A pairs")
    parser.add_argument("--ab-pairs", type=int, default=10, help="A/B pairs (new side slowed down)")
    parser.add_argument("--runs-per-side", type=int, default=3)
    parser.add_argument("--slowdown", type=float, default=0.2, help="A/B new side: each step slowed by this fraction (benchmarks/slowed_pie.py)")
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--runner", default="pie")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--bench", default=DEFAULT_BENCH, help="command template for one run")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for each run (0: inherit). On a shared 2-core machine, 2 threads "
                             "against another job's threads made some runs 10-20x slower (spinning OpenMP barriers)")
    parser.add_argument("--rule", action="append", dest="rules", help="rules (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default .pie/compare_aa/<time> (--quick: beside --output)")
    parser.add_argument("--analyze-only", action="store_true", help="skip the runs; analyze --results-dir")
    parser.add_argument("--output", type=Path, default=None, help="default docs/results/compare_aa.json")
    add_quick_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.ab_pairs, args.runs_per_side, args.num_prompts = 1, 1, 1, 2
    args.output = output_path(args.output, ROOT / "docs" / "results" / "compare_aa.json", args.quick)
    if args.results_dir is None:
        args.results_dir = (args.output.parent / "compare_aa_store" if args.quick
                            else ROOT / ".pie" / "compare_aa" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    rules = parse_rules(args.rules or DEFAULT_RULES)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    wall = {} if args.analyze_only else run_all(args)
    summary = {"command": " ".join([Path(sys.executable).name] + sys.argv), "started_at": started,
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "results_dir": str(args.results_dir), "bench_template": args.bench, "model": args.model,
               "runner": args.runner, "num_prompts": args.num_prompts, "runs_per_side": args.runs_per_side, "omp_num_threads": args.threads,
               "slowdown": args.slowdown, "rules": [r.text for r in rules], "alpha": args.alpha,
               "run_wall_s": {k: {"mean": statistics.fmean(v), "num_runs": len(v)} for k, v in wall.items() if v}}
    summary.update(analyze(args, rules))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    aa, ab = summary["aa"], summary["ab"]
    print(f"A/A: rules fired on {aa['pairs_where_any_rule_fired']}/{aa['pairs']} pairs; "
          f"A/B: throughput rule fired on {ab['pairs_where_throughput_rule_fired']}/{ab['pairs']} pairs -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
