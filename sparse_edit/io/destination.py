"""Where a command's output may go: the destination rules every command shares.

* an output path is never an input, never contains one and never sits inside one;
* a store the run reads and writes (``tune --storage``, ``eval --base-cache``) is never an input either;
* ``--overwrite`` only replaces an earlier output of the same command (recognised by the
  marker file every output folder carries, or a locate artifact's own metadata).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import (
    EVAL_KIND,
    LOCATE_KIND,
    MANIFEST_FILE,
    MANIFEST_KIND,
    REPORT_JSON,
    json_field,
    read_metadata,
)

Command = Literal["locate", "apply", "eval", "revert", "tune", "gates"]
# Written into every output folder: which command made it (what --overwrite may replace).
OUTPUT_MARKER = ".sparse-edit-output.json"


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def written_by(command: Command, path: Path) -> bool:
    """Whether ``path`` is an earlier output of ``command`` (the only thing --overwrite replaces)."""
    if command == "locate":
        try:
            return path.is_file() and (read_metadata(path) or {}).get("kind") == LOCATE_KIND
        except SparseEditError:
            return False
    if command == "apply" and path.suffix == ".gguf" and path.is_file():
        from sparse_edit.io.gguf import KEY_PREFIX, read

        try:
            return KEY_PREFIX + "delta_sha256" in read(path).fields
        except SparseEditError:
            return False
    if not path.is_dir():
        return False
    if (path / OUTPUT_MARKER).is_file():
        return json_field(path / OUTPUT_MARKER, "command") == command
    # Folders written before the marker existed.
    if command == "apply":
        return json_field(path / MANIFEST_FILE, "kind") == MANIFEST_KIND
    if command == "eval":
        return json_field(path / REPORT_JSON, "kind") == EVAL_KIND
    return False


def check_output(
    dest: Path,
    command: Command,
    inputs: Iterable[tuple[str, Path]],
    overwrite: bool,
    flag: str = "--output",
) -> None:
    """Refuse, before any work, a destination that would destroy an input or anything not ours."""
    dest = Path(dest)
    if dest.is_symlink() and not dest.exists():
        raise SparseEditError(f"{flag} {dest}: is a dangling symbolic link; remove it or pick another path")
    target = _resolved(dest)
    for input_flag, path in inputs:
        source = _resolved(Path(path))
        if source == target:
            raise SparseEditError(f"{flag} {dest}: is the input {input_flag} {path}; inputs are never modified")
        if _contains(source, target):
            raise SparseEditError(
                f"{flag} {dest}: lies inside the input {input_flag} {path}; pick a path outside it"
            )
        if _contains(target, source):
            raise SparseEditError(
                f"{flag} {dest}: contains the input {input_flag} {path}; replacing it would delete that input"
            )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SparseEditError(f"{flag} {dest}: {ancestor} is a file, not a folder; pick another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SparseEditError(f"{flag} {dest}: no permission to write in {ancestor}")
    if not dest.exists():
        return
    if not overwrite:
        raise SparseEditError(f"{flag} {dest}: already exists; pass --overwrite to replace it")
    if not written_by(command, dest):
        raise SparseEditError(
            f"{flag} {dest}: exists and was not written by sparse-edit {command}; --overwrite only replaces an "
            "earlier output of the same command, so remove it yourself or pick another path"
        )


def check_store(flag: str, store: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse a store the run reads and writes (``tune --storage``, ``eval --base-cache``) that is, lies inside or
    contains an input: the run would write into that input."""
    target = _resolved(store)
    for input_flag, path in inputs:
        source = _resolved(path)
        if source == target:
            raise SparseEditError(f"{flag} {store}: is the input {input_flag} {path}; inputs are never modified")
        if _contains(source, target):
            raise SparseEditError(
                f"{flag} {store}: lies inside the input {input_flag} {path}, which would then be modified; "
                "pick a path outside it"
            )
        if _contains(target, source):
            raise SparseEditError(
                f"{flag} {store}: contains the input {input_flag} {path}; keep inputs and the files the run "
                "writes apart"
            )
