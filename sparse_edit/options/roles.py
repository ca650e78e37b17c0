"""What a run does with each path-valued setting: reads it, writes it, or both.

A field's role is declared where the field is declared, as ``Annotated`` metadata
(``Annotated[Path, READ]``); the destination rules (``io.outputs``) derive every list of inputs,
outputs and stores from these markers, so a new path setting cannot be forgotten by one of them.
A setting that holds text, not a path, says so with ``TEXT``: every string or path field carries
one of the markers, and a test fails when one does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

RoleKind = Literal["read", "written", "read-written", "text"]


def plain_path(value: object) -> list[Path]:
    return [Path(str(value))]


@dataclass(frozen=True)
class Role:
    """``read``: an input, never written; ``written``: an output; ``read-written``: a store the run reads and
    adds to (a study, a reply cache), which must survive every output; ``text``: not a path.

    ``paths`` turns the setting's value (one item of a list setting) into the files or folders it names,
    or none (``zoo:`` models, the built-in judge, a database server's URL)."""

    kind: RoleKind
    paths: Callable[[object], list[Path]] = plain_path


def model_paths(value: object) -> list[Path]:
    return [] if str(value).startswith("zoo:") else [Path(str(value))]


def judge_paths(value: object) -> list[Path]:
    return [] if str(value) == "keyword" else [Path(str(value))]


def prompt_paths(value: object) -> list[Path]:
    from sparse_edit.io.sources import source_files

    return list(source_files(str(value)))


def storage_paths(value: object) -> list[Path]:
    """The file a ``--storage`` value names: a journal file's path or an ``sqlite:///`` URL's file; a database
    server's URL names none."""
    text = str(value)
    if text.startswith("sqlite:///"):
        return [Path(text.removeprefix("sqlite:///"))] if text != "sqlite:///" else []
    if "://" in text:
        return []
    return [Path(text)]


READ = Role("read")
WRITTEN = Role("written")
READ_WRITTEN = Role("read-written")
TEXT = Role("text")
MODEL = Role("read", model_paths)
PROMPTS = Role("read", prompt_paths)
JUDGE = Role("read", judge_paths)
STORE = Role("read-written", storage_paths)


def role_of(model: type[BaseModel], name: str) -> Role | None:
    """The role declared on ``model``'s field ``name``, or None if it declares none."""
    return next((item for item in model.model_fields[name].metadata if isinstance(item, Role)), None)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def paths_with_role(options: BaseModel, *kinds: RoleKind) -> Iterator[tuple[str, Path]]:
    """(flag, path) for every path the options name in a field of one of ``kinds``; unset fields name none."""
    for name in type(options).model_fields:
        role = role_of(type(options), name)
        if role is None or role.kind not in kinds:
            continue
        value: Any = getattr(options, name)
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                yield from ((flag_of(name), path) for path in role.paths(item))


def command_inputs(options: BaseModel, config: Path | None = None) -> list[tuple[str, Path]]:
    """(flag, path) for every path a command's options read (inputs, stores and the --config file): what no
    output may be, lie inside or contain. A store that is, lies inside or contains an input is refused."""
    from sparse_edit.io.outputs import check_store

    inputs = list(paths_with_role(options, "read"))
    if config is not None:
        inputs.append(("--config", Path(config)))
    stores = list(paths_with_role(options, "read-written"))
    for flag, store in stores:
        check_store(flag, store, inputs)
    return inputs + stores
