#!/bin/bash
# Interleaved before/after of benchmarks/bench_engine_throughput.py --runners pie (issue 27's "same throughput").
export PATH=/work/main/.venv-test/bin:$PATH
for i in 1 2 3; do
  (cd /tmp/pie-before && PYTHONPATH=/tmp/pie-before python benchmarks/bench_engine_throughput.py --runners pie --out /tmp/tp/before_$i.json 2>&1 | grep "pie:" | sed "s/^/before $i /")
  (cd /work/main && PYTHONPATH=/work/main python benchmarks/bench_engine_throughput.py --runners pie --out /tmp/tp/after_$i.json 2>&1 | grep "pie:" | sed "s/^/after $i /")
done
