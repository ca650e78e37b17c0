"""Which files and folders a command reads, and which stores it reads and writes, from its options.

Derived from the role each options field declares (``options.roles``): nothing here lists fields by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sparse_edit.io.destination import check_store
from sparse_edit.io.sources import source_files
from sparse_edit.options.roles import RoleKind, ValueForm, flag_of, role_of


def named_paths(form: ValueForm, value: object) -> list[Path]:
    """The files or folders one setting value names (one item of a list setting)."""
    text = str(value)
    if form == "model" and text.startswith("zoo:"):
        return []
    if form == "judge" and text == "keyword":
        return []
    if form == "prompts":
        return list(source_files(text))
    if form == "storage":
        if text.startswith("sqlite:///"):
            return [Path(text.removeprefix("sqlite:///"))] if text != "sqlite:///" else []
        if "://" in text:
            return []  # a database server's URL
    return [Path(text)]


def paths_with_role(options: BaseModel, *kinds: RoleKind) -> Iterator[tuple[str, Path]]:
    """(flag, path) for every path the options name in a field of one of ``kinds``; unset fields name none."""
    for name in type(options).model_fields:
        role = role_of(type(options), name)
        if role is None or role.kind not in kinds:
            continue
        value: Any = getattr(options, name)
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                yield from ((flag_of(name), path) for path in named_paths(role.form, item))


def command_inputs(options: BaseModel, config: Path | None = None) -> list[tuple[str, Path]]:
    """(flag, path) for every path a command's options read (inputs, stores and the --config file): what no
    output may be, lie inside or contain. A store that is, lies inside or contains an input is refused."""
    inputs = list(paths_with_role(options, "read"))
    if config is not None:
        inputs.append(("--config", Path(config)))
    stores = list(paths_with_role(options, "read-written"))
    for flag, store in stores:
        check_store(flag, store, inputs)
    return inputs + stores
