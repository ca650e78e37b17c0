"""Dev-split replies on Qwen2.5-Coder-0.5B-Instruct: over-refusal measured by generation, not log-odds.

The first-token refusal log-odds miss the English over-refusal that held-out generation shows, so
this script generates short greedy replies to the anchors' *dev* prompts (PolyRefuse train ids held
out from every fit; never MultiJail) and judges them with the keyword judge, as ``apply
--dev-generate`` does, for output edits at layer 16 (gain 16) that differ in their harmless anchors:

* 48 harmless prompts per language (the locate config's limit) vs all 200 PolyRefuse has
  (``--harmless-limit 200``), at harmless-tail weight 1 and 4.

Every variant is measured on the same dev prompts (up to --dev-limit per language, drawn from the
200). Run: python benchmarks/dev_replies.py [--tokens 24] [--dev-limit 24]
-> benchmarks/results/qwen-dev-replies.json. Needs ../shared/data and runs/qwen/locate.safetensors.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from common import SHARED, load_qwen_anchors, qwen_apply_options, save

from sparse_edit.apply import Anchors, Plan, gather
from sparse_edit.console import Reporter
from sparse_edit.delta import applied_in_memory
from sparse_edit.locate import prepare_prompts
from sparse_edit.modeling import Encoded
from sparse_edit.probes import mean, refusal_rates, refusal_scores, token_kl
from sparse_edit.solver import SolveSettings
from sparse_edit.strategies import edit_neurons, output_candidate

LAYER = 16
GAIN = 16.0
FULL_HARMLESS = 200
VARIANTS = [(48, 1.0), (FULL_HARMLESS, 1.0), (FULL_HARMLESS, 4.0)]  # (harmless prompts per language, tail weight)


def first_per_language(items: list[Encoded], ids: dict[str, set[str]]) -> list[Encoded]:
    return [item for item in items if item.prompt.id in ids.get(item.prompt.lang, set())]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24, help="tokens generated per dev reply")
    parser.add_argument("--dev-limit", type=int, default=24, help="dev prompts per language and class")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (PolyRefuse) is not present")
        return
    options = qwen_apply_options(harmless_limit=FULL_HARMLESS, dev_limit=args.dev_limit)
    artifact, loaded, low_langs, anchors = load_qwen_anchors(options)
    reporter = Reporter(quiet=True)
    ref = options.reference_lang
    # The first N harmless prompts per language, as --harmless-limit N would load them.
    small = prepare_prompts(options.model_copy(update={"harmless_limit": None}), reporter).harmless
    small_ids: dict[str, set[str]] = {}
    for prompt in small:
        small_ids.setdefault(prompt.lang, set()).add(prompt.id)
    bs = options.batch_size
    neurons = edit_neurons(artifact, LAYER, "low-union", ref, low_langs, options.max_edit_neurons)
    plan = Plan(["output"], [(LAYER,)], {("output", LAYER): neurons}, ["neurons", "residual"])
    solve = SolveSettings(
        options.output_gamma, options.lam, options.rank, options.nullspace, options.nullspace_threshold
    )
    started = time.perf_counter()

    def rates(items: list[Encoded], edit: Any = None) -> dict[str, float]:
        return refusal_rates(loaded, items, args.tokens, bs, reporter, *([edit] if edit else []))

    base = {"harmful": rates(anchors.low_dev), "harmless": rates(anchors.safe_dev)}
    base_scores = refusal_scores(loaded, anchors.safe_dev, bs)
    print({"base": base}, flush=True)
    data_by_size = {}
    rows: list[dict[str, Any]] = []
    for size, weight in VARIANTS:
        if size not in data_by_size:
            subset: Anchors = anchors
            if size != FULL_HARMLESS:
                subset = replace(
                    anchors,
                    safe_train=first_per_language(anchors.safe_train, small_ids),
                    ref_safe_train=first_per_language(anchors.ref_safe_train, small_ids),
                )
            data_by_size[size] = (
                gather(loaded, subset, [LAYER], plan, options, reporter)[LAYER],
                len(subset.safe_train),
            )
        data, train_count = data_by_size[size]
        edits, diag = output_candidate(LAYER, neurons, loaded.checkpoint, data, solve, GAIN, 1.0, weight)
        storage = {e.slice.tensor: loaded.checkpoint.torch_dtype(e.slice.tensor) for e in edits}

        def edit(edits: list = edits, storage: dict = storage) -> Any:
            return applied_in_memory(loaded.model, edits, storage)

        row: dict[str, Any] = {
            "name": f"output@{LAYER} gain {GAIN:g} tail weight {weight:g} harmless {size}/language",
            "harmless_train_prompts": train_count,
            "harmless_tail_ratio_dev": diag.get("harmless_tail_ratio_dev"),
            "fit_dev": diag.get("fit_dev"),
        }
        for role, items in (("harmful", anchors.low_dev), ("harmless", anchors.safe_dev)):
            after = rates(items, edit)
            by_lang = {lang: after[lang] - base[role][lang] for lang in after}
            row[f"refusal_rate_gain_{role}"] = mean(list(by_lang.values()))
            row[f"refusal_rate_gain_{role}_by_lang"] = by_lang
        scores = refusal_scores(loaded, anchors.safe_dev, bs, edit)
        row["log_odds_gain_harmless"] = mean([mean(scores[lang]) - mean(base_scores[lang]) for lang in scores])
        row["kl_harmless"], _ = token_kl(loaded, anchors.safe_dev, bs, edit)
        rows.append(row)
        print(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if not k.endswith("by_lang")},
            flush=True,
        )
    payload = {
        "model": str(options.model),
        "layer": LAYER,
        "tokens": args.tokens,
        "dev_prompts": {"low_harmful": len(anchors.low_dev), "harmless": len(anchors.safe_dev)},
        "base_refusal_rate": base,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    print(f"wrote {save('qwen-dev-replies', payload)}")


if __name__ == "__main__":
    main()
