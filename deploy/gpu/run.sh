#!/usr/bin/env bash
# Runs on the GPU machine, from the folder pack.sh made (it needs none of this project's Debian
# packages there): the op-by-op parity tests, the teacher-forced layer parity test, `strata
# generate --backend cuda` against `--backend cpu` on tiny and small, and the kernel benchmark.
#
#   run.sh [STAGE ...]      stages: ops model generate bench (default: all four)
#
# A lent GPU machine returns at most eight files, so everything goes to a few files in $OUT (or
# ./out): summary.txt (one line per check), ops.log, model.log, generate.log, bench.log and
# cuda_bench.tsv. Each test runs in a process of its own, several at once: a kernel that faults
# leaves a sticky error in its CUDA context, which would fail every later test of the same
# process. A test that crashes is rerun under compute-sanitizer (memcheck) to name the access.
# The correctness stages run side by side; the benchmark runs alone after them.
#
# Environment: CUDA_BENCH_ARGS (e.g. --quick), STAGE_TIMEOUT_S (default 240).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
work=$(mktemp -d /tmp/strata-gpu.XXXXXX)
# The GPU machine's own cuBLAS (cuda_bench) is the toolkit's.
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ -f $here/commit ]] && export STRATA_GIT_COMMIT=$(cat "$here/commit")
stage_timeout=${STAGE_TIMEOUT_S:-240}
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(ops model generate bench)
want() { [[ " ${stages[*]} " == *" $1 "* ]]; }
summary="$out/summary.txt"
say() { echo "$*" | tee -a "$summary"; }
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader |
  sed 's/^/gpu: /' | tee -a "$summary"
say "commit: ${STRATA_GIT_COMMIT:-unknown}"

# run_tests BINARY LOG JOBS: every test of a gtest binary in its own process, JOBS at a time.
run_tests() {
  local bin=$1 log=$2 jobs=$3 name
  local dir="$work/$(basename "$bin")"
  mkdir -p "$dir"
  "$bin" --gtest_list_tests | awk '/^[^ ]/ {suite=$1} /^  / {print suite $1}' >"$dir/list"
  # shellcheck disable=SC2016
  xargs -P "$jobs" -I{} sh -c 'timeout '"$stage_timeout"' "$0" --gtest_filter="$1" >"$2/$1.log" 2>&1; echo $? >"$2/$1.rc"' \
    "$bin" {} "$dir" <"$dir/list"
  while read -r name; do
    local rc
    rc=$(cat "$dir/$name.rc" 2>/dev/null || echo missing)
    {
      echo "===== $name (rc $rc)"
      cat "$dir/$name.log"
    } >>"$log"
    case $rc in
      0) grep -q '\[  SKIPPED \]' "$dir/$name.log" && say "SKIP $name" || say "PASS $name" ;;
      1) say "FAIL $name" ;;
      *)
        say "CRASH $name (rc $rc)"
        if command -v compute-sanitizer >/dev/null; then
          echo "===== $name under compute-sanitizer" >>"$log"
          timeout 120 compute-sanitizer --tool memcheck --show-backtrace device --print-limit 20 \
            "$bin" --gtest_filter="$name" >>"$log" 2>&1
        fi
        ;;
    esac
  done <"$dir/list"
}

# ---- correctness: op parity, layer parity, generate ----------------------------------------------
pids=()
if want ops; then
  run_tests "$here/bin/backend_ops_test" "$out/ops.log" 8 &
  pids+=($!)
fi
if want model; then
  run_tests "$here/bin/cuda_model_test" "$out/model.log" 2 &
  pids+=($!)
fi
if want generate; then
  (
    log="$out/generate.log"
    for preset in tiny small; do
      m="$work/models/$preset"
      if ! timeout "$stage_timeout" "$here/bin/strata" mkmodel --preset "$preset" --out "$m" --seed 1 \
        --tokenizer-dir "$here/tok" --threads 8 >>"$log" 2>&1; then
        say "FAIL mkmodel $preset"
        continue
      fi
      # A short prompt, and one of ~1,200 tokens: three prefill chunks, every compressor emitting.
      seq 1 600 | tr '\n' ' ' >"$work/long.txt"
      for prompt in "The capital of France is" "@long"; do
        if [[ $prompt == @long ]]; then args=(--prompt-file "$work/long.txt"); else args=(--prompt "$prompt"); fi
        for backend in cpu cuda; do
          echo "===== generate $preset $backend: $prompt" >>"$log"
          timeout "$stage_timeout" "$here/bin/strata" generate --model "$m" --backend "$backend" \
            "${args[@]}" --max-tokens 48 --threads 8 >"$work/gen.$backend" 2>"$work/gen.$backend.err"
          echo "rc $?" >>"$work/gen.$backend"
          cat "$work/gen.$backend" "$work/gen.$backend.err" >>"$log"
        done
        # Greedy text: CPU and CUDA round some sums differently, so a near-tie may flip; say so.
        if grep -q '^rc 0$' "$work/gen.cuda"; then
          if cmp -s <(head -n -1 "$work/gen.cpu") <(head -n -1 "$work/gen.cuda"); then
            say "PASS generate $preset '$prompt' (same text as cpu)"
          else
            say "DIFF generate $preset '$prompt' (cuda ran; text differs from cpu: see generate.log)"
          fi
        else
          say "FAIL generate $preset '$prompt' ($(tail -n 1 "$work/gen.cuda"))"
        fi
      done
    done
  ) &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
say "correctness stages done at $(elapsed)"

# ---- speed ---------------------------------------------------------------------------------------
if want bench; then
  # The bench makes its models (random weights) once; it needs no real tokenizer.
  timeout "${BENCH_TIMEOUT_S:-400}" "$here/bin/cuda_bench" --results "$out/cuda_bench" \
    --model-cache "$work/bench-models" --tokenizer-dir "$here/tok" ${CUDA_BENCH_ARGS:-} \
    >"$out/bench.log" 2>&1
  say "bench rc $? at $(elapsed)"
  grep -E 'PASS|BELOW' "$out/bench.log" | sed 's/^/  /' >>"$summary"
fi
echo "----- summary"
cat "$summary"
