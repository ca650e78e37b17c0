"""Which kinds of harmless prompt an edit newly refuses: counts by source and by question form.

Pairs the edited replies of one eval folder with the base replies of another run on the same
prompts (the tune-study benchmark asks for the base model's replies with the first edit only), and
counts harmless prompts the base model did not refuse and the edit does, per group: the prompt
set (MultiQ `gpt`, MultiQ `lmsys`, PolyRefuse) and MultiQ's "why" questions, found by the English
text of their id (MultiQ is parallel by id). Also says how many prompts of each group the anchor
side of the split holds, so a cost the dev split could not see shows as such.

    python benchmarks/newly_refused.py EDITED_REPORT [--base BASE_REPORT]

Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from common import ROOT, link_shared_data
from reply_tokens import MULTIQ_ANCHOR_IDS, source_of
from tune_study import verdicts

MULTIQ = ROOT / "data" / "multiq" / "multiq.jsonl"
SOURCE_NAMES = {"gpt": "MultiQ gpt", "lmsys": "MultiQ lmsys", "polyrefuse": "PolyRefuse"}


def why_questions() -> set[str]:
    """MultiQ ids whose English text opens with "Why"."""
    ids = set()
    for line in MULTIQ.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["lang"] == "en" and row["text"].lower().startswith("why"):
            ids.add(row["id"])
    return ids


def group(prompt_id: str, why: set[str]) -> str:
    return "MultiQ why-question" if prompt_id in why else SOURCE_NAMES[source_of(prompt_id)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edited", type=Path, help="eval folder with the edited model's replies")
    parser.add_argument("--base", type=Path, help="eval folder with the base model's replies (default: edited)")
    args = parser.parse_args()
    link_shared_data()
    base_folder = args.base or args.edited
    base = verdicts(base_folder, "base")
    edited = verdicts(args.edited, "edited")
    if not base:
        raise SystemExit(f"{base_folder}: no base replies; pass --base with a folder run with --base")
    harmless = [key for key in edited if key[0] == "harmless"]
    if set(harmless) - set(base):
        raise SystemExit(f"{args.edited} and {base_folder} were not run on the same harmless prompts")
    why = why_questions()
    held, newly = Counter(), Counter()
    for key in harmless:
        name = group(key[2], why)
        held[name] += 1
        newly[name] += base[key] != "refusal" and edited[key] == "refusal"
    anchor_side_why = len(why & set(MULTIQ_ANCHOR_IDS))
    print(f"{'group':<22} {'newly refused':>14} {'of':>5} {'share':>7}")
    for name in sorted(held):
        print(f"{name:<22} {newly[name]:>14} {held[name]:>5} {100 * newly[name] / held[name]:>6.1f}%")
    total = sum(newly.values())
    print(f"{'all':<22} {total:>14} {len(harmless):>5} {100 * total / len(harmless):>6.1f}%")
    print(f'MultiQ "why" questions: {len(why)} ids, {anchor_side_why} on the anchor side of the split')


if __name__ == "__main__":
    main()
