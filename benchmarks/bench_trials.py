"""Trial time of `sparse-edit tune` with and without its shortcuts: the same study, the same trials, one run.

Runs ``se.tune`` once per mode, with one seed, search space and dev set, on Qwen2.5-Coder-0.5B-Instruct:

- ``plain``: every trial generates every dev reply and every pass runs every layer up to the last it
  reads (``replay_trunk`` and ``reuse_base_replies`` off);
- ``trunk``: the layers below the searched ones replayed (``replay_trunk``) in the KL passes and in a
  two-layer edit's second feature gather, replies generated;
- ``fast``: both shortcuts (the edited model's dev replies found from the base model's, checked in one
  teacher-forced pass that replays the trunk).

The search space is study 5's (``detector``, layers 16-20, up to two per edit, 24 reply tokens,
PolyRefuse harmless train and MultiQ harmless anchors; without the base model's replies to the harmless
anchors among the anchors, which cost every mode the same minutes before its first trial); ``--dev-scale`` multiplies its dev sets (8
harmful and 18 harmless prompts per language) and ``--dev-fraction`` holds out enough anchor ids for
them. Trials of the same number have the same settings in every mode (same seed, random start), so
their outcomes must be identical: the benchmark says whether they are, and the ratio of mean trial
seconds against ``plain`` (trial 0 aside: it also gathers the features; the solve's ratio counts it). Anchor side of the fixed
split only. Writes benchmarks/results/trials[-NAME].json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from runner import ANCHOR_LOCATE, QWEN, RUNS, SHARED, need_shared_data, save, timed

import sparse_edit as se

BATCH = 16
# Study 5's search (docs/results/study-5-instruction-anchors.md), its dev sets per language scaled by --dev-scale.
STUDY: dict[str, Any] = {
    "harmful": [f"{SHARED}/multijail/MultiJail.csv@100-314"],
    "harmless": [
        f"{SHARED}/polyrefuse/harmless_train_translated_*.json@0-39",
        f"{SHARED}/polyrefuse/harmless_train_en_sample.json@0-39",
        f"{SHARED}/multiq/multiq.jsonl@lmsys-41..80",
        f"{SHARED}/multiq/multiq.jsonl@gpt-51..100",
    ],
    "strategy": ["detector"],
    "candidate_layers": [16, 17, 18, 19, 20],
    "max_edit_layers": 2,
    "limit": 48,
    "harmless_limit": 130,
    "max_new_tokens": 24,
    "batch_size": BATCH,
    "seed": 0,
}
DEV_LIMIT, DEV_HARMLESS_LIMIT = 8, 18
MODES: dict[str, dict[str, Any]] = {
    "plain": {"replay_trunk": False, "reuse_base_replies": False},
    "trunk": {"replay_trunk": True, "reuse_base_replies": False},
    "fast": {"replay_trunk": True, "reuse_base_replies": True},
}


def run_mode(runs: Path, mode: str, artifact: Path, trials: int, args: argparse.Namespace) -> dict[str, Any]:
    out = runs / mode
    if args.reuse_finished and (out / "pareto.json").is_file():
        return read_study(out, None)
    seconds, _ = timed(
        lambda: se.tune(
            artifact=artifact,
            output=out,
            overwrite=True,
            trials=trials,
            dtype=args.dtype,
            dev_limit=DEV_LIMIT * args.dev_scale,
            dev_harmless_limit=DEV_HARMLESS_LIMIT * args.dev_scale,
            dev_fraction=args.dev_fraction,
            reporter=se.Reporter(),  # progress and a line per trial on stderr
            **STUDY,
            **MODES[mode],
        )
    )
    return read_study(out, round(seconds, 1))


def read_study(out: Path, seconds: float | None) -> dict[str, Any]:
    """A finished study's dev sizes and trials; ``seconds``: the whole tune command's, when timed here."""
    payload = json.loads((out / "pareto.json").read_text())
    return {
        "seconds": seconds,
        "dev": payload["dev"],
        "trials": {
            t["number"]: {
                "label": t["label"],
                "seconds": round(t["seconds"], 1),
                "phase_seconds": t.get("phase_seconds", {}),
                "outcome": t["outcome"],
            }
            for t in payload["trials"]
        },
    }


def warm_mean(
    trials: dict[int, dict[str, Any]], numbers: list[int], phases: tuple[str, ...] = (), first: bool = False
) -> float:
    """Mean seconds of the trials ``numbers`` other than trial 0 (the first pass over every dev input); with
    ``phases``, of those phases only (``replies`` and ``kl``: judging the edit, what the shortcuts change);
    with ``first``, trial 0 counted too (its solve is any trial's solve: the features it gathers first are
    a phase of their own)."""
    values = [
        sum(trials[n]["phase_seconds"][p] for p in phases) if phases else trials[n]["seconds"]
        for n in numbers
        if (first or n != 0) and n in trials
    ]
    return statistics.fmean(values) if values else float("nan")


JUDGING = ("replies", "kl")


def figure(value: float, digits: int) -> float | None:
    """``value`` rounded for the results file; None where it has no trials to stand on (JSON has no NaN)."""
    return None if math.isnan(value) else round(value, digits)


def table(results: dict[str, Any], modes: list[str]) -> str:
    """Markdown: each trial's seconds per phase in every mode."""
    lines = [
        "| trial | settings | mode | features | solve | dev replies | KL | total | outcome as the first mode's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = results[modes[0]]["trials"]
    for number in sorted({n for mode in modes for n in results[mode]["trials"]}):
        for mode in modes:
            trial = results[mode]["trials"].get(number)
            if trial is None:
                continue
            phases = trial["phase_seconds"]
            same = (
                "—"
                if number not in baseline or mode == modes[0]
                else ("identical" if trial["outcome"] == baseline[number]["outcome"] else "differs")
            )
            cells = [f"{phases.get(p, float('nan')):.1f}" for p in ("features", "solve", "replies", "kl")]
            lines.append(
                f"| {number} | {trial['label']} | {mode} | {' | '.join(cells)} | {trial['seconds']:.1f} | {same} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--modes", default="plain,fast", help=f"from {', '.join(MODES)}; the first is the baseline"
    )
    parser.add_argument("--trials", type=int, default=3, help="trials per mode (the baseline's)")
    parser.add_argument("--more-trials", type=int, default=0, help="trials beyond --trials for the other modes")
    parser.add_argument("--dev-scale", type=int, default=1, help="multiply study 5's dev sets per language")
    parser.add_argument("--dev-fraction", type=float, default=0.2, help="share of anchor ids held out for dev")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--artifact", type=Path, default=None, help="a locate artifact of Qwen2.5-Coder-0.5B")
    parser.add_argument(
        "--reuse-finished",
        action="store_true",
        help="take a mode's figures from its study folder of an earlier run of the same command, if it finished",
    )
    parser.add_argument("--name", default=None, help="results file: trials-NAME.json")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    need_shared_data()
    runs = RUNS / f"bench-trials-{args.dtype}"
    runs.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or runs / "locate.safetensors"
    if not artifact.is_file():
        se.locate(
            model=QWEN, output=artifact, dtype=args.dtype, batch_size=BATCH, **ANCHOR_LOCATE
        )  # as bench_incremental
    results: dict[str, Any] = {}
    for index, mode in enumerate(modes):
        results[mode] = run_mode(runs, mode, artifact, args.trials + (args.more_trials if index else 0), args)
        print(json.dumps({mode: {k: v for k, v in results[mode].items() if k != "trials"}}), flush=True)
    baseline = results[modes[0]]["trials"]
    shared = sorted(baseline)
    comparison = {}
    for mode in modes[1:]:
        trials = results[mode]["trials"]
        comparison[mode] = {
            "same_settings": all(trials[n]["label"] == baseline[n]["label"] for n in shared if n in trials),
            "identical_outcomes": all(
                trials[n]["outcome"] == baseline[n]["outcome"] for n in shared if n in trials
            ),
            "warm_trial_seconds": figure(warm_mean(trials, shared), 1),
            "warm_trial_seconds_all": figure(warm_mean(trials, sorted(trials)), 1),
            "speedup": figure(warm_mean(baseline, shared) / warm_mean(trials, shared), 2),
            "warm_judging_seconds": figure(warm_mean(trials, shared, JUDGING), 1),
            "judging_speedup": figure(
                warm_mean(baseline, shared, JUDGING) / warm_mean(trials, shared, JUDGING), 2
            ),
            "dev_replies_speedup": figure(
                warm_mean(baseline, shared, ("replies",)) / warm_mean(trials, shared, ("replies",)), 2
            ),
            "kl_speedup": figure(warm_mean(baseline, shared, ("kl",)) / warm_mean(trials, shared, ("kl",)), 2),
            "solve_seconds": figure(warm_mean(trials, shared, ("solve",), first=True), 1),
            "solve_speedup": figure(
                warm_mean(baseline, shared, ("solve",), first=True)
                / warm_mean(trials, shared, ("solve",), first=True),
                2,
            ),
        }
    summary = {
        "baseline": modes[0],
        "baseline_warm_trial_seconds": figure(warm_mean(baseline, shared), 1),
        "baseline_warm_judging_seconds": figure(warm_mean(baseline, shared, JUDGING), 1),
        "baseline_solve_seconds": figure(warm_mean(baseline, shared, ("solve",), first=True), 1),
        "against_baseline": comparison,
    }
    print(json.dumps(summary, indent=2))
    path = save(
        f"trials-{args.name}" if args.name else "trials",
        {
            "command": " ".join(
                ["python benchmarks/bench_trials.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "model": QWEN,
            "dtype": args.dtype,
            "study": {**STUDY, "dev_limit": DEV_LIMIT * args.dev_scale},
            "dev_harmless_limit": DEV_HARMLESS_LIMIT * args.dev_scale,
            "dev_fraction": args.dev_fraction,
            "split": "anchor side (MultiJail 100-314, PolyRefuse harmless train 0-39, MultiQ anchor ids)",
            "modes": {mode: MODES[mode] for mode in modes},
            "summary": summary,
            "results": results,
        },
    )
    markdown = path.with_suffix(".md")
    markdown.write_text(table(results, modes), encoding="utf-8")
    print(f"wrote {path} and {markdown.name}")


if __name__ == "__main__":
    main()
