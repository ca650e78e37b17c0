"""What sparse-edit writes, named once: the kind of every file, where metadata lives, folder layouts.

Every JSON object sparse-edit writes carries one of the ``*_KIND`` strings and a schema version;
safetensors files keep theirs under ``META_KEY`` in the header metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from sparse_edit.errors import SparseEditError

META_KEY = "sparse_edit"  # safetensors header metadata key of the artifact and the delta

LOCATE_KIND = "sparse-edit/locate"
DELTA_KIND = "sparse-edit/delta"
MANIFEST_KIND = "sparse-edit/manifest"
EVAL_KIND = "sparse-edit/eval"
JOURNAL_KIND = "sparse-edit/eval-journal"
TUNE_KIND = "sparse-edit/tune"
FEATURES_KIND = "sparse-edit/features"
GATE_KIND = "sparse-edit/gate"

# Inside a tune folder.
PARETO_JSON = "pareto.json"
PARETO_MARKDOWN = "pareto.md"
PARETO_PLOT = "pareto.png"
CHOSEN_CONFIG = "chosen.toml"
FRONT_CONFIGS = "front"  # tune: the apply config of every trial on the Pareto front, trial-N.toml
STUDY_DB = "study.db"
TUNED_EDIT_DIR = "edited"

# Inside an edited checkpoint folder (apply's output).
TOOL_DIR = "sparse_edit"
DELTA_FILE = f"{TOOL_DIR}/delta.safetensors"
MANIFEST_FILE = f"{TOOL_DIR}/manifest.json"
MODEL_CARD_FILE = "README.md"

# Inside an eval report folder.
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
REPLIES_FILE = "replies.jsonl"


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The sparse-edit metadata object of a safetensors file, or None when it has none."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError) as exc:
        raise SparseEditError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SparseEditError(f"{path}: its {META_KEY} metadata is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise SparseEditError(f"{path}: its {META_KEY} metadata is not a JSON object")
    return meta


def json_field(path: Path, key: str) -> str | None:
    """A string field of a JSON object sparse-edit wrote, or None for anything else (missing, unreadable, foreign)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = content.get(key) if isinstance(content, dict) else None
    return value if isinstance(value, str) else None


def checked_metadata(path: Path, kind: str, schema_version: int, flag: str, what: str) -> dict[str, Any]:
    """The metadata of a safetensors file sparse-edit wrote as ``kind`` at ``schema_version``; anything else is
    refused naming ``flag`` and ``what`` the file should be."""
    meta = read_metadata(Path(path))
    if not meta or meta.get("kind") != kind:
        raise SparseEditError(f"{flag} {path}: not a sparse-edit {what} (write one with sparse-edit gates)")
    if meta.get("schema_version") != schema_version:
        raise SparseEditError(f"{flag} {path}: {what} schema {meta.get('schema_version')} is not {schema_version}")
    return meta
