"""Rates with Wilson intervals and the exact McNemar test for paired before/after labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import binomtest


@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {"k": self.k, "n": self.n, "rate": self.value, "ci95": [self.low, self.high]}


def wilson(k: int, n: int, z: float = 1.959963984540054) -> Rate:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n == 0:
        return Rate(0, 0, float("nan"), float("nan"))
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The interval always contains p; rounding can put centre - half a hair above 0 at k = 0.
    return Rate(k, n, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def mcnemar(before: list[bool], after: list[bool]) -> dict[str, float | int]:
    """Exact (binomial) McNemar test on paired outcomes; b = only before, c = only after."""
    if len(before) != len(after):
        raise ValueError("paired outcomes need equal lengths")
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"only_before": b, "only_after": c, "p_value": p_value}
