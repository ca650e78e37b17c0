"""Which prompts a command reads: sources, languages and how many of each."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from sparse_edit.options.base import Options
from sparse_edit.options.roles import PROMPTS, TEXT
from sparse_edit.options.traits import COMMA_LIST, INHERITED, NOT_IN_REPLY_KEY


class PromptOptions(Options):
    """Which prompts a command reads."""

    panel: ClassVar[str | None] = "prompts"

    harmful: Annotated[list[str], PROMPTS, NOT_IN_REPLY_KEY, INHERITED] = Field(
        min_length=1,
        description="Harmful prompt sources: files or glob patterns (.jsonl, .json per language, wide .csv); "
        "append :LANG to name a .json file's language or :en,th to pick .csv columns. Several may follow "
        "one flag (--harmful a.jsonl b.json:th) or the flag may be repeated.",
    )
    harmless: Annotated[list[str], PROMPTS, NOT_IN_REPLY_KEY, INHERITED] = Field(
        min_length=1,
        description="Harmless prompt sources, same formats as --harmful; several may follow one flag.",
    )
    reference_lang: Annotated[str, TEXT, NOT_IN_REPLY_KEY, INHERITED] = Field(
        "en", description="The high-resource language whose safety pattern is the target."
    )
    languages: Annotated[list[str] | None, TEXT, COMMA_LIST, NOT_IN_REPLY_KEY, INHERITED] = Field(
        None, description="Languages to use (default: every language found in the sources)."
    )
    limit: Annotated[int | None, NOT_IN_REPLY_KEY, INHERITED] = Field(
        None, ge=2, description="Use at most this many prompts per language and class."
    )
    harmless_limit: Annotated[int | None, NOT_IN_REPLY_KEY, INHERITED] = Field(
        None,
        ge=2,
        description="Use at most this many harmless prompts per language (default: --limit). apply: the "
        "null-space anchors (Gram, harmless-tail rows); eval: the over-refusal set, which needs more prompts than "
        "attack success to resolve (at 36 prompts one reply is 2.8 points).",
    )
    skip: Annotated[int, NOT_IN_REPLY_KEY, INHERITED] = Field(
        0,
        ge=0,
        description="Leave out the first N prompts per language and class before --limit applies: a fresh slice "
        "of the same sources for a second held-out check.",
    )
    harmless_skip: Annotated[int | None, NOT_IN_REPLY_KEY, INHERITED] = Field(
        None, ge=0, description="Leave out the first N harmless prompts per language (default: --skip)."
    )
