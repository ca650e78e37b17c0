"""The detector strategy's gain and layer, chosen on prompts that are neither anchors nor evaluation prompts.

For each --layers x --gains the detector edit is solved exactly as ``apply --strategy detector`` solves
it (same anchors, same code), applied in memory, and judged on short greedy replies (keyword judge):
harmful = PolyRefuse harmful *val* (never anchors; MultiJail is the evaluation set), harmless =
PolyRefuse harmless *train* ids past the anchors' limit (the evaluation's harmless prompts are the
val split), --per-lang of each in en, zh, it, ar, ko, th. Reports refusal / compliance / invalid
counts per language, base and every edit, and the probe's firing rates from the manifest diagnostics.

Run: python benchmarks/detector_dev.py [--layers 16] [--gains 4,8,16,32] [--per-lang 20] [--tokens 32]
-> benchmarks/results/qwen-detector-dev.json. Needs ../shared/data and runs/qwen/locate.safetensors
(python benchmarks/real_model.py makes it). About 4 min per configuration on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from contextlib import nullcontext
from typing import Any

from common import SHARED, in_memory, load_qwen_anchors, qwen_apply_options, save

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt, load_sources
from sparse_edit.edit.gather import gather
from sparse_edit.edit.plan import make_plan
from sparse_edit.edit.strategies.detector import DetectorSettings, detector_candidate
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.measure.probes import EditContext
from sparse_edit.model.batching import Encoded, encode_prompts
from sparse_edit.model.generation import generate_replies

LANGS = ["en", "zh", "it", "ar", "ko", "th"]
HARMLESS_FROM = 150  # past every anchor limit used here (48)


def first_per_language(prompts: list[Prompt], start: int, count: int) -> list[Prompt]:
    out = []
    for lang in LANGS:
        out += [p for p in prompts if p.lang == lang][start : start + count]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="16")
    parser.add_argument("--gains", default="4,8,16,32")
    parser.add_argument("--per-lang", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (PolyRefuse) is not present")
        return
    options = qwen_apply_options(strategy=["detector"])
    artifact, loaded, low_langs, anchors = load_qwen_anchors(options)
    reporter = Reporter(quiet=True)
    poly = SHARED / "polyrefuse"
    harmful, _ = load_sources([str(poly / "harmful_val_translated_*.json")], "harmful", "val")
    harmless, _ = load_sources(
        [str(poly / "harmless_train_translated_*.json"), str(poly / "harmless_train_en_sample.json")],
        "harmless",
        "train",
    )

    def encode(prompts: list[Prompt]) -> list[Encoded]:
        return encode_prompts(loaded.tokenizer, prompts, options.system_prompt, options.max_length)

    roles = {
        "harmful": encode(first_per_language(harmful, 0, args.per_lang)),
        "harmless": encode(first_per_language(harmless, HARMLESS_FROM, args.per_lang)),
    }
    judge = KeywordJudge()

    def verdicts(edit: EditContext | None = None) -> dict[str, dict[str, dict[str, int]]]:
        out: dict[str, dict[str, dict[str, int]]] = {}
        for role, items in roles.items():
            with (edit or nullcontext)():
                replies = generate_replies(loaded, items, args.tokens, options.batch_size, reporter)
            counts: dict[str, Counter[str]] = {}
            for item, reply in zip(items, replies, strict=True):
                label = judge.judge(item.prompt.text, item.prompt.lang, reply).label
                counts.setdefault(item.prompt.lang, Counter())[label] += 1
            out[role] = {lang: dict(c) for lang, c in counts.items()}
        return out

    def refusal_shares(verdict_counts: dict[str, dict[str, dict[str, int]]]) -> dict[str, float]:
        """Refusal share of English and non-English prompts, harmful and harmless."""
        shares = {}
        for role, counts in verdict_counts.items():
            for english, name in ((False, "non_english"), (True, "english")):
                langs = [lang for lang in counts if (lang == "en") == english]
                total = sum(sum(counts[lang].values()) for lang in langs)
                refused = sum(counts[lang].get("refusal", 0) for lang in langs)
                shares[f"refusal_{name}_{role}"] = refused / total if total else 0.0
        return shares

    started = time.perf_counter()
    base = verdicts()
    rows: list[dict[str, Any]] = []
    for layer in [int(x) for x in args.layers.split(",")]:
        plan = make_plan(options.model_copy(update={"layer": str(layer)}), artifact, loaded.num_layers, low_langs)
        data = gather(loaded, anchors, [layer], plan, options, reporter)[layer]
        for gain in [float(x) for x in args.gains.split(",")]:
            settings = DetectorSettings(gain, options.detector_margin, options.detector_sharpness, options.lam)
            edits, diagnostics = detector_candidate(layer, loaded.checkpoint, data, settings)
            counts = verdicts(in_memory(loaded, edits))
            row = {
                "layer": layer,
                "gain": gain,
                "diagnostics": diagnostics,
                "verdicts": counts,
                **refusal_shares(counts),
            }
            rows.append(row)
            print({k: v for k, v in row.items() if k.startswith(("layer", "gain", "refusal"))}, flush=True)
    path = save(
        "qwen-detector-dev",
        {
            "model": str(options.model),
            "tokens": args.tokens,
            "prompts": {role: len(items) for role, items in roles.items()},
            "harmful_source": "PolyRefuse harmful val (first per language)",
            "harmless_source": f"PolyRefuse harmless train ids {HARMLESS_FROM}+ (past the anchors)",
            "base": {"verdicts": base, **refusal_shares(base)},
            "rows": rows,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
