#!/usr/bin/env bash
# strata up as a user runs it: a whole cluster (private Redis, router, a prefill and a decode
# worker) on free loopback ports, `strata chat` streaming an answer through it (and its clear
# errors), a clean stop on SIGTERM with exit 0, and a worker SIGKILLed mid-run making `strata up`
# stop the rest and exit non-zero. After each, no process started for the test may remain.
set -euo pipefail
strata=${1:?usage: up_test.sh STRATA_BINARY}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/strata-up-test.XXXXXX")
up_pid=""
log=""

# Every process this test starts has $work in its command line (the cluster file lives there),
# except redis-server, which rewrites its own to "redis-server 127.0.0.1:PORT": it is known by the
# ports of the clusters started (redis_ports).
redis_ports=()
leftovers() {
  local f pid cmd p args
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    mapfile -d '' args 2>/dev/null <"$f" || continue  # a builtin: no process per process
    cmd="${args[*]} "
    if [[ $cmd == *"$work"* ]]; then
      echo "$pid: $cmd"
      continue
    fi
    for p in "${redis_ports[@]}"; do
      [[ $cmd == "redis-server "*":$p "* ]] && echo "$pid: $cmd"
    done
  done
  return 0
}

cleanup() {
  local status=$?
  if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    sleep 2
    kill -KILL "$up_pid" 2>/dev/null || true
  fi
  # Whatever is left (only after a failure): SIGKILL it by pid, so the next test starts clean.
  local line
  while read -r line; do
    [[ -n "$line" ]] && kill -KILL "${line%%:*}" 2>/dev/null || true
  done < <(leftovers)
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [[ -n "$log" && -s "$log" ]]; then
    echo "--- strata up log ($log) ---" >&2
    tail -n 80 "$log" >&2
  fi
  exit 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Writes cluster file $1 from the shipped one with a free block of ports (base + 0..21); echoes
# the router's HTTP port.
write_cluster_file() {
  local file=$1 base p busy
  for _ in $(seq 50); do
    base=$((20000 + (RANDOM % 4000) * 10))
    busy=0
    for p in $base $((base + 1)) $((base + 2)) $((base + 10)) $((base + 11)) $((base + 20)) $((base + 21)); do
      if port_in_use "$p"; then busy=1; break; fi
    done
    ((busy == 0)) && break
  done
  awk -v redis=$base -v http=$((base + 1)) -v grpc=$((base + 2)) -v pbase=$((base + 10)) \
      -v dbase=$((base + 20)) -v name="uptest$base" '
    /^[^ #]/ { sec = $1 }
    sec == "cluster:" { sub(/cluster: *[^ ]+/, "cluster: " name) }
    sec == "redis_port:" { sub(/redis_port: *[0-9]+/, "redis_port: " redis) }
    sec == "router:" { sub(/http_port: *[0-9]+/, "http_port: " http); sub(/grpc_port: *[0-9]+/, "grpc_port: " grpc) }
    sec == "prefill:" { sub(/base_port: *[0-9]+/, "base_port: " pbase) }
    sec == "decode:" { sub(/base_port: *[0-9]+/, "base_port: " dbase) }
    { print }' "$root/deploy/local/cluster.yaml" >"$file"
  # The rewrite must have reached every port (a changed layout of the shipped file would not).
  for p in "redis_port: $base" "http_port: $((base + 1))" "grpc_port: $((base + 2))" \
           "base_port: $((base + 10))" "base_port: $((base + 20))"; do
    grep -q "$p" "$file" || fail "could not set '$p' in $file"
  done
  echo "$base" >"$file.redis_port"
  echo $((base + 1))
}

# Starts strata up on cluster file $1 in the background (log in $log, pid in up_pid) and waits
# until it says the cluster is ready. Returns 2 if a port was taken meanwhile.
start_cluster() {
  local file=$1
  log="$work/$(basename "$file" .yaml).log"
  TMPDIR="$work" "$strata" up --config "$file" --model "$work/tiny" --stop-timeout 10 >"$log" 2>&1 &
  up_pid=$!
  local deadline=$((SECONDS + 300))
  until grep -q "is ready" "$log"; do
    if ! kill -0 "$up_pid" 2>/dev/null; then
      wait "$up_pid" || true
      up_pid=""
      grep -q "already in use" "$log" && return 2
      fail "strata up exited before the cluster was ready"
    fi
    ((SECONDS < deadline)) || fail "the cluster was not ready within 300 s"
    sleep 0.2
  done
  grep -q "OpenAI API: http://127.0.0.1:" "$log" || fail "no URL printed"
}

# Cluster file + start, retried on a port race with another test.
launch() {
  local name=$1 rc
  for _ in 1 2 3; do
    http_port=$(write_cluster_file "$work/$name.yaml")
    redis_ports+=("$(cat "$work/$name.yaml.redis_port")")
    rc=0
    start_cluster "$work/$name.yaml" || rc=$?
    ((rc == 0)) && return 0
    ((rc == 2)) || fail "start_cluster: $rc"
  done
  fail "no free ports after 3 tries"
}

# Waits up to $1 s for strata up to exit; sets up_rc.
wait_up_exit() {
  local limit=$1
  for _ in $(seq $((limit * 10))); do
    kill -0 "$up_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$up_pid" 2>/dev/null && fail "strata up did not exit within $limit s"
  up_rc=0
  wait "$up_pid" || up_rc=$?
  up_pid=""
}

# strata up reaps every child before it exits, so nothing may be left; the short grace only covers
# the kernel finishing an exit.
expect_no_leftovers() {
  local left="" deadline=$((SECONDS + 2))
  while true; do
    left=$(leftovers)
    [[ -z "$left" ]] && return 0
    ((SECONDS < deadline)) || break
    sleep 0.2
  done
  fail "$1: processes left behind:"$'\n'"$left"
}

"$strata" mkmodel --preset tiny --out "$work/tiny" --seed 3 >/dev/null

# ---- 1. up, chat, SIGTERM -----------------------------------------------------------------------
launch clean
url="http://127.0.0.1:$http_port"
"$strata" chat --url "$url" --max-tokens 8 --temperature 0 'Hello there' >"$work/chat.out" 2>"$work/chat.err" ||
  fail "strata chat failed: $(cat "$work/chat.err")"
[[ $(tr -d '\n' <"$work/chat.out" | wc -c) -gt 0 ]] || fail "strata chat printed no text: $(cat "$work/chat.err")"
grep -qE "completion [1-9][0-9]* tokens" "$work/chat.err" || fail "chat figures: $(cat "$work/chat.err")"
grep -q "TTFT" "$work/chat.err" || fail "chat: no TTFT: $(cat "$work/chat.err")"
grep -q "model strata-tiny" "$work/chat.err" || fail "chat did not pick the model from /v1/models"
# Greedy decoding is deterministic through the cluster; the base URL with /v1 works too.
"$strata" chat --url "$url/v1" --model strata-tiny --max-tokens 8 --temperature 0 'Hello there' \
  >"$work/chat2.out" 2>/dev/null || fail "second chat failed"
cmp -s "$work/chat.out" "$work/chat2.out" || fail "greedy answers differ: '$(cat "$work/chat.out")' vs '$(cat "$work/chat2.out")'"

# Errors: exit 1 and the server's reason on stderr.
if err=$("$strata" chat --url "$url" --api-key sk-wrong 'Hi' 2>&1); then fail "a bad API key was accepted"; fi
grep -q "HTTP 401" <<<"$err" || fail "bad key message: $err"
if err=$("$strata" chat --url "$url" --model no-such-model 'Hi' 2>&1); then fail "an unknown model was accepted"; fi
grep -q "HTTP 404" <<<"$err" || fail "unknown model message: $err"

kill -TERM "$up_pid"
wait_up_exit 30
((up_rc == 0)) || fail "strata up exited with $up_rc after SIGTERM"
grep -q "every process has stopped" "$log" || fail "no stop message"
expect_no_leftovers "after SIGTERM"
# The router is gone: a clear connection error.
if err=$("$strata" chat --url "$url" 'Hi' 2>&1); then fail "chat to a stopped cluster succeeded"; fi
grep -q "Connection refused" <<<"$err" || fail "connection-refused message: $err"

# ---- 2. a worker dies: strata up stops the rest and fails ---------------------------------------
launch crash; echo "DBG: $(leftovers)" >&2
victim=""
for f in /proc/[0-9]*/cmdline; do
  mapfile -d '' args 2>/dev/null <"$f" || continue
  cmd="${args[*]} "
  if [[ $cmd == *" decode --config $work/crash.yaml "* ]]; then
    victim=${f#/proc/}
    victim=${victim%/cmdline}
  fi
done
[[ -n "$victim" ]] || fail "no decode worker process found"
kill -KILL "$victim"
wait_up_exit 30
((up_rc != 0)) || fail "strata up exited 0 after its decode worker was killed"
grep -q "decode-0" "$log" || fail "the log does not name the dead worker"
expect_no_leftovers "after a worker was killed"

echo "up_test: all checks passed"
