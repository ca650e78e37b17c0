"""Incremental replies against plain greedy generation in `eval --base`: same model, same prompts, same run.

For a linear edit (apply's default, ``paper`` at 0.75 of the depth) and a gated one (``detector``, one
neuron at each of layers 16 and 20), on Qwen2.5-Coder-0.5B-Instruct in bfloat16: the whole
``se.evaluate(base=...)`` with and without ``reuse_base_replies`` (the edited model's replies found
from the base model's by one teacher-forced pass, generated only from the first divergence);
seconds, ratio, whether the two report.json files are equal (settings aside), and how many
replies the edit changed.

Prompts: the anchor side of the fixed split only (MultiJail ids 100-314, MultiQ anchor ids), so no
test prompt is read. Writes benchmarks/results/incremental.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner import RUNS as ALL_RUNS
from runner import SHARED, need_shared_data, read_replies, save, timed

import sparse_edit as se

MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
LANGS = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
RUNS = ALL_RUNS / "bench-incremental"
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


def eval_pass(edited_path: Path) -> dict:
    def run(reuse: bool) -> tuple[dict, float]:
        out = RUNS / f"eval-{'reuse' if reuse else 'plain'}-{edited_path.name}"
        seconds, _ = timed(
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
    replies: dict[tuple[str, str, str], dict[str, str]] = {}
    for row in read_replies(RUNS / f"eval-plain-{edited_path.name}"):
        replies.setdefault((row["class"], row["lang"], row["id"]), {})[row["model"]] = row["reply"]
    return {
        "replies": len(replies),
        "replies_changed_by_the_edit": sum(len(set(pair.values())) > 1 for pair in replies.values()),
        "plain_seconds": round(plain_s, 1),
        "incremental_seconds": round(fast_s, 1),
        "speedup": round(plain_s / fast_s, 2),
        "identical_report": plain == fast,
    }


def main(argv: list[str] | None = None) -> None:
    need_shared_data()
    RUNS.mkdir(parents=True, exist_ok=True)
    if not (RUNS / "locate.safetensors").is_file():
        se.locate(model=MODEL, output=RUNS / "locate.safetensors", dtype=DTYPE, batch_size=BATCH, **LOCATE)
    rows = []
    for name, settings in EDITS.items():
        path = edited_folder(name, settings)
        row = {"edit": name, "eval_base": eval_pass(path)}
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
