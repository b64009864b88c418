#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU: install what pie needs and this Python lacks from a
# wheel folder, then measure pie's CUDA paths in at most 6 minutes (scripts/gpu_check.py says what each
# step measures and its time limit). Writes OUT_DIR/gpu_check.json (rewritten after every step) and
# OUT_DIR/gpu_check.log (every step's output, pytest's included, as it happens).
#
#   scripts/gpu_check.sh [--dry-run] WHEEL_DIR OUT_DIR
#
# The GPU machines described to us: x86-64, Python 3.12, torch 2.11 (CUDA 13) and Triton preinstalled,
# with typer, rich, pandas, numpy, scipy, matplotlib, aiohttp, transformers, safetensors, pytest and
# prometheus-client; PuLP is missing (and pytest-timeout, which the suite's time limits use). Make the
# wheel folder on a machine with network access, for that platform exactly:
#
#   pip download --dest wheels --only-binary=:all: --implementation cp --python-version 3.12 --abi cp312 \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       pulp pytest-timeout
#
# On the GPU machine the install step runs `python -m pip install --no-index --find-links WHEEL_DIR` for the
# modules it finds missing (nothing is downloaded there). With time left on the lease, run it again into a
# new OUT_DIR: it fits twice into 15 minutes with two machine starts.
#
# --dry-run (no GPU needed, run by the suite): checks the arguments, says what it would install, runs
# the steps that need no GPU, and writes the JSON (with the total of the step limits) and the log.
set -euo pipefail
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); shift; fi
if [[ $# -ne 2 ]]; then
    echo "usage: $0 [--dry-run] WHEEL_DIR OUT_DIR" >&2
    exit 2
fi
WHEELS=$1
OUT=$2
if [[ ! -d "$WHEELS" ]]; then
    echo "error: wheel folder '$WHEELS' does not exist (see this script's header for the pip download line)" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$REPO"
exec "$PYTHON" scripts/gpu_check.py "$OUT" --wheels "$WHEELS" "${DRY[@]}"
