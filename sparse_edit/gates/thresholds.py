"""Thresholds a gate fires above, set on out-of-fold scores so that no harmless group fires too often.

A gate fires on a prompt when its score is above the threshold. The rule everywhere: the lowest threshold
that keeps every harmless group (a source, or a source and kind) at or under the firing limit. Scores are
out-of-fold: each prompt is scored by a probe fitted without its fold, and the folds keep every prompt id
together (a parallel prompt's translations share an id), so a threshold never sees a prompt's own fit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def lowest_threshold(scores: np.ndarray, groups: Sequence[str], limit: float) -> float:
    """The lowest ``t`` with, in every group, the share of ``scores > t`` at most ``limit``; -inf for no scores.

    In a group of n scores at most floor(limit·n) may fire, so ``t`` is that group's (k+1)-th largest score.
    """
    group_array = np.asarray(groups)
    threshold = -math.inf
    for group in np.unique(group_array):
        ordered = np.sort(scores[group_array == group])[::-1]
        allowed = math.floor(limit * len(ordered) + 1e-9)
        if allowed < len(ordered):
            threshold = max(threshold, float(ordered[allowed]))
    return threshold


def per_language_thresholds(
    scores: np.ndarray, langs: Sequence[str], groups: Sequence[str], languages: Sequence[str], limit: float
) -> np.ndarray:
    """One threshold per language in ``languages``: the rule above over that language's harmless prompts;
    a language without harmless prompts gets the global threshold (over every harmless prompt)."""
    lang_array, group_array = np.asarray(langs), np.asarray(groups)
    overall = lowest_threshold(scores, groups, limit)
    thresholds = []
    for lang in languages:
        mask = lang_array == lang
        thresholds.append(lowest_threshold(scores[mask], group_array[mask], limit) if mask.any() else overall)
    return np.asarray(thresholds, dtype=np.float64)


def fold_of(ids: Sequence[str], folds: int) -> np.ndarray:
    """A fold per prompt, the same for every prompt of one id (stable across runs and machines)."""
    return np.asarray(
        [int.from_bytes(hashlib.sha256(str(item).encode()).digest()[:4], "big") % folds for item in ids]
    )


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties count half); NaN if a side is empty."""
    if not len(positive) or not len(negative):
        return math.nan
    combined = np.concatenate([positive, negative])
    order = combined.argsort(kind="mergesort")
    ranks = np.empty(len(combined), dtype=np.float64)
    ranks[order] = np.arange(1, len(combined) + 1)
    # Average the ranks of tied scores.
    values, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
    if len(values) < len(combined):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    positive_ranks = ranks[: len(positive)].sum()
    return float((positive_ranks - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))
