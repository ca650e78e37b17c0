"""The manifest of an edited folder (``sparse_edit/manifest.json``), schema version 1.

apply validates the manifest against this model before writing it; verify and revert read it
through ``read_manifest``, so a manifest that breaks the schema is a failed check, not a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import MANIFEST_FILE

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseRecord(_Strict):
    path: str
    fingerprint: str  # sha256 over the base checkpoint's shard headers
    weights_sha256: str | None = None  # sha256 over its tensors' bytes (Checkpoint.weights_sha256)


class ArtifactRecord(_Strict):
    path: str
    sha256: str
    # Whether the base holds the weights the artifact was measured on: matched, overridden
    # (--allow-other-weights) or not recorded (an artifact older than weight hashes).
    weights_check: Literal["matched", "overridden", "not recorded"] | None = None


class EditRecord(_Strict):
    tensor: str
    layer: int = Field(ge=0)
    projection: str
    neurons: int = Field(ge=1)
    rank: int = Field(ge=1)
    changed_parameters: int = Field(ge=0)
    delta_norm: float


class Manifest(_Strict):
    kind: Literal["sparse-edit/manifest"]
    schema_version: Literal[1]
    tool_version: str
    versions: dict[str, str]
    settings: dict[str, Any]  # every apply option but where the output went
    seed: int
    base: BaseRecord
    artifact: ArtifactRecord
    delta_sha256: str
    strategy: str
    layers: list[int]
    selection_rule: str
    low_langs: list[str]
    edits: list[EditRecord]
    changed_parameters: int = Field(ge=0)
    changed_fraction: float = Field(ge=0, le=1)
    diagnostics: dict[str, Any]
    candidates: list[dict[str, Any]]
    anchors: dict[str, int] | None = None


def read_manifest(edited: Path) -> tuple[Manifest | None, str | None]:
    """(the manifest, None), or (None, what is wrong with it) when it is missing or breaks the schema.

    A file that is not JSON at all is an error (exit 2): the folder is damaged, not tampered with.
    """
    path = Path(edited) / MANIFEST_FILE
    if not path.is_file():
        return None, f"{MANIFEST_FILE} is missing"
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseEditError(
            f"{path}: not valid JSON ({exc}); the edited folder is damaged".splitlines()[0]
        ) from None
    try:
        return Manifest.model_validate(content), None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "the object"
        return None, f"{MANIFEST_FILE} does not match its schema ({where}: {error['msg']})"
