"""The eval report's schema (version 1), checked before a report is written."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateModel(_Strict):
    k: int = Field(ge=0)
    n: int = Field(ge=0)
    rate: float | None = Field(ge=0, le=1)
    ci95: list[float | None] = Field(min_length=2, max_length=2)


class ClassRates(_Strict):
    n: int = Field(ge=0)
    asr: RateModel
    refusal: RateModel
    invalid: RateModel


class Representation(_Strict):
    separation: list[float | None]
    probe_accuracy: list[float | None]


class RefusalLanguage(_Strict):
    refusals: int = Field(ge=0)
    undetermined: int = Field(ge=0)
    in_language: RateModel  # over the refusals whose language could be told


class ModelRow(_Strict):
    harmful: ClassRates
    harmless: ClassRates
    log_odds_harmful: float | None
    log_odds_harmless: float | None
    representation: Representation | None
    refusal_language: RefusalLanguage | None = None


class McNemar(_Strict):
    only_before: int
    only_after: int
    p_value: float = Field(ge=0, le=1)


class LanguageRow(ModelRow):
    base: ModelRow | None = None
    mcnemar_asr: McNemar | None = None
    mcnemar_over_refusal: McNemar | None = None


class ChangedPrompt(_Strict):
    id: str
    lang: str
    prompt: str
    base_reply: str
    edited_reply: str


class ChangedVerdicts(_Strict):
    newly_refused_harmless: list[ChangedPrompt]
    newly_answered_harmful: list[ChangedPrompt]


class ParityClass(_Strict):
    edited: RateModel
    base: RateModel


class ParityRow(_Strict):
    n: int = Field(ge=0)
    edited: RateModel  # share of parallel prompts whose verdict equals the base model's in the reference language
    base: RateModel
    by_class: dict[Literal["harmful", "harmless"], ParityClass]
    confusion_edited: dict[str, dict[str, int]]  # reference verdict -> this language's verdict -> count
    confusion_base: dict[str, dict[str, int]]
    mcnemar: McNemar  # only_before: at parity before the edit only; only_after: after it only


class ReferenceChange(_Strict):
    n: int = Field(ge=0)
    refusals_gained: RateModel
    refusals_lost: RateModel
    mcnemar: McNemar


class ParityReport(_Strict):
    reference_lang: str
    languages: dict[str, ParityRow]
    pooled: ParityRow
    reference_change: dict[Literal["harmful", "harmless"], ReferenceChange]


class GateRow(_Strict):
    expression: str
    value: float | None
    tripped: bool


class EvalReport(_Strict):
    kind: Literal["sparse-edit/eval"]
    schema_version: Literal[1]
    tool_version: str
    settings: dict[str, Any]
    judge: str
    models: dict[str, str | None]
    reference_lang: str
    counts: dict[str, dict[str, int]]
    languages: dict[str, LanguageRow]
    summary: dict[str, Any]
    pooled_tests: dict[str, McNemar] | None = None
    changed: ChangedVerdicts | None = None  # with --base: the prompts behind over-refusal and newly answered
    parity: ParityReport | None = None  # with --base: parity with the base model's reference-language verdicts
    gates: list[GateRow]


def finite(payload: Any) -> Any:
    """NaN and infinities become null, so report.json is strict JSON."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {key: finite(value) for key, value in payload.items()}
    if isinstance(payload, list | tuple):
        return [finite(value) for value in payload]
    return payload
