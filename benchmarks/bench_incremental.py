"""Incremental replies against plain greedy generation in `eval --base`: same model, same prompts, same run.

For a linear edit (apply's default, ``paper`` at 0.75 of the depth) and a gated one (``detector``, one
neuron at each of layers 16 and 20), on Qwen2.5-Coder-0.5B-Instruct (``--dtype``, default bfloat16; CPUs
without fast bfloat16 kernels run float32 faster), plus any folder an earlier ``apply`` wrote
(``--edited LABEL=PATH``, an edit of the same base model): the whole
``se.evaluate(base=...)`` with and without ``reuse_base_replies`` (the edited model's replies found
from the base model's by one teacher-forced pass, generated only from the first divergence), and
both again with ``base_cache`` holding the base replies of the first run (a later eval against the
same base);
seconds, ratio, whether the two report.json files are equal (settings aside), and how many
replies the edit changed.

Prompts: the anchor side of the fixed split only (MultiJail ids 100-314, MultiQ anchor ids), so no
test prompt is read. Writes benchmarks/results/incremental.json (incremental-float32.json for
``--dtype float32``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from runner import ANCHOR_LOCATE, MULTIJAIL_LANGS, QWEN, SHARED, need_shared_data, replies_by_prompt, save, timed
from runner import RUNS as ALL_RUNS

import sparse_edit as se

MODEL, LANGS, LOCATE = QWEN, MULTIJAIL_LANGS, ANCHOR_LOCATE
RUNS = ALL_RUNS / "bench-incremental"
REPLY_TOKENS = 24
BATCH = 16
# Anchor side only: the locate anchors of make demo; the timed prompts come from later anchor ids.
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


def edited_folder(runs: Path, name: str, settings: dict, dtype: str) -> Path:
    out = runs / name.split(" ")[0]
    if not (out / "sparse_edit" / "manifest.json").is_file():
        se.apply_edit(
            artifact=runs / "locate.safetensors",
            output=out,
            dtype=dtype,
            batch_size=BATCH,
            limit=48,
            harmless_limit=40,
            overwrite=True,
            **settings,
        )
    return out


# The evals timed against the plain one: (reuse_base_replies, base_cache) and the names of their figures
# (seconds, ratio to plain, report equal to plain's), as the earlier result files name them.
MODE_RUNS: dict[str, tuple[bool, bool, tuple[str, str, str]]] = {
    "reuse": (True, False, ("incremental_seconds", "speedup", "identical_report")),
    "cached": (False, True, ("cached_base_seconds", "cached_base_speedup", "cached_base_identical_report")),
    "cached-reuse": (
        True,
        True,
        (
            "cached_base_incremental_seconds",
            "cached_base_incremental_speedup",
            "cached_base_incremental_identical_report",
        ),
    ),
}
MODES = tuple(MODE_RUNS)


def eval_pass(runs: Path, label: str, edited_path: Path, dtype: str, modes: tuple[str, ...] = MODES) -> dict:
    """Up to four evals of one edit: plain, incremental, and both again with the base replies cached by the plain
    run (``modes``: which of the last three)."""
    tag = label.split(" ")[0]
    cache = runs / f"base-cache-{tag}"
    shutil.rmtree(cache, ignore_errors=True)

    def run(name: str, reuse: bool, cached: bool) -> tuple[dict, float]:
        out = runs / f"eval-{name}-{tag}"
        seconds, _ = timed(
            lambda: se.evaluate(
                model=edited_path,
                base=MODEL,
                output=out,
                overwrite=True,
                dtype=dtype,
                batch_size=BATCH,
                max_new_tokens=32,
                representation=False,
                reuse_base_replies=reuse,
                base_cache=cache if cached else None,
                **TIMED,
            )
        )
        report = json.loads((out / "report.json").read_text())
        for setting in ("reuse_base_replies", "base_cache"):
            report["settings"].pop(setting)
        return report, seconds

    # The plain run fills the cache as it goes (the cost of a first eval against this base), the later ones read it.
    plain, plain_s = run("plain", reuse=False, cached=True)
    replies = {
        key: {model: row["reply"] for model, row in rows.items()}
        for key, rows in replies_by_prompt(runs / f"eval-plain-{tag}").items()
    }
    changed = [key for key, pair in replies.items() if len(set(pair.values())) > 1]
    result: dict[str, Any] = {
        "replies": len(replies),
        "replies_changed_by_the_edit": len(changed),
        "changed_by_class": {label: sum(key[0] == label for key in changed) for label in ("harmful", "harmless")},
        "plain_seconds": round(plain_s, 1),
    }
    for mode, (reuse, cached, (seconds_key, ratio_key, identical_key)) in MODE_RUNS.items():
        if mode not in modes:
            continue
        report, seconds = run(mode, reuse=reuse, cached=cached)
        result[seconds_key] = round(seconds, 1)
        result[ratio_key] = round(plain_s / seconds, 2)
        result[identical_key] = plain == report
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--edited", action="append", default=[], metavar="LABEL=PATH", help="also time this edited folder"
    )
    parser.add_argument("--only-edited", action="store_true", help="time only the --edited folders")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="the evals timed against the plain one: reuse (incremental replies), cached (the base replies the plain "
        "run cached), cached-reuse (both)",
    )
    parser.add_argument("--name", default=None, help="results file name (default: incremental[-DTYPE])")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    extra = dict(item.split("=", 1) for item in args.edited)
    need_shared_data()
    runs = RUNS if args.dtype == "bfloat16" else RUNS.with_name(f"{RUNS.name}-{args.dtype}")
    runs.mkdir(parents=True, exist_ok=True)
    if not args.only_edited and not (runs / "locate.safetensors").is_file():
        se.locate(model=MODEL, output=runs / "locate.safetensors", dtype=args.dtype, batch_size=BATCH, **LOCATE)
    rows = []
    builtin = {} if args.only_edited else EDITS
    folders = {name: edited_folder(runs, name, settings, args.dtype) for name, settings in builtin.items()}
    folders.update({label: Path(path) for label, path in extra.items()})
    for name, path in folders.items():
        row = {"edit": name, "folder": str(path), "eval_base": eval_pass(runs, name, path, args.dtype, modes)}
        print(json.dumps(row, indent=2), flush=True)
        rows.append(row)
    path = save(
        args.name or ("incremental" if args.dtype == "bfloat16" else f"incremental-{args.dtype}"),
        {
            "command": " ".join(
                ["python benchmarks/bench_incremental.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "model": MODEL,
            "dtype": args.dtype,
            "max_new_tokens": REPLY_TOKENS,
            "batch_size": BATCH,
            "timed_prompts": TIMED,
            "split": "anchor side (MultiJail 250-314, MultiQ gpt-81..100, lmsys-61..80)",
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
