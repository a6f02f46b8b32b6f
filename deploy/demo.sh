#!/usr/bin/env bash
# `make demo`: the most the project can show today. Makes the tiny model (once), loads and
# verifies it the way the engine will, and shows the DeepSeek tokenizer at work.
set -euo pipefail
strata=${1:?usage: demo.sh STRATA_BINARY MODEL_DIR}
model=${2:?usage: demo.sh STRATA_BINARY MODEL_DIR}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ ! -f "$model/config.json" ]]; then
  step "strata mkmodel --preset tiny --out $model --seed 1"
  "$strata" mkmodel --preset tiny --out "$model" --seed 1
fi

step "strata inspect --model $model"
"$strata" inspect --model "$model"

text='Strata serves DeepSeek-V4: 1,048,576 tokens of context, 压缩的注意力 🚀'
step "strata tokenize --model $model --text '$text'"
ids=$("$strata" tokenize --model "$model" --text "$text")
echo "$ids"
step "strata detokenize --model $model --ids '<the ids above>'"
"$strata" detokenize --model "$model" --ids "$ids"

step "strata tokenize --model $model --chat --text 'What is the capital of France?'"
"$strata" tokenize --model "$model" --chat --text 'What is the capital of France?'

step "strata generate --model $model --chat 'What is the capital of France?' --max-tokens 24"
echo "(the demo model has random weights: expect fluent-looking nonsense, streamed token by token)"
"$strata" generate --model "$model" --chat 'What is the capital of France?' --max-tokens 24

step "strata kv-size --preset flash --context 1048576"
"$strata" kv-size --preset flash --context 1048576

printf '\nNext: `strata up` (the disaggregated cluster) is being built; see README.md.\n'
