"""benchmarks/vllm_bench_client.py: one worker process runs the benchmark client many times.

A fake client module stands in for vLLM's (whose import alone takes ~14 s); the worker, its protocol and its
failure paths are the real ones.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.vllm_bench_client import BenchClient

FAKE = '''
import json, os, sys, time

def factory():
    print("imported", file=sys.stderr)
    def run(argv):
        print("{\\"ok\\": false, \\"error\\": \\"a client print that looks like a reply\\"}")  # stdout: must reach the log only
        if argv[0] == "fail":
            raise ValueError("boom in the client")
        if argv[0] == "usage":
            raise SystemExit(2)
        if argv[0] == "sleep":
            time.sleep(60)
        if argv[0] == "die":
            os._exit(3)
        with open("runs.txt", "a") as out:
            out.write(json.dumps(argv) + "\\n")
    return run

def broken():
    raise ImportError("no such client here")
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    (tmp_path / "fake_client.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def test_one_worker_serves_several_runs_and_keeps_prints_out_of_the_replies(fake):
    with BenchClient(fake, fake / "client.log", entry="fake_client:factory") as client:
        pid = client.process.pid
        client.run(["first", "--x", "1"], limit_s=30, tag="a")
        client.run(["second"], limit_s=30, tag="b")
        assert client.process.pid == pid and client.process.poll() is None
    assert client.process.poll() == 0
    assert (fake / "runs.txt").read_text().splitlines() == ['["first", "--x", "1"]', '["second"]']
    log = (fake / "client.log").read_text()
    assert "imported" in log and log.count("looks like a reply") == 2


def test_a_failed_run_names_its_error_and_the_worker_serves_the_next(fake):
    with BenchClient(fake, fake / "client.log", entry="fake_client:factory") as client:
        with pytest.raises(RuntimeError, match=r"vLLM's client failed \(bad-one\)") as failed:
            client.run(["fail"], limit_s=30, tag="bad-one")
        assert "boom in the client" in str(failed.value)
        with pytest.raises(RuntimeError, match="SystemExit"):
            client.run(["usage"], limit_s=30, tag="usage")
        client.run(["after"], limit_s=30, tag="good")
    assert (fake / "runs.txt").read_text().splitlines() == ['["after"]']


def test_a_run_past_its_limit_stops_the_worker(fake):
    client = BenchClient(fake, fake / "client.log", entry="fake_client:factory")
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="no answer within 1 s; the worker was stopped"):
        client.run(["sleep"], limit_s=1, tag="slow")
    assert time.monotonic() - began < 20
    assert client.process.poll() is not None
    client.close()  # a second close is harmless


def test_a_worker_that_dies_mid_run_is_named(fake):
    with BenchClient(fake, fake / "client.log", entry="fake_client:factory") as client:
        with pytest.raises(RuntimeError, match="exited with 3"):
            client.run(["die"], limit_s=30, tag="dies")
        with pytest.raises(RuntimeError, match="worker"):
            client.run(["after"], limit_s=30, tag="after")


def test_a_client_that_cannot_be_built_fails_at_start_with_its_error(fake):
    with pytest.raises(RuntimeError, match=r"\(starting\).*exited with 1") as failed:
        BenchClient(fake, fake / "client.log", entry="fake_client:broken")
    assert "no such client here" in str(failed.value)


def test_an_error_in_the_caller_stops_a_worker_that_is_mid_run_at_once(fake):
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with BenchClient(fake, fake / "client.log", entry="fake_client:factory") as client:
            client.process.stdin.write('["sleep"]\n')  # a run under way (it sleeps 60 s) when the caller gives up
            client.process.stdin.flush()
            time.sleep(0.5)
            raise KeyboardInterrupt
    assert client.process.poll() is not None and time.monotonic() - began < 15
