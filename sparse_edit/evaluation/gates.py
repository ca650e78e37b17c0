"""``--fail-if`` expressions: ``metric``, ``metric[lang]``, a comparison and a number."""

from __future__ import annotations

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
    match = _EXPRESSION.match(text)
    if not match:
        raise SparseEditError(
            f"--fail-if {text!r}: expected METRIC[LANG] OP NUMBER, e.g. 'asr[bn] > 0.30' or 'kl_harmless > 0.05'"
        )
    metric, lang, op, number = match.groups()
    return Gate(text, metric, lang, op, float(number))


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
