#!/usr/bin/env bash
# strata up as a user runs it: a whole cluster (private Redis, router, a prefill and a decode
# worker) on free loopback ports, `strata chat` streaming an answer through it (and its clear
# errors), a clean stop on SIGTERM with exit 0; then supervision: the decode worker and Redis
# SIGKILLed mid-run are restarted while the router stays up, and the cluster serves again; a
# worker dying once more than `supervise.max_restarts` allows is given up on, and with no decode
# worker left `strata up` stops the rest and exits non-zero. After each, no process started for
# the test may remain.
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

# Writes cluster file $1 from the shipped one with a free block of ports (base + 0..21) and, if
# given, supervise.max_restarts $2; echoes the router's HTTP port.
write_cluster_file() {
  local file=$1 restarts=${2:-} base p busy
  for _ in $(seq 50); do
    base=$((20000 + (RANDOM % 4000) * 10))
    busy=0
    for p in $base $((base + 1)) $((base + 2)) $((base + 10)) $((base + 11)) $((base + 20)) $((base + 21)); do
      if port_in_use "$p"; then busy=1; break; fi
    done
    ((busy == 0)) && break
  done
  awk -v redis=$base -v http=$((base + 1)) -v grpc=$((base + 2)) -v pbase=$((base + 10)) \
      -v dbase=$((base + 20)) -v name="uptest$base" -v restarts="$restarts" '
    /^[^ #]/ { sec = $1 }
    sec == "cluster:" { sub(/cluster: *[^ ]+/, "cluster: " name) }
    sec == "redis_port:" { sub(/redis_port: *[0-9]+/, "redis_port: " redis) }
    sec == "router:" { sub(/http_port: *[0-9]+/, "http_port: " http); sub(/grpc_port: *[0-9]+/, "grpc_port: " grpc) }
    sec == "prefill:" { sub(/base_port: *[0-9]+/, "base_port: " pbase) }
    sec == "decode:" { sub(/base_port: *[0-9]+/, "base_port: " dbase) }
    sec == "supervise:" && restarts != "" { sub(/max_restarts: *[0-9]+/, "max_restarts: " restarts) }
    { print }' "$root/deploy/local/cluster.yaml" >"$file"
  # The rewrite must have reached every port (a changed layout of the shipped file would not).
  for p in "redis_port: $base" "http_port: $((base + 1))" "grpc_port: $((base + 2))" \
           "base_port: $((base + 10))" "base_port: $((base + 20))"; do
    grep -q "$p" "$file" || fail "could not set '$p' in $file"
  done
  [[ -z "$restarts" ]] || grep -q "max_restarts: $restarts " "$file" || fail "could not set max_restarts in $file"
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

# Cluster file + start, retried on a port race with another test. $2: supervise.max_restarts.
launch() {
  local name=$1 restarts=${2:-} rc
  for _ in 1 2 3; do
    http_port=$(write_cluster_file "$work/$name.yaml" "$restarts")
    redis_port=$(cat "$work/$name.yaml.redis_port")
    redis_ports+=("$redis_port")
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

# ---- 2. supervision -----------------------------------------------------------------------------
# The pid of the one process whose command line (arguments joined by spaces, plus a space) matches
# glob $1; empty if none.
pid_of() {
  local f pid="" args cmd
  for f in /proc/[0-9]*/cmdline; do
    mapfile -d '' args 2>/dev/null <"$f" || continue
    cmd="${args[*]} "
    # shellcheck disable=SC2053
    if [[ $cmd == $1 ]]; then
      pid=${f#/proc/}
      pid=${pid%/cmdline}
    fi
  done
  echo "$pid"
}

# Waits up to $2 s for the log to contain $1.
wait_log() {
  local deadline=$((SECONDS + $2))
  until grep -qF -- "$1" "$log"; do
    kill -0 "$up_pid" 2>/dev/null || fail "strata up exited while waiting for '$1'"
    ((SECONDS < deadline)) || fail "'$1' not logged within $2 s"
    sleep 0.1
  done
}

# A completion through the router succeeds within $1 s (a dead worker may still be in the router's
# view for a lease: early attempts may fail).
chat_succeeds_within() {
  local deadline=$((SECONDS + $1))
  until timeout 10 "$strata" chat --url "$url" --max-tokens 4 --temperature 0 'Hello again' \
      >"$work/chat.out" 2>"$work/chat.err" && [[ -s "$work/chat.out" ]]; do
    ((SECONDS < deadline)) || fail "no completion within $1 s: $(cat "$work/chat.err")"
    sleep 0.3
  done
}

launch crash 1  # a process may be restarted once a minute; the next death is one too many
url="http://127.0.0.1:$http_port"
decode_cmd="* decode --config $work/crash.yaml *"
router_pid=$(pid_of "* router --config $work/crash.yaml *")
victim=$(pid_of "$decode_cmd")
[[ -n "$router_pid" && -n "$victim" ]] || fail "no router or decode worker process found"
chat_succeeds_within 10

# 2a. decode-0 SIGKILLed: restarted after the first backoff; the router stays up; serving again.
kill -KILL "$victim"
wait_log "decode-0 (pid $victim) was killed by signal 9 (Killed) after " 10
wait_log "restarting it in 0.5 s (restart 1 of at most 1 in 60 s)" 1
wait_log "restarted decode-0 (pid " 10
decode_pid=$(pid_of "$decode_cmd")
[[ -n "$decode_pid" && "$decode_pid" != "$victim" ]] || fail "no new decode worker process"
grep -qF "restarted decode-0 (pid $decode_pid, restart 1)" "$log" || fail "the restart names another pid"
wait_log "decode worker decode-0-$decode_pid joined" 15  # the router found it in Redis
chat_succeeds_within 30
[[ $(pid_of "* router --config $work/crash.yaml *") == "$router_pid" ]] || fail "the router was restarted"
grep -q "stopping the cluster" "$log" && fail "strata up stopped the cluster after a worker died"

# 2b. The private Redis SIGKILLed: restarted empty; every service's heartbeat registers again (the
# registry clients reconnect), the router finds the workers, the cluster serves again.
redis_pid=$(pid_of "redis-server *:$redis_port *")
[[ -n "$redis_pid" ]] || fail "no redis-server process found"
kill -KILL "$redis_pid"
wait_log "redis (pid $redis_pid) was killed by signal 9 (Killed)" 10
wait_log "restarted redis (pid " 10
chat_succeeds_within 30
[[ $(pid_of "* router --config $work/crash.yaml *") == "$router_pid" ]] || fail "the router was restarted"
[[ $(pid_of "$decode_cmd") == "$decode_pid" ]] || fail "the decode worker was restarted"

# 2c. decode-0 dies again within the minute: given up on; with no decode worker left the cluster
# cannot serve, so strata up stops the rest and exits non-zero.
kill -KILL "$decode_pid"
wait_up_exit 30
((up_rc != 0)) || fail "strata up exited 0 after giving up on its only decode worker"
grep -qF "giving up on decode-0 after 1 restart in 60 s: it (pid $decode_pid) was killed by signal 9" "$log" ||
  fail "no giving-up message"
grep -q "stopping the cluster: no decode worker is left" "$log" || fail "no reason for stopping"
grep -q "every process has stopped" "$log" || fail "no stop message"
expect_no_leftovers "after giving up on a worker"

echo "up_test: all checks passed"
