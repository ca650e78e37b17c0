#!/usr/bin/env bash
# Patch a checkpoint with sparse-edit and gate it: locate -> apply -> verify -> eval.
#
# Usage: patch-model.sh BASE_MODEL CONFIG_DIR OUT_DIR
#   BASE_MODEL  model folder (safetensors), .gguf file or zoo:NAME
#   CONFIG_DIR  holds locate.toml, apply.toml and eval.toml (each step's settings; the script
#               supplies model, artifact and output paths, so leave those out)
#   OUT_DIR     created; receives locate.safetensors, model/ (the patched checkpoint),
#               verify.json and report/ (report.json, report.md, replies.jsonl, charts)
#
# Exit codes: 0 patched and every gate passed; 1 verify failed or an eval gate tripped
# (outputs are kept for inspection, but do not publish them); 2 bad input or an error.
# Set SPARSE_EDIT to override the command (default: sparse-edit).
set -uo pipefail

if [ "$#" -ne 3 ]; then
    echo "usage: $0 BASE_MODEL CONFIG_DIR OUT_DIR" >&2
    exit 2
fi
base=$1
config=$2
out=$3
cli=${SPARSE_EDIT:-sparse-edit}

for step in locate apply eval; do
    if [ ! -f "$config/$step.toml" ]; then
        echo "error: $config/$step.toml is missing (one TOML per step: locate, apply, eval)" >&2
        exit 2
    fi
done
if [ -e "$out" ]; then
    echo "error: $out already exists; give a new OUT_DIR" >&2
    exit 2
fi
mkdir -p "$out"

run() {
    echo "::group::sparse-edit $1" >&2
    $cli "$@"
    local code=$?
    echo "::endgroup::" >&2
    return $code
}

run locate --config "$config/locate.toml" --model "$base" -o "$out/locate.safetensors" || exit $?
run apply --config "$config/apply.toml" --model "$base" --artifact "$out/locate.safetensors" -o "$out/model" || exit $?
run verify "$base" "$out/model" --json > "$out/verify.json" || exit $?
run eval --config "$config/eval.toml" --model "$out/model" --base "$base" \
    --artifact "$out/locate.safetensors" -o "$out/report" || exit $?
echo "patched model: $out/model; report: $out/report/report.md" >&2
