#!/usr/bin/env bash
# Runs one libFuzzer target of tests/fuzz for a while over its seed corpus.
#
#   run_fuzzer.sh FUZZER SECONDS WORK_DIR [libFuzzer flags...]
#
# FUZZER is build-fuzz/tests/fuzz/<name>_fuzzer; its seeds are tests/fuzz/<name>/ and its
# dictionary, if any, tests/fuzz/<name>.dict. New inputs go to WORK_DIR/corpus, crash, leak and
# timeout reproducers to WORK_DIR/crashes/. With FUZZ_KEEP_CORPUS=1 (make fuzz) WORK_DIR/corpus is
# kept and grows from run to run; otherwise (the short runs of make test) it starts empty each
# time, so a run takes the same time however often it ran before.
#
# The exit status is libFuzzer's: 0 when nothing was found. A failure prints the reproducer's path;
# replay it with `FUZZER REPRODUCER`, fix the bug and copy the file into tests/fuzz/<name>/.
set -euo pipefail
fuzzer=$1 seconds=$2 work=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
name=$(basename "$fuzzer")
name=${name%_fuzzer}
seeds=$here/$name
[[ -d $seeds ]] || { echo "run_fuzzer.sh: no seed corpus $seeds" >&2; exit 2; }

if [[ ${FUZZ_KEEP_CORPUS:-0} != 1 ]]; then rm -rf "$work/corpus"; fi
mkdir -p "$work/corpus" "$work/crashes"
flags=(-max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 -print_final_stats=1
       -artifact_prefix="$work/crashes/")
if [[ -f $here/$name.dict ]]; then flags+=(-dict="$here/$name.dict"); fi
# Leaks are checked at exit by LeakSanitizer; a report names the allocation's stack.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzz $name: ${seconds}s over $seeds, new inputs in $work/corpus"
exec "$fuzzer" "${flags[@]}" "$@" "$work/corpus" "$seeds"
