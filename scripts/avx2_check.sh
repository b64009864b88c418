#!/usr/bin/env bash
# Run pie as an AVX2-only CPU would, on a bigger x86 CPU: the engine's correctness and kernel-path
# tests, then the README's main job, with torch's dispatch (ATEN_CPU_CAPABILITY=avx2) and oneDNN
# (ONEDNN_MAX_CPU_ISA=AVX2) limited to AVX2. What takes effect is printed first: torch's capability,
# oneDNN's bf16 prepack (refused below AVX-512), bf16 vs fp32 matmul rates, and pie's record.
# The exit status is 1 when any step failed (each step still runs and logs).
#   bash scripts/avx2_check.sh [--quick] [--model M] [LOG]   # default log: avx2_check.log; uses .venv-test
# --quick: the capability tests only, and the main job with a 4 MiB link sweep, 64 MiB budgets and 2 short requests
# (--model: what the main job profiles, tunes and runs; default opt-125m; tests give a tiny directory).
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
MODEL=opt-125m
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --model) [ $# -ge 2 ] || { echo "error: --model needs a value" >&2; exit 2; }; MODEL=$2; shift 2 ;;
    -*) echo "error: unknown option $1 (hint: bash scripts/avx2_check.sh [--quick] [--model M] [LOG])" >&2; exit 2 ;;
    *) break ;;
  esac
done
VENV=${PIE_TEST_VENV:-$PWD/.venv-test}
[ -x "$VENV/bin/pie" ] || { echo "no test environment at $VENV: run bash scripts/test.sh first" >&2; exit 2; }
export PATH=$VENV/bin:$PATH ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
LOG=${1:-avx2_check.log}
if [ "$QUICK" = 1 ]; then
  TESTS=(tests/test_capability.py)
  PROFILE_ARGS=(--max-size 4MiB)
  TUNE_ARGS=(--gpu-memory 64MiB --cpu-memory 64MiB)
  BENCH_ARGS=(--workload fixed --input-len 16 --output-len 4 --num-prompts 2)
else
  TESTS=(tests/test_engine_correctness.py tests/test_engine_models.py tests/test_engine_linear.py
         tests/test_capability.py tests/test_cli_dtype.py)
  PROFILE_ARGS=()
  TUNE_ARGS=()
  BENCH_ARGS=(--num-prompts 32)
fi
work=$(mktemp -d -t pie-avx2-XXXXXX)
trap 'rm -rf "$work"' EXIT
{
  failed=0
  echo "== machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1); limits: ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA=$ONEDNN_MAX_CPU_ISA"
  python - <<'PY' || failed=1
import torch
from pie_core.capability import choose_dtype
from pie_core.device_probe import detect_capability
from profiler.memory import matmul_rates
from runners.engine.kernels import resolve_kernels
cap = detect_capability("cpu")
print("torch CPU capability:", torch.backends.cpu.get_cpu_capability())
print("record:", cap.summary(), "| effective features:", sorted(cap.onednn_features), "| auto dtype:", choose_dtype(cap).dtype)
try:
    torch.ops.mkldnn._reorder_linear_weight(torch.ones(32, 32, dtype=torch.bfloat16), 4)
    print("oneDNN bf16 prepack: runs")
except RuntimeError as err:
    print("oneDNN bf16 prepack: refused:", str(err).splitlines()[0])
print("matmul GFLOP/s:", {k: round(v * 1e3, 1) for k, v in matmul_rates("cpu", ("float32", "bfloat16")).items()})
for dtype in ("float32", "bfloat16"):
    print(f"kernels for {dtype}:", resolve_kernels("cpu", dtype).describe())
# Records of other machines on this one: their fast paths are tried for real and fall back, named.
avx512_bf16 = cap.with_changes(torch_cpu_capability="AVX512", onednn_max_isa=None, cpu_flags=("avx2", "fma", "f16c", "avx512f", "avx512bw",
                                                                         "avx512vl", "avx512dq", "avx512_bf16"))
print("an AVX-512 BF16 record, bf16:", resolve_kernels("cpu", "bfloat16", avx512_bf16).describe())
arm = cap.with_changes(arch="aarch64", torch_cpu_capability="DEFAULT", cpu_flags=("asimd", "bf16"))
print("an aarch64 record, fp32:", resolve_kernels("cpu", "float32", arm).describe())
PY
  echo "== engine correctness and kernel-path tests"
  python -m pytest -q -rA -p no:cacheprovider "${TESTS[@]}" > "$work/pytest.log" 2>&1 || failed=1
  grep -E "PASSED.*(injected|gemm_path|prepacked)|passed|failed" "$work/pytest.log"
  echo "== the README's main job (in $work)"
  (cd "$work" && pie profile --quick --model "$MODEL" "${PROFILE_ARGS[@]}" && pie tune --model "$MODEL" "${TUNE_ARGS[@]}" --output plan.json \
    && pie bench --model "$MODEL" --plan plan.json "${BENCH_ARGS[@]}" --json > bench.json \
    && python -c "import json; c = json.load(open('bench.json'))['config']; print('bench ran in', c['dtype'], 'with kernels', c['kernels'])") \
    || failed=1
  [ "$failed" = 0 ] && echo "== avx2 check: every step ran" || echo "== avx2 check: a step FAILED (see above)"
  exit "$failed"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
