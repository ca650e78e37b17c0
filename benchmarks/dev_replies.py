"""Does a generated-reply check on the anchors' dev split rank edits as held-out generation does?

The first-token refusal log-odds (apply's default dev proxy) missed the English over-refusal that
held-out generation shows and misranked edits. This script measures what ``apply --dev-generate``
measures — the keyword-judged refusal rate of short greedy replies, base vs edited — on the
anchors' *dev* prompts (PolyRefuse train ids held out from every fit; never MultiJail), for every
edit that benchmarks/real_model.py wrote and evaluated held-out, and sets the two side by side.

Each edit is read from its folder's ``sparse_edit/delta.safetensors`` and applied in memory to
the base model, so nothing is re-solved. Dev prompts: the anchors' dev split, harmful as the apply
config loads them (48 per language before the split), harmless drawn from all 200 per language
(ids outside every edit's training set), at most --dev-limit per language and class.

With --harmful-val the harmful dev prompts are PolyRefuse's harmful *val* split instead (39 per
language in the same languages; a larger, still MultiJail-free check).

Run: python benchmarks/dev_replies.py [--tokens 24] [--dev-limit 16] [--tag n10h30] [--harmful-val]
-> benchmarks/results/qwen-dev-replies.json (qwen-dev-replies-val.json with --harmful-val). Needs ../shared/data and the runs of real_model.py.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import RESULTS, SHARED, in_memory, load_qwen_anchors, merge_rows, qwen_apply_options, save
from real_model import STRATEGIES, chain, edited_dir

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import load_sources
from sparse_edit.edit.delta import EditDelta
from sparse_edit.io.layout import DELTA_FILE
from sparse_edit.measure.probes import EditContext, mean, rate_gains, refusal_rates
from sparse_edit.model.batching import Encoded, encode_prompts

HARMLESS_POOL = 200
HELD_OUT_KEYS = ("relative_asr_change", "over_refusal_delta", "english_asr_delta", "kl_harmless")


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    for rank, index in enumerate(order):
        out[index] = float(rank)
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (no tie correction; enough to read a handful of configurations)."""
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = mean(ra), mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24, help="tokens generated per dev reply")
    parser.add_argument("--dev-limit", type=int, default=16, help="dev prompts per language and class")
    parser.add_argument("--tag", default="n10h30", help="held-out results qwen-multijail-TAG.json to compare with")
    parser.add_argument(
        "--harmful-val",
        action="store_true",
        help="dev harmful prompts from PolyRefuse's harmful *val* split (39 per language, never anchors) instead "
        "of the anchors' dev split (about 8 per language); results go to qwen-dev-replies-val.json",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated configuration names (real_model.py's STRATEGIES) to measure, held-out results or "
        "not; rows of the others are kept from the last results file (default: every held-out configuration)",
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (PolyRefuse) is not present")
        return
    held_out = json.loads((RESULTS / f"qwen-multijail-{args.tag}.json").read_text())["strategies"]
    names = list(held_out) if args.only is None else args.only.split(",")
    if unknown := [name for name in names if name not in STRATEGIES]:
        raise SystemExit(f"--only: unknown configuration(s) {', '.join(unknown)}; see STRATEGIES in real_model.py")
    options = qwen_apply_options(harmless_limit=HARMLESS_POOL, dev_limit=args.dev_limit)
    _, loaded, _, anchors = load_qwen_anchors(options)
    reporter = Reporter(quiet=True)
    started = time.perf_counter()

    def rates(items: list[Encoded], edit: EditContext | None = None) -> dict[str, float]:
        extra = [edit] if edit is not None else []
        return refusal_rates(loaded, items, args.tokens, options.batch_size, reporter, *extra)

    harmful = anchors.low_dev
    if args.harmful_val:
        val, _ = load_sources([str(SHARED / "polyrefuse" / "harmful_val_translated_*.json")], "harmful", "val")
        low = {item.prompt.lang for item in anchors.low_dev}
        chosen = [p for p in val if p.lang in low]
        harmful = encode_prompts(loaded.tokenizer, chosen, options.system_prompt, options.max_length)
    roles = {"harmful": harmful, "harmless": anchors.safe_dev}
    base = {role: rates(items) for role, items in roles.items()}
    print({"base": base}, flush=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        # A configuration built on another one's edited model carries only its own step's delta.
        delta_paths = [edited_dir(step) / DELTA_FILE for step in chain(name)]
        if missing := [path for path in delta_paths if not path.is_file()]:
            print(f"skipped {name}: {missing[0]} is missing (run real_model.py --only '{name}')")
            continue
        edit = in_memory(loaded, [e for path in delta_paths for e in EditDelta.load(path).edits])

        result = held_out.get(name)
        row: dict[str, Any] = {
            "name": name,
            "held_out": {key: result.get(key) for key in HELD_OUT_KEYS} if result else None,
        }
        for role, items in roles.items():
            gain, by_lang = rate_gains(rates(items, edit), base[role])
            row[f"dev_refusal_rate_gain_{role}"] = gain
            row[f"dev_refusal_rate_gain_{role}_by_lang"] = by_lang
        rows.append(row)
        print({k: v for k, v in row.items() if not k.endswith("by_lang")}, flush=True)
    results_name = "qwen-dev-replies" + ("-val" if args.harmful_val else "")
    previous_path = RESULTS / f"{results_name}.json"
    if args.only is not None and previous_path.is_file():
        rows = merge_rows(json.loads(previous_path.read_text())["rows"], rows)
    compared = [r for r in rows if r["held_out"]]
    payload = {
        "model": str(options.model),
        "tokens": args.tokens,
        "held_out_results": f"qwen-multijail-{args.tag}.json",
        "dev_prompts": {"low_harmful": len(harmful), "harmless": len(anchors.safe_dev)},
        "harmful_dev_source": "PolyRefuse harmful val" if args.harmful_val else "anchors' dev split",
        "base_dev_refusal_rate": base,
        "rows": rows,
        # Held-out ASR change is negative when refusal rises, so a good proxy correlates negatively with it.
        "spearman_dev_harmful_gain_vs_held_out_asr_change": spearman(
            [r["dev_refusal_rate_gain_harmful"] for r in compared],
            [r["held_out"]["relative_asr_change"] for r in compared],
        ),
        "spearman_dev_harmless_gain_vs_held_out_over_refusal": spearman(
            [r["dev_refusal_rate_gain_harmless"] for r in compared],
            [r["held_out"]["over_refusal_delta"] for r in compared],
        ),
        "seconds": time.perf_counter() - started,
    }
    print(f"wrote {save(results_name, payload)}")


if __name__ == "__main__":
    main()
