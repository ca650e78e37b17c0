"""Incremental replies against plain greedy generation: same model, same prompts, same run.

For a linear edit (apply's default, ``paper`` at 0.75 of the depth) and a gated one (``detector``, one
neuron at each of layers 16 and 20), on Qwen2.5-Coder-0.5B-Instruct in bfloat16:

1. dev-reply pass: the edited model's greedy replies (24 tokens, stopped once the keyword judge's
   verdict is settled, as ``tune`` does) by plain generation and from the base model's replies
   (``incremental_replies``); seconds of each, their ratio, and how many replies are identical;
2. ``eval --base``: the whole command with and without ``--reuse-base-replies``; seconds, ratio,
   and whether the two report.json files are equal (settings aside).

Prompts: the anchor side of the fixed split only (MultiJail ids 100-314, MultiQ anchor ids), so no
test prompt is read. Writes benchmarks/results/incremental.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import ROOT, SHARED, save

import sparse_edit as se
from sparse_edit.api import eval_options, locate_options
from sparse_edit.console import Reporter
from sparse_edit.data.selection import prepare_prompts
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.generation import generate_tokens
from sparse_edit.model.incremental import incremental_replies
from sparse_edit.model.loading import load_model

MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
LANGS = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
RUNS = ROOT / "runs" / "bench-incremental"
DTYPE = "bfloat16"
REPLY_TOKENS = 24
BATCH = 16
# Anchor side only: the locate anchors of make demo; the timed prompts come from later anchor ids.
LOCATE: dict[str, Any] = {
    "harmful": [f"{SHARED}/multijail/MultiJail.csv@100-314"],
    "harmless": [f"{SHARED}/multiq/multiq.jsonl@gpt-51..100,lmsys-41..80"],
    "languages": LANGS,
    "limit": 64,
    "harmless_limit": 64,
}
TIMED: dict[str, Any] = {
    "harmful": [f"{SHARED}/multijail/MultiJail.csv@250-314"],
    "harmless": [f"{SHARED}/multiq/multiq.jsonl@gpt-81..100,lmsys-61..80"],
    "languages": LANGS,
    "limit": 6,
    "harmless_limit": 6,
}
EDITS: dict[str, dict[str, Any]] = {
    "linear (paper, apply's defaults)": {},
    "gated (detector at 16 and 20)": {
        "strategy": ["detector"],
        "layer": "16,20",
        "gain": 14.6,
        "detector_margin": 0.665,
        "detector_sharpness": 28.1,
    },
}


def edited_folder(name: str, settings: dict) -> Path:
    out = RUNS / name.split(" ")[0]
    if not (out / "sparse_edit" / "manifest.json").is_file():
        se.apply_edit(
            artifact=RUNS / "locate.safetensors",
            output=out,
            dtype=DTYPE,
            batch_size=BATCH,
            limit=48,
            harmless_limit=40,
            overwrite=True,
            **settings,
        )
    return out


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def dev_pass(base_model, edited_path: Path) -> dict:
    quiet, judge = Reporter(quiet=True), KeywordJudge()
    options = eval_options(model=edited_path, output=RUNS / "unused", dtype=DTYPE, device="cpu", **TIMED)
    sets = prepare_prompts(options, quiet, both_classes=False)
    edited = load_model(options)
    items = encode_prompts(edited.tokenizer, [*sets.harmful, *sets.harmless])

    def settled(prompt, reply):
        return judge.settled(prompt.lang, reply)

    drafts = generate_tokens(base_model, items, REPLY_TOKENS, BATCH, quiet, settled=settled)
    plain, plain_s = timed(lambda: generate_tokens(edited, items, REPLY_TOKENS, BATCH, quiet, settled=settled))
    fast, fast_s = timed(
        lambda: incremental_replies(edited, items, drafts, REPLY_TOKENS, BATCH, quiet, settled=settled)
    )
    return {
        "prompts": len(items),
        "plain_seconds": round(plain_s, 1),
        "incremental_seconds": round(fast_s, 1),
        "speedup": round(plain_s / fast_s, 2),
        "identical_replies": sum(a == b for a, b in zip(plain, fast.tokens, strict=True)),
        "replies_changed_by_the_edit": sum(a != b for a, b in zip(plain, drafts, strict=True)),
        **fast.stats(),
    }


def eval_pass(edited_path: Path) -> dict:
    def run(reuse: bool) -> tuple[dict, float]:
        out = RUNS / f"eval-{'reuse' if reuse else 'plain'}-{edited_path.name}"
        _, seconds = timed(
            lambda: se.evaluate(
                model=edited_path,
                base=MODEL,
                output=out,
                overwrite=True,
                dtype=DTYPE,
                batch_size=BATCH,
                max_new_tokens=32,
                representation=False,
                reuse_base_replies=reuse,
                **TIMED,
            )
        )
        report = json.loads((out / "report.json").read_text())
        report["settings"].pop("reuse_base_replies")
        return report, seconds

    plain, plain_s = run(False)
    fast, fast_s = run(True)
    return {
        "plain_seconds": round(plain_s, 1),
        "incremental_seconds": round(fast_s, 1),
        "speedup": round(plain_s / fast_s, 2),
        "identical_report": plain == fast,
    }


def main() -> None:
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this benchmark needs the shared prompt sets")
    RUNS.mkdir(parents=True, exist_ok=True)
    if not (RUNS / "locate.safetensors").is_file():
        se.locate(model=MODEL, output=RUNS / "locate.safetensors", dtype=DTYPE, batch_size=BATCH, **LOCATE)
    base = load_model(locate_options(model=MODEL, dtype=DTYPE, device="cpu", **LOCATE))
    rows = []
    for name, settings in EDITS.items():
        path = edited_folder(name, settings)
        row = {"edit": name, "dev_reply_pass": dev_pass(base, path), "eval_base": eval_pass(path)}
        print(json.dumps(row, indent=2), flush=True)
        rows.append(row)
    path = save(
        "incremental",
        {
            "model": MODEL,
            "dtype": DTYPE,
            "reply_tokens": REPLY_TOKENS,
            "batch_size": BATCH,
            "timed_prompts": TIMED,
            "split": "anchor side (MultiJail 250-314, MultiQ gpt-81..100, lmsys-61..80)",
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
