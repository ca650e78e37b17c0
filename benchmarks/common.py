"""Helpers shared by the benchmarks: peak memory of a child process and timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"

# Run in a child process: prints {"seconds": ..., "rss_start_mb": ..., "rss_peak_mb": ...} for the code's body.
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
    code = CHILD_TEMPLATE.format(setup=setup, body=body)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def link_shared_data() -> None:
    """The example configs read ``data/...``: link ``data/`` to ../shared/data (stop when that is missing)."""
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this benchmark needs the shared prompt sets")
    data = ROOT / "data"
    if not data.exists():
        data.symlink_to(SHARED)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def qwen_apply_options(**overrides: Any) -> Any:
    """ApplyOptions of examples/configs/qwen-polyrefuse-apply.toml on the real-model locate artifact, with
    ``overrides``; the artifact's prompt settings are inherited exactly as the CLI does (sparse_edit.api)."""
    import os

    from sparse_edit.api import apply_options

    os.chdir(ROOT)
    artifact_path = ROOT / "runs" / "qwen" / "locate.safetensors"
    if not artifact_path.is_file():
        raise SystemExit(f"{artifact_path} is missing: run python benchmarks/real_model.py (its first step) first")
    return apply_options(
        ROOT / "examples" / "configs" / "qwen-polyrefuse-apply.toml",
        artifact=artifact_path,
        output=ROOT / "runs" / "qwen" / "unused",
        **overrides,
    )


def load_qwen_anchors(options: Any) -> tuple[Any, Any, list[str], Any]:
    """(locate artifact, loaded model, low-resource languages, anchors) for ``options`` (quiet)."""
    from sparse_edit.console import Reporter
    from sparse_edit.edit.anchors import build_anchors
    from sparse_edit.edit.run import load_edit_inputs

    reporter = Reporter(quiet=True)
    inputs = load_edit_inputs(options, reporter)
    anchors = build_anchors(options, inputs.loaded, inputs.prompts, reporter)
    return inputs.artifact, inputs.loaded, inputs.low_langs, anchors


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new rows, plus the old ones whose names were not measured again (in their old order)."""
    fresh = {row["name"] for row in new}
    return [row for row in old if row["name"] not in fresh] + new


def in_memory(loaded: Any, edits: list[Any]) -> Any:
    """An edit context (see sparse_edit.measure.probes.EditContext) that applies ``edits`` to the loaded model."""
    from sparse_edit.edit.delta import applied_in_memory

    storage = {e.slice.tensor: loaded.checkpoint.torch_dtype(e.slice.tensor) for e in edits}
    return lambda: applied_in_memory(loaded.model, edits, storage)
