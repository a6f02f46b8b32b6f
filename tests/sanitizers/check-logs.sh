#!/bin/sh
# Prints every sanitizer report that `make test-asan` / `make test-tsan` left in DIR (their
# log_path: one file per reporting process, <tool>.<executable>.<pid>) and fails if there is any.
# The tests' own exit statuses do not cover processes they start and do not watch to the end.
dir=${1:?usage: check-logs.sh DIR}
n=0
for f in "$dir"/*; do
  [ -f "$f" ] || continue
  n=$((n + 1))
  echo "===== sanitizer report: $f"
  cat "$f"
done
if [ "$n" -gt 0 ]; then
  echo "$n sanitizer report(s) in $dir" >&2
  exit 1
fi
echo "no sanitizer reports"
