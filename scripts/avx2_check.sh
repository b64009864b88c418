#!/usr/bin/env bash
# Run pie as an AVX2-only CPU would, on a bigger x86 CPU: the engine's correctness and kernel-path
# tests, then the README's main job, with torch's dispatch (ATEN_CPU_CAPABILITY=avx2) and oneDNN
# (ONEDNN_MAX_CPU_ISA=AVX2) limited to AVX2. What takes effect is printed first: torch's capability,
# oneDNN's bf16 prepack (refused below AVX-512), bf16 vs fp32 matmul rates, and pie's record.
#   bash scripts/avx2_check.sh [LOG]      # default log: avx2_check.log; uses .venv-test (scripts/test.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${PIE_TEST_VENV:-$PWD/.venv-test}
[ -x "$VENV/bin/pie" ] || { echo "no test environment at $VENV: run bash scripts/test.sh first" >&2; exit 2; }
export PATH=$VENV/bin:$PATH ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
LOG=${1:-avx2_check.log}
work=$(mktemp -d -t pie-avx2-XXXXXX)
trap 'rm -rf "$work"' EXIT
{
  echo "== machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1); limits: ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA=$ONEDNN_MAX_CPU_ISA"
  python - <<'PY'
import torch
from pie_core.capability import detect_capability, select_kernels, choose_dtype
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
  python -m pytest -q -rA tests/test_engine_correctness.py tests/test_engine_models.py tests/test_engine_linear.py \
    tests/test_capability.py tests/test_cli_dtype.py | grep -E "PASSED.*(injected|gemm_path|prepacked)|passed|failed"
  echo "== the README's main job (in $work)"
  cd "$work" && pie profile --quick && pie tune --model opt-125m --output plan.json \
    && pie bench --model opt-125m --plan plan.json --num-prompts 32 --json > bench.json \
    && python -c "import json; c = json.load(open('bench.json'))['config']; print('bench ran in', c['dtype'], 'with kernels', c['kernels'])"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
