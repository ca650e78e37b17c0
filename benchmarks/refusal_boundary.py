"""Which benign prompts do edits tip into refusal, and why?

For every held-out eval report of benchmarks/real_model.py (--tag, default n10h30), takes the
harmless prompts the base model did not refuse and splits them by whether the edited model
refused them; then scores each with the base model's first-token refusal log-odds (the mass on
refusal openings at the last prompt position) and reports, per configuration, the two groups'
mean log-odds and the rank of the tipped prompts among all (AUC: 1 = every tipped prompt sat
closer to refusal than every untipped one, 0.5 = no relation). Prompts are read from each
report's replies.jsonl, so this needs the real_model.py runs; no edit is recomputed.

Second, the edit's own response: for each configuration's layer-16 edit (read from its saved delta),
the norm of the update it adds at the last prompt token, ‖k_last[S] ΔW‖ (k = the base model's
neuron activations there), averaged over tipped harmless, kept harmless and harmful prompts per
language — a linear detector's score, to set against the model's refusal threshold.

Run: python benchmarks/refusal_boundary.py [--tag n10h30] -> benchmarks/results/qwen-refusal-boundary.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from common import SHARED, qwen_apply_options, save
from real_model import STRATEGIES, chain, edited_dir, report_dir

from sparse_edit.data.prompts import Prompt
from sparse_edit.edit.delta import EditDelta
from sparse_edit.io.layout import DELTA_FILE
from sparse_edit.measure.probes import mean, refusal_scores
from sparse_edit.model.batching import Encoded, encode_prompts
from sparse_edit.model.hooks import capture
from sparse_edit.model.loading import LoadedModel, load_model


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


LAYER = 16


def last_token_neurons(loaded: LoadedModel, encoded: list[Encoded]) -> torch.Tensor:
    """[N, d_ff] base neuron activations at LAYER, last prompt token, one prompt at a time (no padding)."""
    rows = []
    for item in encoded:
        got: dict[int, torch.Tensor] = {}
        with (
            capture(loaded.family, loaded.model, [LAYER], "neurons", got.__setitem__),
            torch.inference_mode(),
        ):
            loaded.model(input_ids=torch.tensor([item.ids], device=loaded.input_device), use_cache=False)
        rows.append(got[LAYER][0, -1].float().cpu())
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", default="n10h30", help="report folders runs/qwen/report-NAME-TAG")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is not present")
        return
    reports = {}
    for name in STRATEGIES:
        path = report_dir(name, args.tag) / "replies.jsonl"
        if path.is_file():
            reports[name] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if not reports:
        raise SystemExit(f"no reports with tag {args.tag}: run benchmarks/real_model.py --tag {args.tag} first")
    # The harmless prompts and base verdicts are the same in every report; take them from the first.
    first = next(iter(reports.values()))
    base_rows = [r for r in first if r["model"] == "base" and r["class"] == "harmless"]
    prompts = [Prompt(r["id"], r["lang"], r["prompt"], "harmless") for r in base_rows]
    options = qwen_apply_options()
    loaded = load_model(options)
    encoded = encode_prompts(loaded.tokenizer, prompts, options.system_prompt, options.max_length)
    scores = refusal_scores(loaded, encoded, options.batch_size)
    position: dict[str, int] = {}
    score_of: dict[tuple[str, str], float] = {}
    for prompt in prompts:
        index = position.get(prompt.lang, 0)
        score_of[(prompt.lang, prompt.id)] = scores[prompt.lang][index]
        position[prompt.lang] = index + 1
    base_refused = {(r["lang"], r["id"]) for r in base_rows if r["verdict"] == "refusal"}
    harmful_rows = [r for r in first if r["model"] == "base" and r["class"] == "harmful"]
    harmful = encode_prompts(
        loaded.tokenizer,
        [Prompt(r["id"], r["lang"], r["prompt"], "harmful") for r in harmful_rows],
        options.system_prompt,
        options.max_length,
    )
    activations = {"harmless": last_token_neurons(loaded, encoded), "harmful": last_token_neurons(loaded, harmful)}
    rows: list[dict[str, Any]] = []
    for name, replies in reports.items():
        tipped = {
            (r["lang"], r["id"])
            for r in replies
            if r["model"] == "edited" and r["class"] == "harmless" and r["verdict"] == "refusal"
        } - base_refused
        keys = [key for key in score_of if key not in base_refused]
        yes = [score_of[k] for k in keys if k in tipped]
        no = [score_of[k] for k in keys if k not in tipped]
        english = [k for k in keys if k[0] == "en"]
        rows.append(
            {
                "name": name,
                "tipped": len(yes),
                "not_tipped": len(no),
                "mean_log_odds_tipped": mean(yes) if yes else None,
                "mean_log_odds_not_tipped": mean(no) if no else None,
                "auc": auc(yes, no),
                "auc_english": auc(
                    [score_of[k] for k in english if k in tipped],
                    [score_of[k] for k in english if k not in tipped],
                ),
            }
        )
        steps = [EditDelta.load(edited_dir(step) / DELTA_FILE).edits for step in chain(name)]
        edits = [e for step_edits in steps for e in step_edits if e.layer == LAYER]
        if edits:
            edit = edits[0]

            def score(role: str, edit: Any = edit) -> list[float]:
                return (activations[role][:, edit.neurons] @ edit.rows_delta).norm(dim=-1).tolist()

            harmless_scores, harmful_scores = score("harmless"), score("harmful")
            groups: dict[str, dict[str, list[float]]] = {}
            for prompt, value in zip(prompts, harmless_scores, strict=True):
                key = (prompt.lang, prompt.id)
                if key not in base_refused:
                    groups.setdefault("harmless_tipped" if key in tipped else "harmless_kept", {}).setdefault(
                        prompt.lang, []
                    ).append(value)
            for item, value in zip(harmful, harmful_scores, strict=True):
                groups.setdefault("harmful", {}).setdefault(item.prompt.lang, []).append(value)
            rows[-1]["last_token_edit_norm"] = {
                group: {lang: mean(values) for lang, values in by_lang.items()}
                for group, by_lang in groups.items()
            }
        print(rows[-1], flush=True)
    payload = {"model": str(options.model), "tag": args.tag, "harmless_prompts": len(prompts), "rows": rows}
    print(f"wrote {save('qwen-refusal-boundary', payload)}")


if __name__ == "__main__":
    main()
