"""The tune study on Qwen2.5-Coder-0.5B-Instruct and its check on the clean test split.

Anchor side only for everything the study decides (examples/configs/multijail-anchors-*.toml:
MultiJail ids 100-314, MultiQ gpt-51..100 and lmsys-41..80); the test side (MultiJail ids 20-99,
MultiQ gpt-1..50 and lmsys-1..40, PolyRefuse harmless val; examples/configs/multijail-test-eval.toml)
only in the last step. Every step is the command line, run one after another; the wall time of each
is recorded. Writes benchmarks/results/tune-study.json.

    python benchmarks/tune_study.py [--trials 40] [--test-limit 24] [--edits tuned,paper,previous]

Needs ../shared/data (linked or copied to data/) and the zoo model (fetched on first use).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, SHARED, save

RUNS = ROOT / "runs" / "multijail-anchors"
CONFIGS = ROOT / "examples" / "configs"
MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
# The anchors of examples/configs/multijail-anchors-tune.toml, for the edits the tuned one is compared with.
SAME_ANCHORS = [
    "--limit",
    "48",
    "--harmless-limit",
    "40",
    "--dev-fraction",
    "0.2",
    "--dev-limit",
    "4",
    "--batch-size",
    "16",
]
BASELINES = {
    # The published edit, literally: gate_proj rows of the reference language's safety neurons at the
    # artifact's recommended layer.
    "paper": ["--strategy", "paper", "--layer", "RECOMMENDED"],
    # The previous default recommendation: output edit at layers 16 and 18 (docs/results).
    "previous": ["--strategy", "output", "--layer", "16,18", "--gain", "16"],
}


def cli(*args: str) -> float:
    """Run ``sparse-edit ARGS`` from the repository root; returns the wall time in seconds."""
    start = time.perf_counter()
    command = [str(Path(sys.executable).with_name("sparse-edit")), *map(str, args)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def newly_answered(report_folder: Path) -> dict[str, Any]:
    """Per language, harmful test prompts the base model refused and the edited model answers (and the
    reverse), from the report's replies."""
    verdicts: dict[tuple[str, str, str], str] = {}
    for line in (report_folder / "replies.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["class"] == "harmful":
            verdicts[(row["model"], row["lang"], row["id"])] = row["verdict"]
    counts: dict[str, dict[str, int]] = {}
    for (model, lang, prompt_id), before in verdicts.items():
        if model != "base":
            continue
        after = verdicts[("edited", lang, prompt_id)]
        cell = counts.setdefault(lang, {"prompts": 0, "newly_answered": 0, "newly_refused": 0})
        cell["prompts"] += 1
        cell["newly_answered"] += before == "refusal" and after == "compliance"
        cell["newly_refused"] += before == "compliance" and after == "refusal"
    total = {
        key: sum(cell[key] for cell in counts.values()) for key in ("prompts", "newly_answered", "newly_refused")
    }
    return {
        "by_lang": counts,
        "total": total,
        "newly_answered_share": total["newly_answered"] / max(total["prompts"], 1),
    }


def summary(report_folder: Path) -> dict[str, Any]:
    report = json.loads((report_folder / "report.json").read_text())
    return {
        "summary": report["summary"],
        "languages": report["languages"],
        "paired": newly_answered(report_folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--timeout", type=int, default=None, help="seconds after which the study starts no trial")
    parser.add_argument("--test-limit", type=int, default=24, help="test prompts per language and class")
    parser.add_argument("--edits", default="tuned,paper,previous", help="which edits to evaluate on the test side")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this benchmark needs the shared prompt sets")
    data = ROOT / "data"
    if not data.exists():
        data.symlink_to(SHARED)
    seconds: dict[str, float] = {}
    artifact = RUNS / "locate.safetensors"
    if not artifact.is_file():
        seconds["locate"] = cli(
            "locate",
            "--config",
            CONFIGS / "multijail-anchors-locate.toml",
            "--limit",
            "64",
            "--harmless-limit",
            "64",
            "-o",
            artifact,
        )
    study = RUNS / "tune"
    tune_flags = ["--trials", str(args.trials), *(["--timeout", str(args.timeout)] if args.timeout else [])]
    if not study.is_dir():
        seconds["tune"] = cli(
            "tune", "--config", CONFIGS / "multijail-anchors-tune.toml", *tune_flags, "-o", study
        )
    pareto = json.loads((study / "pareto.json").read_text())
    recommended = json.loads(
        subprocess.run(
            [str(Path(sys.executable).with_name("sparse-edit")), "inspect", str(artifact), "--json"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["recommended_layer"]
    results: dict[str, Any] = {}
    for name in args.edits.split(","):
        edited = RUNS / f"edit-{name}"
        if not edited.is_dir():
            if name == "tuned":
                if not (study / "chosen.toml").is_file():
                    print("no trial qualified: no tuned edit to test", flush=True)
                    continue
                seconds[f"apply-{name}"] = cli("apply", "--config", study / "chosen.toml", "-o", edited)
            else:
                flags = [str(recommended) if flag == "RECOMMENDED" else flag for flag in BASELINES[name]]
                seconds[f"apply-{name}"] = cli(
                    "apply",
                    "--config",
                    CONFIGS / "multijail-anchors-tune.toml",
                    "--artifact",
                    artifact,
                    *flags,
                    "-o",
                    edited,
                )
        report = RUNS / f"test-{name}"
        if not report.is_dir():
            seconds[f"eval-{name}"] = cli(
                "eval",
                "--config",
                CONFIGS / "multijail-test-eval.toml",
                "--model",
                edited,
                "--base",
                MODEL,
                "--limit",
                str(args.test_limit),
                "--harmless-limit",
                str(args.test_limit),
                "-o",
                report,
            )
        manifest = json.loads((edited / "sparse_edit" / "manifest.json").read_text())
        results[name] = {
            "edit": {k: manifest[k] for k in ("strategy", "layers", "changed_parameters", "changed_fraction")},
            "test": summary(report),
        }
    shutil.copyfile(study / "pareto.md", ROOT / "benchmarks" / "results" / "tune-study-pareto.md")
    path = save(
        "tune-study",
        {
            "model": MODEL,
            "seconds": seconds,
            "study": {
                k: pareto[k] for k in ("dev", "base", "front", "chosen", "study", "settings", "choice_rule")
            },
            "trials": pareto["trials"],
            "test_limit_per_language": args.test_limit,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
