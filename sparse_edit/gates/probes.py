"""Linear probes on cached states, fitted as classifiers, and the linear read-out of the prompt's language.

Every probe here is linear in the raw state ``x`` with a bias: ``score = w·x + b``. ``lda`` is shrinkage
linear discriminant analysis on standardised states (closed form; one eigendecomposition of the
within-class covariance serves every shrinkage, so a screen tries many for the price of one); ``logistic``
is L2-regularised logistic regression (L-BFGS). Rows are weighted so that every harmful language and every
harmless group carries the same total weight: the many statements of one source cannot outvote the few
chat requests that limit the threshold.

The language read-out ``C`` [d, languages] is a ridge regression of the one-hot language on the raw state,
without intercept: ``x·C`` names the language, and since the one-hot rows sum to one, ``x·C·1`` is about 1
for every prompt. That is what lets a gate with per-language thresholds and a bias be written into a
neuron, whose input has no bias term (see ``gate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ProbeForm = Literal["lda", "logistic"]
PROBE_FORMS: tuple[ProbeForm, ...] = ("lda", "logistic")


def balanced_weights(harmful: np.ndarray, langs: Sequence[str], groups: Sequence[str]) -> np.ndarray:
    """Row weights: each harmful language, and each harmless group, the same total; the classes equal."""
    keys = np.asarray(
        [
            f"harmful:{lang}" if bad else f"harmless:{group}"
            for bad, lang, group in zip(harmful, langs, groups, strict=True)
        ]
    )
    weights = np.zeros(len(keys))
    for positive in (True, False):
        in_class = harmful == positive
        class_keys = np.unique(keys[in_class])
        for key in class_keys:
            mask = keys == key
            weights[mask] = 1.0 / (mask.sum() * len(class_keys))
    return weights / weights.sum() * len(weights)


@dataclass(frozen=True)
class Probe:
    """``score = x·direction + bias`` on raw states."""

    direction: np.ndarray  # [d] float64
    bias: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.direction + self.bias


class LdaBasis:
    """Standardisation, weighted class means and the within-class covariance's eigenbasis of one training
    set: ``probe(shrinkage)`` is then a diagonal solve."""

    def __init__(self, x: np.ndarray, harmful: np.ndarray, weights: np.ndarray) -> None:
        self.mean = np.average(x, axis=0, weights=weights)
        self.scale = np.sqrt(np.average((x - self.mean) ** 2, axis=0, weights=weights)) + 1e-6
        z = (x - self.mean) / self.scale
        means = [np.average(z[harmful == c], axis=0, weights=weights[harmful == c]) for c in (True, False)]
        self.gap = means[0] - means[1]
        centred = z - np.where(harmful[:, None], means[0], means[1])
        covariance = (centred * weights[:, None]).T @ centred / weights.sum()
        self.values, self.vectors = np.linalg.eigh(covariance)
        self.gap_in_basis = self.vectors.T @ self.gap
        self.midpoint = (means[0] + means[1]) / 2

    def probe(self, shrinkage: float) -> Probe:
        """``shrinkage`` in (0, 1]: the covariance ``(1-s)·Σ + s·mean(eig)·I``."""
        level = float(self.values.mean())
        inverse = 1.0 / ((1 - shrinkage) * self.values + shrinkage * level)
        w_z = self.vectors @ (inverse * self.gap_in_basis)
        direction = w_z / self.scale
        return Probe(direction, float(-direction @ self.mean - w_z @ self.midpoint))


def fit_logistic(x: np.ndarray, harmful: np.ndarray, weights: np.ndarray, l2: float) -> Probe:
    """Weighted L2 logistic regression on standardised states (``l2`` per unit of total weight)."""
    from scipy.optimize import minimize

    mean = np.average(x, axis=0, weights=weights)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weights)) + 1e-6
    z = (x - mean) / scale
    sign = np.where(harmful, 1.0, -1.0)
    total = weights.sum()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        margin = sign * (z @ w + b)
        value = float((weights * np.logaddexp(0, -margin)).sum() / total + l2 * (w @ w) / 2)
        slope = -weights * sign / (1 + np.exp(np.clip(margin, -50, 50))) / total
        return value, np.concatenate([z.T @ slope + l2 * w, [slope.sum()]])

    solution = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    w_z, b = solution.x[:-1], float(solution.x[-1])
    direction = w_z / scale
    return Probe(direction, float(b - direction @ mean))


def fit_probe(x: np.ndarray, harmful: np.ndarray, weights: np.ndarray, form: ProbeForm, strength: float) -> Probe:
    """``strength``: the shrinkage for ``lda``, the L2 penalty for ``logistic``."""
    if form == "lda":
        return LdaBasis(x, harmful, weights).probe(strength)
    return fit_logistic(x, harmful, weights, strength)


def language_readout(x: np.ndarray, langs: Sequence[str], languages: Sequence[str], ridge: float) -> np.ndarray:
    """``C`` [d, len(languages)]: ridge regression, no intercept, of each prompt's one-hot language on its raw
    state, every language weighted equally; ``ridge`` is relative to the Gram matrix's mean diagonal."""
    lang_array = np.asarray(langs)
    targets = np.stack([(lang_array == lang).astype(np.float64) for lang in languages], axis=1)
    counts = targets.sum(0)
    weights = (targets / np.maximum(counts, 1)).sum(1) * len(lang_array) / len(languages)
    gram = (x * weights[:, None]).T @ x
    level = float(np.trace(gram)) / gram.shape[0]
    return np.linalg.solve(gram + ridge * level * np.eye(gram.shape[0]), (x * weights[:, None]).T @ targets)
