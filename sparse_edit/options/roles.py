"""What a run does with each path-valued setting: reads it, writes it, or both.

A field's role is declared where the field is declared, as ``Annotated`` metadata
(``Annotated[Path, READ]``); the destination rules (``io.inputs``, ``io.destination``) derive every list of
inputs, outputs and stores from these markers, so a new path setting cannot be forgotten by one of them.
A setting that holds text, not a path, says so with ``TEXT``: every string or path field carries one of
the markers, and a test fails when one does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

RoleKind = Literal["read", "written", "read-written", "text"]
# How a value names files: as a path; a model (zoo: names none); prompt specs (globs, :LANG, @IDS); a judge
# (keyword names none); a study storage (a journal file, an sqlite:/// URL's file, or a server's URL: none).
ValueForm = Literal["path", "model", "prompts", "judge", "storage"]


@dataclass(frozen=True)
class Role:
    """``read``: an input, never written; ``written``: an output; ``read-written``: a store the run reads and
    adds to (a study, a reply cache), which must survive every output; ``text``: not a path."""

    kind: RoleKind
    form: ValueForm = "path"


READ = Role("read")
WRITTEN = Role("written")
READ_WRITTEN = Role("read-written")
TEXT = Role("text")
MODEL = Role("read", "model")
PROMPTS = Role("read", "prompts")
JUDGE = Role("read", "judge")
STORE = Role("read-written", "storage")


def role_of(model: type[BaseModel], name: str) -> Role | None:
    """The role declared on ``model``'s field ``name``, or None if it declares none."""
    return next((item for item in model.model_fields[name].metadata if isinstance(item, Role)), None)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")
