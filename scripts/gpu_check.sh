#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU: install pie's missing dependencies from a wheel
# folder, then measure its CUDA paths in at most 8 minutes (scripts/gpu_check.py says what each
# step measures). Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log.
#
#   scripts/gpu_check.sh [--dry-run] WHEEL_DIR OUT_DIR
#
# The machine's Python is expected to have torch, triton, typer, rich, pandas, numpy,
# transformers and safetensors. The rest comes from WHEEL_DIR, installed with
# `pip install --no-index --find-links WHEEL_DIR` (nothing is downloaded there). Make the folder on
# a machine with network access, for the GPU machine's Python version and platform, e.g.:
#
#   pip download --dest wheels --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#       pulp aiohttp matplotlib scipy pytest pytest-timeout
#
# --dry-run (no GPU needed, run by the suite): checks the arguments, prints the pip command instead
# of running it, and runs gpu_check.py --dry-run.
set -euo pipefail
DRY=""
if [[ "${1:-}" == "--dry-run" ]]; then DRY="--dry-run"; shift; fi
if [[ $# -ne 2 ]]; then
    echo "usage: $0 [--dry-run] WHEEL_DIR OUT_DIR" >&2
    exit 2
fi
WHEELS=$1
OUT=$2
if [[ ! -d "$WHEELS" ]]; then
    echo "error: wheel folder '$WHEELS' does not exist (see this script's header for pip download)" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
START=$(date +%s)
INSTALL=("$PYTHON" -m pip install --no-index --find-links "$WHEELS" pulp aiohttp matplotlib scipy pytest pytest-timeout)
if [[ -n "$DRY" ]]; then
    echo "dry run: would run: ${INSTALL[*]}" | tee -a "$OUT/gpu_check.log"
else
    timeout 90 "${INSTALL[@]}" >>"$OUT/gpu_check.log" 2>&1 || echo "warning: pip install failed (see $OUT/gpu_check.log); going on" >&2
fi
# 8 minutes in all: what the install took comes out of the steps' budget (10 s kept for writing).
BUDGET=$(( 480 - ($(date +%s) - START) - 10 ))
cd "$REPO"
exec "$PYTHON" scripts/gpu_check.py "$OUT" --budget-s "$BUDGET" $DRY
