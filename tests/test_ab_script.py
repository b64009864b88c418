"""examples/ci/ab.sh on a git repository made here: a real slowdown fires the verdict, equal commits do not.

The repository holds this checkout's files (benchmarks/bench_ab_interleaved.make_fixture_repo) with a
base commit, an equal one (a comment) and a slowed one (every engine step sleeps its own wall time
three times over). `--env current` runs each worktree's code with this interpreter, so nothing is
downloaded; the default `--env venv` install path is checked with an offline pip install.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AB = ROOT / "examples" / "ci" / "ab.sh"
_spec = importlib.util.spec_from_file_location("bench_ab_interleaved", ROOT / "benchmarks" / "bench_ab_interleaved.py")
bench_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_ab)

PIE = shlex.join([sys.executable, "-c", "import sys; sys.argv[0] = 'pie'; from pie_cli.app import main; main()"])
RULE = ["--fail-on", "output_throughput:-40%"]


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    shas = bench_ab.make_fixture_repo(repo, slowdown=3.0)
    model = bench_ab.write_model_dir(tmp_path_factory.mktemp("model"), hidden_size=32, num_layers=2)
    return repo, shas, model


def ab(args: list[str], workdir: Path, timeout_s: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(AB), "--workdir", str(workdir), *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=ROOT)


def bench_args(model: Path) -> list[str]:
    return ["--", "--model", str(model), "--workload", "uniform", "--input-len", "16", "--output-len", "64",
            "--num-prompts", "32"]


def current(repo: Path) -> list[str]:
    return ["--env", "current", "--python", sys.executable, "--repo", str(repo), "--runs", "3", "--format", "json", *RULE]


def labels_in_order(store: Path) -> list[tuple[str, str]]:
    headers = [json.loads(path.read_text().splitlines()[0]) for path in store.glob("*.jsonl")]
    headers.sort(key=lambda header: header["run_id"])
    return [(header["label"], header["git_commit"]) for header in headers]


@pytest.mark.slow
def test_a_real_slowdown_fires_and_equal_commits_do_not(fixture_repo, tmp_path):
    repo, shas, model = fixture_repo
    slowed = ab(current(repo) + [shas["base"], shas["slowed"]] + bench_args(model), tmp_path / "slowed")
    assert slowed.returncode == 3, slowed.stderr[-2000:]
    verdict = json.loads(slowed.stdout)
    assert verdict["regression"] and verdict["fired_rules"] == ["output_throughput:-40%"]
    runs = labels_in_order(tmp_path / "slowed" / "results")
    assert [label for label, _ in runs] == ["base", "head"] * 3  # interleaved, warm-ups kept apart
    assert {commit for label, commit in runs if label == "head"} == {shas["slowed"]}
    assert [label for label, _ in labels_in_order(tmp_path / "slowed" / "warmup")] == ["warmup-base", "warmup-head"]
    seeds = {json.loads(p.read_text().splitlines()[0])["config"]["seed"] for p in (tmp_path / "slowed").glob("*/*.jsonl")}
    assert seeds == {0}
    assert not (tmp_path / "slowed" / "base").exists()  # worktrees removed at exit

    equal = ab(current(repo) + [shas["base"], shas["equal"]] + bench_args(model), tmp_path / "equal")
    assert equal.returncode == 0, equal.stderr[-2000:]
    assert json.loads(equal.stdout)["verdict"].startswith("OK: no rule fired")


def test_bad_refs_and_usage_are_exit_2_naming_the_side(fixture_repo, tmp_path):
    repo, shas, model = fixture_repo
    missing = ab(current(repo) + [shas["base"], "no-such-ref"] + bench_args(model), tmp_path / "a")
    assert missing.returncode == 2 and "head ref 'no-such-ref' is not a commit" in missing.stderr
    one_ref = ab(current(repo) + [shas["base"]] + bench_args(model), tmp_path / "b")
    assert one_ref.returncode == 2 and "expected two refs" in one_ref.stderr
    few_runs = ab(current(repo) + ["--runs", "1", shas["base"], shas["base"]] + bench_args(model), tmp_path / "c")
    assert few_runs.returncode == 2 and "--runs must be" in few_runs.stderr
    (tmp_path / "d" / "results").mkdir(parents=True)
    (tmp_path / "d" / "results" / "old-run.jsonl").write_text("{}\n")
    reused = ab(current(repo) + [shas["base"], shas["base"]] + bench_args(model), tmp_path / "d")
    assert reused.returncode == 2 and "already holds records" in reused.stderr
    labelled = ab(current(repo) + [shas["base"], shas["base"]] + bench_args(model) + ["--label", "x"], tmp_path / "e")
    assert labelled.returncode == 2 and "leave '--label' out" in labelled.stderr


@pytest.mark.slow
def test_venv_install_is_real_and_a_failed_install_names_the_side(fixture_repo, tmp_path):
    """The default install path (a venv per ref, pip install in its worktree), offline through the system packages."""
    repo, shas, model = fixture_repo
    subprocess.run(["git", "-C", str(repo), "checkout", "--quiet", "-b", "broken", shas["base"]], check=True)
    (repo / "pyproject.toml").write_text("this is not toml [\n")
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am",
                    "break the build"], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "--quiet", shas["base"]], check=True)
    # Offline stand-in for --system-site-packages (a venv made from this venv would see the base Python's
    # packages, not this environment's): a .pth to this environment's packages, and its setuptools for
    # the build (the venv's bundled one is too old for editable installs).
    parent = sysconfig.get_paths()["purelib"]
    install = ("echo " + shlex.quote(parent) + " > \"$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/parent.pth\" "
               "&& python -m pip uninstall --yes --quiet setuptools "
               "&& python -m pip install --no-deps --no-build-isolation --no-index -e .")
    done = ab(["--env", "venv", "--python", sys.executable, "--install", install,
               "--repo", str(repo), *RULE, shas["base"], "broken"] + bench_args(model), tmp_path / "v")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "installing head (ref broken" in done.stderr and "install-head.log" in done.stderr
    assert (tmp_path / "v" / "env-base" / "bin" / "pie").exists()  # base installed and answered --help


FAKE_SERVER = textwrap.dedent('''
    """A fake OpenAI-compatible server: python fake_server.py GAP_S PID_FILE PORT (token gap, where to note its pid)."""
    import json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    GAP_S = float(sys.argv[1])
    open(sys.argv[2], "a").write(f"{os.getpid()}\\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_GET(self):
            payload = json.dumps({"data": [{"id": "fake"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(body["max_tokens"]):
                time.sleep(GAP_S)
                self.event({"choices": [{"index": 0, "text": f"w{i} ", "token_ids": [100 + i], "finish_reason": None}]})
            self.event({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}})
            self.wfile.write(b"data: [DONE]\\n\\n")

        def event(self, payload):
            self.wfile.write(f"data: {json.dumps(payload)}\\n\\n".encode())
            self.wfile.flush()

    ThreadingHTTPServer.request_queue_size = 64  # the default 5 drops connections of a burst: 1 s TCP retries
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), Handler)
    server.daemon_threads = True
    server.serve_forever()
''')


@pytest.mark.slow
def test_servers_mode_compares_two_started_servers_and_stops_them(tmp_path):
    script, pids = tmp_path / "fake_server.py", tmp_path / "pids.txt"
    script.write_text(FAKE_SERVER)
    start = [f"{shlex.quote(sys.executable)} {script} {gap} {pids} $PORT" for gap in ("0.002", "0.008")]
    try:
        done = ab(["--servers", "--pie", PIE, "--runs", "3", "--format", "markdown", *RULE, *start, "--",
                   "--runner", "openai", "--model", "opt-125m", "-O", "model_name=fake", "--workload", "uniform", "--input-len", "8",
                   "--output-len", "16", "--num-prompts", "8"], tmp_path / "work", timeout_s=300)
        assert done.returncode == 3, done.stderr[-2000:]
        assert done.stdout.startswith("### :x: pie compare: REGRESSION")
        assert [label for label, _ in labels_in_order(tmp_path / "work" / "results")] == ["base", "head"] * 3
    finally:
        for pid in map(int, pids.read_text().split()) if pids.exists() else ():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"ab.sh left the server {pid} running")


def test_benchmark_dry_run_plans_the_pairs_at_the_examples_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ab_interleaved.py"), "--dry-run",
                           "--pairs", "4", "--ab-pairs", "2", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    commands = done.stdout.splitlines()
    runs, rules = bench_ab.example_settings()
    assert len(commands) == 6 and all(f"--runs {runs}" in c and "ab.sh" in c for c in commands)
    assert all(f"--fail-on {rule}" in commands[0] for rule in rules) and runs >= 3
    shas = {line.split(" -- ")[0].split()[-1] for line in commands}
    assert len(shas) == 2  # A/A pairs go to the equal commit, A/B pairs to the slowed one
