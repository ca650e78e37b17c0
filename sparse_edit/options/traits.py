"""Facts about a setting beyond its type and help, declared where the setting is declared.

Each is a marker in the field's ``Annotated`` metadata; the code that needs a list of settings derives it
with ``fields_with`` (the flags that split on commas, the keys of a study and of a reply journal, what apply
takes from the locate artifact), so a new setting is in the right lists by its own declaration.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class Trait:
    name: str


# The flag also takes comma-separated values (--languages en,th as well as --languages en th).
COMMA_LIST = Trait("comma-list")
# Recorded in the locate artifact: apply and tune take it from there when neither a flag nor the config sets it.
INHERITED = Trait("inherited")
# Decides only how long a tune study runs, where it goes or which trial is chosen: left out of the study's key,
# so a resumed study may change it.
NOT_IN_STUDY_KEY = Trait("not-in-study-key")
# Does not change a generated reply: left out of eval's reply-journal key. (Prompt selection is among these:
# each journaled reply is matched to its prompt's text.)
NOT_IN_REPLY_KEY = Trait("not-in-reply-key")


@dataclass(frozen=True)
class ShortFlag:
    """The setting's one-letter flag besides its long one (``-o``)."""

    flag: str


def fields_with(model: type[BaseModel], trait: Trait) -> frozenset[str]:
    """The names of ``model``'s fields that declare ``trait``."""
    return frozenset(name for name, field in model.model_fields.items() if trait in field.metadata)


def short_flag(model: type[BaseModel], name: str) -> str | None:
    return next((item.flag for item in model.model_fields[name].metadata if isinstance(item, ShortFlag)), None)
