#!/usr/bin/env bash
# Runs on the GPU machine, from the folder pack.sh made: the op-by-op parity tests, the teacher-
# forced layer parity test and the kernel benchmark. Logs and results go to $OUT (or ./out).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
"$here/bin/backend_ops_test" --gtest_brief=1 2>&1 | tee "$out/backend_ops_test.log" || status=1
"$here/bin/cuda_model_test" 2>&1 | tee "$out/cuda_model_test.log" || status=1
# The bench makes its models (random weights) once; it needs no real tokenizer.
mkdir -p "$here/tok" "$here/models"
echo '{}' >"$here/tok/tokenizer.json"
echo '{}' >"$here/tok/tokenizer_config.json"
"$here/bin/cuda_bench" --results "$out/cuda_bench" --model-cache "$here/models" --tokenizer-dir "$here/tok" \
  ${CUDA_BENCH_ARGS:-} 2>&1 | tee "$out/cuda_bench.log" || status=1
exit $status
