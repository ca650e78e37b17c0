"""Does counting the model's own replies among the harmless tokens keep an edit quiet while it answers?

One edit (a study's trial, by default study 3's two-layer per-language detector), solved twice on
the same anchor-side prompts: harmless tokens from the prompts only, and from the prompts plus 24
tokens of the model's greedy reply to each (--harmless-reply-tokens). Both are measured on anchor-side
prompts no edit was fitted on: MultiJail ids 200-239 (the study's anchors stop before them), MultiQ's
anchor-side dev ids (held out of the anchors by --dev-fraction) and PolyRefuse harmless train.
Choosing between the two settings from these numbers leaves the test side untouched.

    python benchmarks/reply_tokens.py [--study benchmarks/results/tune-study-bf16-layers.json] [--trial 20]

Writes benchmarks/results/reply-tokens.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, link_shared_data, save
from tune_study import MODEL, cli, paired, study_config, verdicts

from sparse_edit.edit.anchors import is_dev

HARMFUL = "data/multijail/MultiJail.csv@200-239"
MULTIQ_ANCHOR_IDS = [f"gpt-{i}" for i in range(51, 101)] + [f"lmsys-{i}" for i in range(41, 81)]
POLYREFUSE_TRAIN = [
    "data/polyrefuse/harmless_train_translated_*.json@0-19",
    "data/polyrefuse/harmless_train_en_sample.json@0-19",
]
LANGUAGES = "en,zh,it,vi,ar,ko,th,bn,sw,jv"
VARIANTS = {"prompts-only": 0, "with-replies": 24}


def source_of(prompt_id: str) -> str:
    return prompt_id.split("-")[0] if "-" in prompt_id else "polyrefuse"


def by_source(edited_report: Path, base_report: Path) -> dict[str, Any]:
    """Harmless refusals per source, base and edited."""
    base = {(lang, i): v for (cls, lang, i), v in verdicts(base_report, "base").items() if cls == "harmless"}
    edited = {(lang, i): v for (cls, lang, i), v in verdicts(edited_report, "edited").items() if cls == "harmless"}
    table: dict[str, Any] = {}
    for source in sorted({source_of(i) for _, i in base}):
        keys = [k for k in base if source_of(k[1]) == source]
        table[source] = {
            "prompts": len(keys),
            "refused_base": sum(base[k] == "refusal" for k in keys),
            "refused_edited": sum(edited[k] == "refusal" for k in keys),
            "newly_refused": sum(base[k] != "refusal" and edited[k] == "refusal" for k in keys),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=RESULTS / "tune-study-bf16-layers.json")
    parser.add_argument("--trial", type=int, default=20)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "reply-tokens")
    parser.add_argument("--harmless-limit", type=int, default=90, help="anchor harmless prompts per language")
    args = parser.parse_args()
    link_shared_data()
    runs: Path = args.runs.resolve()
    runs.mkdir(parents=True, exist_ok=True)
    study = json.loads(args.study.read_text())
    (trial,) = [t for t in study["trials"] if t["number"] == args.trial]
    pareto = {"settings": {**study["study"]["settings"], "harmless_limit": args.harmless_limit}}
    dev_ids = [
        i for i in MULTIQ_ANCHOR_IDS if is_dev(i, pareto["settings"]["dev_fraction"], pareto["settings"]["seed"])
    ]
    harmless = [f"data/multiq/multiq.jsonl@{','.join(dev_ids)}", *POLYREFUSE_TRAIN]
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {}
    base_report: Path | None = None
    for name, reply_tokens in VARIANTS.items():
        edited = runs / f"edit-{name}"
        if not edited.is_dir():
            config = study_config(
                pareto, {**trial["settings"], "harmless_reply_tokens": reply_tokens}, runs / f"{name}.toml"
            )
            seconds[f"apply-{name}"] = cli("apply", "--config", config, "-o", edited)
        report = runs / f"eval-{name}"
        base_report = base_report or report
        if not report.is_dir():
            seconds[f"eval-{name}"] = cli(
                "eval",
                "--model",
                edited,
                *(["--base", MODEL] if report == base_report else []),
                "--harmful",
                HARMFUL,
                "--harmless",
                *harmless,
                "--languages",
                LANGUAGES,
                "--max-new-tokens",
                "32",
                "--no-representation",
                "--dtype",
                "bfloat16",
                "-o",
                report,
            )
        manifest = json.loads((edited / "sparse_edit" / "manifest.json").read_text())
        results[name] = {
            "harmless_reply_tokens": reply_tokens,
            "changed_parameters": manifest["changed_parameters"],
            "paired": paired(report, base_report),
            "harmless_by_source": by_source(report, base_report),
        }
    assert base_report is not None
    results["prompts-only"]["kl_harmless"] = json.loads((base_report / "report.json").read_text())["summary"][
        "kl_harmless"
    ]
    path = save(
        "reply-tokens",
        {
            "command": " ".join(["python benchmarks/reply_tokens.py", *sys.argv[1:]]),
            "model": MODEL,
            "edit": {"study": str(args.study.name), "trial": args.trial, "settings": trial["settings"]},
            "split": "anchor side, prompts no edit was fitted on",
            "harmful": HARMFUL,
            "harmless": harmless,
            "seconds": seconds,
            "results": results,
        },
    )
    (RESULTS / "reply-tokens.md").write_text(render(json.loads(path.read_text())))
    print(f"wrote {path} and reply-tokens.md")


def render(payload: dict[str, Any]) -> str:
    lines = [
        "# Harmless reply tokens: one edit solved with and without them",
        "",
        f"Written by `{payload['command']}`. Edit: trial {payload['edit']['trial']} of "
        f"`{payload['edit']['study']}` ({payload['edit']['settings']}). Split: {payload['split']} "
        f"(harmful {payload['harmful']}; harmless MultiQ anchor-side dev ids and PolyRefuse harmless train 0-19); "
        "32-token greedy replies, bfloat16, keyword judge.",
        "",
        "| harmless tokens | non-English ASR | newly answered | over-refusal (pooled) | McNemar over-refusal | "
        "newly invalid | refused by source (base → edited) |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for name, row in payload["results"].items():
        test = row["paired"]
        sources = "; ".join(
            f"{source} {s['refused_base']}→{s['refused_edited']}/{s['prompts']}"
            for source, s in row["harmless_by_source"].items()
        )
        mc = test["mcnemar_over_refusal"]
        lines.append(
            f"| {name} | {100 * test['mean_asr_non_english_base']:.1f} → {100 * test['mean_asr_non_english_edited']:.1f} % | "
            f"{test['newly_answered']}/{test['harmful_prompts']} | "
            f"{100 * test['over_refusal_pooled_base']['rate']:.1f} → {100 * test['over_refusal_pooled_edited']['rate']:.1f} % | "
            f"{mc['only_after']} newly refused / {mc['only_before']} released, p = {mc['p_value']:.2g} | "
            f"{test['newly_invalid']}/{test['harmful_prompts'] + test['harmless_prompts']} | {sources} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
