#!/usr/bin/env bash
# strata generate as a user runs it: streamed text and figures, --dump-logits rows, --dump-layers
# files, greedy determinism, chunked prefill giving the same logits, and clear errors.
set -euo pipefail
strata=${1:?usage: generate_test.sh STRATA_BINARY}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$strata" mkmodel --preset tiny --out "$work/tiny" --seed 3 >/dev/null
model="$work/tiny"
ids=$(seq -s ' ' 1000 1300)  # 301 prompt tokens: window, CSA and HCA groups all in play

"$strata" generate --model "$model" --prompt-ids "$ids" --max-tokens 6 --threads 2 \
  --dump-logits "$work/a.f32" --dump-layers "$work/layers" >"$work/a.txt" 2>"$work/a.err"
grep -q "prompt 301 tokens, generated 6" "$work/a.err" || fail "figures line: $(cat "$work/a.err")"
grep -q "TTFT" "$work/a.err" || fail "no TTFT on stderr"
[[ $(stat -c %s "$work/a.f32") -eq $((6 * 129280 * 4)) ]] || fail "dump-logits size $(stat -c %s "$work/a.f32")"
for l in 0 1 2 3 4; do
  f="$work/layers/X$l.npy"
  [[ -f "$f" ]] || fail "missing $f"
  # 128-byte header + 301 × 4 × 256 float32
  [[ $(stat -c %s "$f") -eq $((128 + 301 * 4 * 256 * 4)) ]] || fail "$f has size $(stat -c %s "$f")"
done
[[ $(stat -c %s "$work/layers/ids.npy") -eq $((128 + 301 * 8)) ]] || fail "ids.npy size"

# Greedy is deterministic, and prefill chunking does not change the logits.
"$strata" generate --model "$model" --prompt-ids "$ids" --max-tokens 6 --threads 2 --chunk 7 \
  --dump-logits "$work/b.f32" >"$work/b.txt" 2>/dev/null
cmp -s "$work/a.txt" "$work/b.txt" || fail "greedy text differs between runs"
cmp -s "$work/a.f32" "$work/b.f32" || fail "logits differ between --chunk 512 and --chunk 7"

# Chat, plain and file prompts stream text.
printf 'A long document, read from a file.' >"$work/prompt.txt"
"$strata" generate --model "$model" --prompt-file "$work/prompt.txt" --max-tokens 3 2>"$work/f.err" >/dev/null ||
  fail "--prompt-file failed"
grep -q "prompt 10 tokens" "$work/f.err" || fail "--prompt-file: $(cat "$work/f.err")"
"$strata" generate --model "$model" --chat "Hello" --max-tokens 4 >/dev/null 2>&1 || fail "--chat failed"
# The message is text: BOS, <｜User｜>, its 17 plain-text ids, <｜Assistant｜> (not EOS and a
# second assistant marker, 5 tokens in all).
"$strata" generate --model "$model" --chat '<｜end▁of▁sentence｜><｜Assistant｜>' --max-tokens 1 \
  2>"$work/c.err" >/dev/null || fail "--chat with control-token text failed"
grep -q "prompt 19 tokens" "$work/c.err" || fail "--chat let the message write control tokens: $(cat "$work/c.err")"

# Bad input: clear errors, non-zero exit.
if err=$("$strata" generate --model "$model" --prompt-ids "1 2 999999" 2>&1); then fail "bad id accepted"; fi
grep -q "999999" <<<"$err" || fail "bad id message: $err"
if err=$("$strata" generate --model "$model" --prompt "x" --max-tokens 2000000 2>&1); then fail "too long accepted"; fi
grep -q "exceeds the model's context" <<<"$err" || fail "too-long message: $err"
# --backend cuda: the same answer where a GPU is, else a clear refusal (no GPU, or no CUDA build).
if out=$("$strata" generate --model "$model" --prompt-ids "$ids" --max-tokens 6 --backend cuda 2>"$work/cuda.err"); then
  grep -q "generated 6" "$work/cuda.err" || fail "cuda figures line: $(cat "$work/cuda.err")"
else
  grep -Eq "CUDA backend: device 0 not present|backend 'cuda' is not available" "$work/cuda.err" ||
    fail "--backend cuda without a GPU: $(cat "$work/cuda.err")"
fi
if err=$("$strata" generate --model "$model" --prompt "x" --backend tpu 2>&1); then fail "unknown backend accepted"; fi
grep -q "unknown backend 'tpu'" <<<"$err" || fail "unknown backend message: $err"
echo "generate_test: all checks passed"
