"""The one benchmark runner, and what every benchmark shares.

    python benchmarks/runner.py              # every benchmark (make bench)
    python benchmarks/runner.py speed dtype  # some of them
    python benchmarks/runner.py --list

Each benchmark is a module here with ``main(argv)``; it calls the library only through its public
face (``import sparse_edit as se``), measures its own baseline in the same run and writes its JSON
with ``save`` (the environment it ran in is recorded beside the figures). A benchmark that needs
what this machine lacks (the shared prompt sets) raises ``Skipped`` with the reason; the runner
reports it and goes on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs"

# name -> module: the order `make bench` runs them in (cheap and self-contained first).
BENCHMARKS = {
    "write": "bench_write",
    "speed": "bench_speed",
    "dtype": "bench_dtype",
    "gguf": "bench_gguf",
    "incremental": "bench_incremental",
    "trials": "bench_trials",
    "gates": "bench_gates",
    "gates-confirm": "gates_confirm",
    "gates-positions": "gates_positions",
    "judge": "judge_calibration",
    "tune-study": "tune_study",
}


# The real model most benchmarks measure, its ten MultiJail languages, and locate anchors from the anchor side of
# the fixed split (MultiJail ids 100-314, MultiQ anchor ids) that the timing benchmarks share.
QWEN = "zoo:qwen2.5-coder-0.5b-instruct"
MULTIJAIL_LANGS = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
ANCHOR_LOCATE: dict[str, Any] = {
    "harmful": [f"{SHARED}/multijail/MultiJail.csv@100-314"],
    "harmless": [f"{SHARED}/multiq/multiq.jsonl@gpt-51..100,lmsys-41..80"],
    "languages": MULTIJAIL_LANGS,
    "limit": 64,
    "harmless_limit": 64,
}


class Skipped(Exception):
    """This benchmark cannot run here; the message says why and how to make it run."""


def need_shared_data() -> Path:
    """The shared prompt sets (../shared/data); the example configs read them as ``data/...``."""
    if not SHARED.is_dir():
        raise Skipped(
            f"{SHARED} is missing: this benchmark needs the shared prompt sets (see benchmarks/README.md)"
        )
    data = ROOT / "data"
    if not data.exists():
        data.symlink_to(SHARED)
    return SHARED


def environment() -> dict[str, Any]:
    """What a figure depends on beyond the code: versions, threads, machine, commit."""
    import torch
    import transformers

    import sparse_edit as se

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {
        "sparse_edit": se.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": commit or None,
    }


def save(name: str, payload: dict[str, Any]) -> Path:
    """``benchmarks/results/NAME.json``: the payload and the environment it was measured in."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {**payload, "environment": environment()}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls, in seconds (the least disturbed by the rest of the machine)."""
    return min(timed(fn)[0] for _ in range(repeats))


# Run in a child process: prints {"seconds": ..., "rss_start_mb": ..., "rss_peak_mb": ...} for the body.
CHILD_TEMPLATE = """
import json, resource, time
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
{setup}
start_rss = rss_mb()
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
print("RESULT" + json.dumps({{"seconds": seconds, "rss_start_mb": start_rss,
      "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(setup: str, body: str) -> dict[str, float]:
    """Seconds and memory of ``body`` in a fresh process (after ``setup``, which is not timed)."""
    code = CHILD_TEMPLATE.format(setup=setup, body=body)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_replies(report: Path) -> list[dict[str, Any]]:
    """The rows of an eval report's ``replies.jsonl`` (docs/formats.md)."""
    text = (report / "replies.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def replies_by_prompt(report: Path) -> dict[tuple[str, str, str], dict[str, dict[str, Any]]]:
    """An eval report's rows by prompt, ``(class, lang, id)``, then by model (``base``, ``edited``)."""
    by_prompt: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for row in read_replies(report):
        by_prompt.setdefault((row["class"], row["lang"], str(row["id"])), {})[row["model"]] = row
    return by_prompt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks; results land in benchmarks/results/.")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their purpose")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.list:
        for name, module in BENCHMARKS.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
            print(f"{name:<12} {doc}")
        return 0
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(BENCHMARKS[name]).main([])
        except Skipped as reason:
            print(f"   skipped: {reason}", flush=True)
            continue
        except Exception as error:  # one benchmark's failure is reported; the others still run
            traceback.print_exc()
            print(f"   FAILED: {type(error).__name__}: {error}", flush=True)
            failed.append(name)
            continue
        print(f"   done in {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
