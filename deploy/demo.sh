#!/usr/bin/env bash
# `make demo`: makes the tiny model (once) and checks it, then starts the whole disaggregated
# cluster on this machine (`strata up`: Redis, router, a prefill and a decode worker, a kvstore),
# streams a chat answer through the OpenAI API with `strata chat`, asks two questions about one
# long document (the second reuses the first's KV: cached tokens, a short TTFT), and stops the
# cluster again.
set -euo pipefail
strata=${1:?usage: demo.sh STRATA_BINARY MODEL_DIR}
model=${2:?usage: demo.sh STRATA_BINARY MODEL_DIR}
config="$(cd "$(dirname "$0")" && pwd)/local/cluster.yaml"
ready_timeout_s=300  # the workers load the model; generous for a slow machine
stop_timeout_s=60

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ ! -f "$model/config.json" ]]; then
  step "strata mkmodel --preset tiny --out $model --seed 1"
  "$strata" mkmodel --preset tiny --out "$model" --seed 1
fi

step "strata inspect --model $model"
"$strata" inspect --model "$model"

step "strata kv-size --preset flash --context 1048576"
"$strata" kv-size --preset flash --context 1048576

# ---- the cluster --------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/strata-demo.XXXXXX")
log="$work/up.log"
up_pid=""

# Stops the cluster if it is still running (the script failed or was interrupted), shows its log
# when something went wrong, and removes the temp folder.
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
    echo "stopping the cluster (strata up, pid $up_pid)" >&2
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq $((stop_timeout_s * 5))); do
      kill -0 "$up_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -s "$log" ]]; then
    printf '\n--- strata up log (%s) ---\n' "$log" >&2
    tail -n 60 "$log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The router's HTTP port, from the cluster file (the line under "router:").
port=$(awk '/^router:/ {r = 1; next} /^[^ #]/ {r = 0} r && $1 == "http_port:" {print $2; exit}' "$config")
[[ -n "$port" ]] || { echo "demo: no router http_port in $config" >&2; exit 1; }

step "strata up --config ${config#"$PWD"/} --model $model"
echo "(starting Redis, the router, 1 prefill and 1 decode worker and a kvstore in the background; log: $log)"
"$strata" up --config "$config" --model "$model" --ready-timeout "$ready_timeout_s" >"$log" 2>&1 &
up_pid=$!

# strata up prints "... is ready" once every service answers /healthz; if it exits first (a port in
# use, a missing package) its log says why.
deadline=$((SECONDS + ready_timeout_s + 30))
until grep -q "is ready" "$log"; do
  if ! kill -0 "$up_pid" 2>/dev/null; then
    rc=0
    wait "$up_pid" || rc=$?
    up_pid=""
    echo "demo: strata up exited (status $rc) before the cluster was ready; its log follows" >&2
    if grep -q "already in use" "$log"; then
      echo "demo: another cluster (or program) uses a port of $config; stop it or change the ports there" >&2
    fi
    exit 1
  fi
  if ((SECONDS > deadline)); then
    echo "demo: the cluster was not ready within $((ready_timeout_s + 30)) s" >&2
    exit 1
  fi
  sleep 0.2
done
sed -n '/is ready/,/Press Ctrl-C/p' "$log"

question='What is the capital of France?'
step "strata chat --max-tokens 32 '$question'"
echo "(the demo model has random weights: expect fluent-looking nonsense, streamed token by token"
echo " from the router, which got it from the decode worker, which got the prompt's KV from prefill)"
"$strata" chat --url "http://127.0.0.1:$port" --max-tokens 32 "$question"

# ---- prefix reuse: two questions about one document ---------------------------------------------
doc="$(cd "$(dirname "$0")/.." && pwd)/README.md"
step "strata chat --document README.md (two different questions about the same long text)"
echo "(the first computes the whole document; the second reuses its KV blocks from the workers'"
echo " prefix caches: look at the 'cached' tokens and the TTFT on each stats line; on a second run of"
echo " the demo even the first is served from the kvstore's SSD tier, kept in .cache/kvstore)"
"$strata" chat --url "http://127.0.0.1:$port" --max-tokens 16 --temperature 0 --document "$doc" \
  "What is this document about?"
"$strata" chat --url "http://127.0.0.1:$port" --max-tokens 16 --temperature 0 --document "$doc" \
  "Which command runs the tests?"
if [[ -n "$(curl -s "http://127.0.0.1:8301/metrics" 2>/dev/null | grep '^strata_kvstore_blocks')" ]]; then
  echo "(the kvstore now holds the document too:"
  curl -s "http://127.0.0.1:8301/metrics" | grep '^strata_kvstore_blocks' | sed 's/^/  /'
  echo ")"
fi

step "stopping the cluster (SIGTERM to strata up)"
kill -TERM "$up_pid"
for _ in $(seq $((stop_timeout_s * 5))); do
  kill -0 "$up_pid" 2>/dev/null || break
  sleep 0.2
done
if kill -0 "$up_pid" 2>/dev/null; then
  echo "demo: strata up did not stop within $stop_timeout_s s of SIGTERM" >&2
  exit 1
fi
rc=0
wait "$up_pid" || rc=$?
up_pid=""
if [[ $rc -ne 0 ]]; then
  echo "demo: strata up exited with status $rc" >&2
  exit 1
fi
grep -E "stopping the cluster|every process has stopped" "$log" || true

printf '\nThe cluster stopped cleanly. To run it yourself (README.md has more):\n'
printf '  %s up --model %s   # Ctrl-C stops it\n' "$strata" "$model"
printf '  %s chat "Hello!"   # in another terminal (or the curl command it prints)\n' "$strata"
