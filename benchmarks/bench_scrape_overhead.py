"""Scraping overhead: what scraping the server's `/metrics` costs the `openai` runner's request rate.

A fast fake server (tests/fake_metrics_server.py, in its own process: no token delay, a `/metrics`
as long as vLLM's, about 49 KB) takes `--num-prompts` requests of 16 prompt / `--output-len` output
tokens at once under `--max-concurrency`; the openai runner drives it with scraping on (every
`--interval-s`, the default 0.5 s) and off (`-O server_metrics=off`), interleaved, the order
alternating in each of `--repeats` pairs: a server that answers at once, so what the scraper takes
from the client would show in the rate. Reports each run's request rate and the client's CPU time per request, each
pair's ratio (on / off), their medians, the ratio of the best runs (the rate the client can reach),
and the CPU one scrape costs this process (100 in a row) as a share of what the client spends per
second. Target: an overhead under 2% (ratios above 0.98, a CPU share under 2%). On a shared machine
the wall-clock ratios of single pairs swing far more than 2% (the JSON keeps the load average);
the CPU measures are the steadier ones. Writes
docs/results/scrape_overhead_<machine>.json (`--quick`: two small pairs, written to `--out` or a temporary
folder, never docs/results).

Run: python benchmarks/bench_scrape_overhead.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pie_core.fingerprint import cpu_model  # noqa: E402
from quick_mode import add_quick_argument, output_path  # noqa: E402
from runners.base import BenchRequest, RunnerSpec  # noqa: E402
from runners.openai_runner import OpenAIRunner  # noqa: E402
from runners.server_metrics import MetricsScraper  # noqa: E402


def machine() -> dict:
    info = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for key in ("cpu family", "model"):
            info[key.replace(" ", "_")] = next(line.split(":")[1].strip() for line in cpuinfo.splitlines()
                                               if line.split(":")[0].strip() == key)
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        info["torch_cpu_capability"] = None
    return info


def _cpu_s() -> float:
    """CPU seconds this process (the client, all its threads) used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_server(padding_histograms: int) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_metrics_server.py"),
                               "--padding-histograms", str(padding_histograms)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    url = server.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        server.kill()
        raise RuntimeError(f"the fake server did not start (said {url!r})")
    return server, url


def one_run(url: str, args: argparse.Namespace, scrape: bool) -> dict:
    requests = [BenchRequest(f"r{i}", None, tuple(range(5, 21)), args.output_len) for i in range(args.num_prompts)]
    options = {"base_url": url, "model_name": "tiny", "scrape_interval_s": args.interval_s,
               **({} if scrape else {"server_metrics": "off"})}
    samples = []
    runner = OpenAIRunner()
    prepared = runner.prepare(RunnerSpec(model="tiny", max_concurrency=args.max_concurrency, options=options))
    cpu_began = _cpu_s()
    result = runner.run(prepared, requests, samples.append)
    cpu_s = _cpu_s() - cpu_began
    failed = sum(not s.success for s in samples)
    if failed:
        raise RuntimeError(f"{failed} requests failed: {result.telemetry['first_errors']}")
    scraped = result.telemetry.get("server_metrics") or {}
    return {"scrape": scrape, "duration_s": result.duration_s, "request_rate": len(samples) / result.duration_s,
            "client_cpu_ms_per_request": cpu_s / len(samples) * 1e3, "client_cpu_s_per_s": cpu_s / result.duration_s,
            "num_scrapes": scraped.get("num_scrapes", 0), "num_failed_scrapes": scraped.get("num_failed_scrapes", 0),
            "token_check": scraped.get("token_check")}


def scrape_cost(url: str, count: int) -> dict:
    """CPU and wall milliseconds of one scrape (fetch and parse), `count` in a row on this process."""
    import asyncio

    async def scrapes() -> tuple[float, float, int]:
        scraper = MetricsScraper(url + "/metrics", 0.5)
        await scraper.scrape_once()
        cpu, wall = _cpu_s(), time.perf_counter()
        good = sum([(await scraper.scrape_once()).exposition is not None for _ in range(count)])
        cpu, wall = _cpu_s() - cpu, time.perf_counter() - wall
        await scraper.close()
        return cpu, wall, good

    cpu, wall, good = asyncio.run(scrapes())
    if good != count:
        raise RuntimeError(f"{count - good} of {count} scrapes failed")
    return {"scrapes": count, "cpu_ms_per_scrape": cpu / count * 1e3, "wall_ms_per_scrape": wall / count * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=4000)
    parser.add_argument("--output-len", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=32)
    parser.add_argument("--interval-s", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--padding-histograms", type=int, default=14)
    add_quick_argument(parser)  # 2 pairs of 60 requests, scraping every 0.1 s
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.repeats, args.interval_s = 60, 2, 0.1
    server, url = start_server(args.padding_histograms)
    try:
        one_run(url, argparse.Namespace(**{**vars(args), "num_prompts": min(50, args.num_prompts)}), True)  # warm-up
        pairs = []
        for repeat in range(args.repeats):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            runs = {scrape: one_run(url, args, scrape) for scrape in order}
            pairs.append({"on": runs[True], "off": runs[False], "ratio": runs[True]["request_rate"] / runs[False]["request_rate"],
                          "first": "on" if order[0] else "off"})
            print(f"pair {repeat + 1}: on {runs[True]['request_rate']:8.1f} req/s ({runs[True]['num_scrapes']} scrapes), "
                  f"off {runs[False]['request_rate']:8.1f} req/s, ratio {pairs[-1]['ratio']:.4f}", flush=True)
        cost = scrape_cost(url, 10 if args.quick else 100)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    ratio = statistics.median(p["ratio"] for p in pairs)
    cpu_ratio = statistics.median(p["on"]["client_cpu_ms_per_request"] / p["off"]["client_cpu_ms_per_request"] for p in pairs)
    best_ratio = max(p["on"]["request_rate"] for p in pairs) / max(p["off"]["request_rate"] for p in pairs)
    client_cpu_s_per_s = statistics.median(p["off"]["client_cpu_s_per_s"] for p in pairs)
    scrape_share = cost["cpu_ms_per_scrape"] / 1e3 / args.interval_s / client_cpu_s_per_s
    result = {"benchmark": "scrape_overhead", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "median_ratio_on_off": ratio, "overhead_pct": (1 - ratio) * 100, "target_overhead_pct": 2.0,
              "best_rate_ratio_on_off": best_ratio, "median_client_cpu_per_request_ratio_on_off": cpu_ratio,
              "scrape_cost": cost, "client_cpu_s_per_s_off": client_cpu_s_per_s,
              "scrape_cpu_share_of_client_pct": scrape_share * 100,
              "meets_target": {"median_pair_rate_ratio": ratio > 0.98, "best_rate_ratio": best_ratio > 0.98,
                               "client_cpu_per_request": cpu_ratio < 1.02, "scrape_cpu_share": scrape_share < 0.02},
              "load_average_1m_at_end": os.getloadavg()[0], "pairs": pairs,
              "note": "client request rate with scraping on / off, interleaved pairs; the fake server runs in its own process"}
    print(f"request rate on/off: median of pairs {ratio:.4f}, best runs {best_ratio:.4f} (target > 0.98); "
          f"client CPU per request on/off {cpu_ratio:.4f}; one scrape {cost['cpu_ms_per_scrape']:.2f} ms CPU = "
          f"{scrape_share:.2%} of the client's CPU at one per {args.interval_s:g} s; load {os.getloadavg()[0]:.1f}")
    slug = "-".join(re.sub(r"[^a-z0-9 ]", "", re.sub(r"\(r\)|\(tm\)", "", cpu_model().lower())).split()[:2])
    out = output_path(args.out, REPO / "docs" / "results" / f"scrape_overhead_{slug}.json", args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
