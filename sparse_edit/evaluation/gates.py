"""``--fail-if`` expressions: ``metric``, ``metric[lang]``, a comparison and a number."""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sparse_edit.errors import SparseEditError

_EXPRESSION = re.compile(
    r"^\s*([a-z_]+)(?:\[([A-Za-z-]+)\])?\s*(<=|>=|==|!=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$"
)
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Metric:
    """What a ``--fail-if`` metric is: one number, or one per language; whether it needs ``--base``."""

    per_language: bool = False
    needs_base: bool = False
    # Which prompts a per-language metric is measured on (its languages are theirs): a class, or
    # ``parallel``, the prompts of either class whose reference-language version is there too.
    prompts: str = "harmful"


# Every metric of the report's summary (``summary_metrics`` writes exactly these keys; a test checks it),
# so a gate is checked before any reply is generated.
METRICS: dict[str, Metric] = {
    "asr": Metric(per_language=True),
    "refusal": Metric(per_language=True),
    "invalid": Metric(per_language=True),
    "over_refusal": Metric(per_language=True, prompts="harmless"),
    "refusal_in_language": Metric(per_language=True),
    "log_odds": Metric(per_language=True),
    "mean_asr": Metric(),
    "mean_over_refusal": Metric(),
    "asr_delta": Metric(per_language=True, needs_base=True),
    "mean_asr_delta": Metric(needs_base=True),
    "asr_relative_change": Metric(needs_base=True),
    "over_refusal_delta": Metric(needs_base=True),
    "over_refusal_delta_by_lang": Metric(per_language=True, needs_base=True, prompts="harmless"),
    "log_odds_delta": Metric(per_language=True, needs_base=True),
    "kl_harmless": Metric(needs_base=True),
    "nll_delta": Metric(needs_base=True),
    "ppl_ratio": Metric(needs_base=True),
    "newly_answered_share": Metric(needs_base=True),
    "newly_refused_share": Metric(needs_base=True),
    "parity": Metric(per_language=True, needs_base=True, prompts="parallel"),
    "parity_delta": Metric(per_language=True, needs_base=True, prompts="parallel"),
    "mean_parity": Metric(needs_base=True),
    "mean_parity_delta": Metric(needs_base=True),
    "reference_refusals_gained": Metric(needs_base=True),
    "reference_refusals_lost": Metric(needs_base=True),
}


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    lang: str | None
    op: str
    threshold: float

    def evaluate(self, metrics: dict[str, Any]) -> tuple[bool, float]:
        """(tripped, value)."""
        value = lookup(metrics, self.metric, self.lang, self.text)
        return _OPERATORS[self.op](value, self.threshold), value


def parse_gate(text: str) -> Gate:
    """The gate ``text`` names, syntax only; ``check_gates`` also checks its metric against ``METRICS``."""
    match = _EXPRESSION.match(text)
    if not match:
        raise SparseEditError(
            f"--fail-if {text!r}: expected METRIC[LANG] OP NUMBER, e.g. 'asr[bn] > 0.30' or 'kl_harmless > 0.05'"
        )
    metric, lang, op, number = match.groups()
    return Gate(text, metric, lang, op, float(number))


def check_gates(texts: list[str], has_base: bool) -> list[Gate]:
    """Parse every gate and check its metric (name, per language or not, ``--base``) before any work."""
    gates = [parse_gate(text) for text in texts]
    for gate in gates:
        metric = METRICS.get(gate.metric)
        if metric is None:
            close = difflib.get_close_matches(gate.metric, METRICS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SparseEditError(
                f"--fail-if {gate.text!r}: unknown metric {gate.metric!r}; {hint}known: {', '.join(sorted(METRICS))}"
            )
        if metric.per_language and gate.lang is None:
            raise SparseEditError(
                f"--fail-if {gate.text!r}: {gate.metric} is per language; write {gate.metric}[LANG]"
            )
        if not metric.per_language and gate.lang is not None:
            raise SparseEditError(
                f"--fail-if {gate.text!r}: {gate.metric} is not per language; drop [{gate.lang}]"
            )
        if metric.needs_base and not has_base:
            raise SparseEditError(
                f"--fail-if {gate.text!r}: {gate.metric} compares with the base model; pass --base"
            )
    return gates


def check_gate_languages(gates: list[Gate], languages: dict[str, set[str]]) -> None:
    """Refuse a gate on a language the prompts do not hold (``languages``: class -> its languages)."""
    for gate in gates:
        if gate.lang is None:
            continue
        kind = METRICS[gate.metric].prompts
        have = languages.get(kind, set())
        if gate.lang not in have:
            raise SparseEditError(
                f"--fail-if {gate.text!r}: no {kind} prompts in {gate.lang}; the {kind} prompts are in "
                f"{', '.join(sorted(have)) or 'no language'}"
            )


def lookup(metrics: dict[str, Any], metric: str, lang: str | None, text: str) -> float:
    if metric not in metrics:
        raise SparseEditError(
            f"--fail-if {text!r}: unknown metric {metric!r}; known: {', '.join(sorted(metrics))}"
        )
    value = metrics[metric]
    if isinstance(value, dict):
        if lang is None:
            raise SparseEditError(f"--fail-if {text!r}: {metric} is per language; write {metric}[LANG]")
        if lang not in value:
            raise SparseEditError(f"--fail-if {text!r}: no {metric} for {lang}; have {', '.join(sorted(value))}")
        value = value[lang]
    elif lang is not None:
        raise SparseEditError(f"--fail-if {text!r}: {metric} is not per language; drop [{lang}]")
    if value is None:
        raise SparseEditError(f"--fail-if {text!r}: {metric} needs --base")
    return float(value)
