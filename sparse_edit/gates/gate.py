"""A harmfulness gate: a probe, its thresholds and the language read-out folded into one direction.

The gate fires on a state ``x`` when ``x·direction > 0``. With a probe ``w·x + b``, a language read-out
``C`` (``x·C`` ≈ the prompt's one-hot language, so ``x·C·1`` ≈ 1) and one threshold ``t_l`` per language,

    x·direction = x·w + (x·C)·(b·1 − t)  ≈  w·x + b − t_{language of x}

which is linear in ``x`` with no bias: exactly what a neuron's gate row computes. A global threshold is
the case ``t_l = t``. Every figure the screen reports is computed with this direction (or, out of fold,
with each fold's own probe and read-out), never with the prompt file's language label, which a deployed
gate cannot see. The thresholds themselves are set on out-of-fold scores (``thresholds``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sparse_edit.errors import SparseEditError
from sparse_edit.gates.cache import FeatureCache
from sparse_edit.gates.probes import LdaBasis, Probe, ProbeForm, balanced_weights, fit_probe, language_readout
from sparse_edit.gates.thresholds import fold_of, lowest_threshold, per_language_thresholds
from sparse_edit.io.layout import GATE_KIND, META_KEY, checked_metadata
from sparse_edit.io.staging import atomic_write_bytes

Calibration = Literal["global", "per-language"]
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GateSettings:
    layer: int
    form: ProbeForm = "lda"
    strength: float = 0.3  # lda: shrinkage in (0, 1]; logistic: L2 penalty
    calibration: Calibration = "per-language"
    limit: float = 0.02  # the threshold rule's firing limit per harmless group
    readout_ridge: float = 1e-3
    exempt: tuple[str, ...] = ()  # harmless groups left out of the threshold rule (--limit-exempt)

    def label(self) -> str:
        label = f"{self.form}({self.strength:g})@{self.layer} {self.calibration} ≤{self.limit:g}"
        return f"{label} exempt {len(self.exempt)}" if self.exempt else label


@dataclass
class FoldFits:
    """Per fold, the fits on the other folds at one layer: the probe basis (lda) and the language read-out."""

    folds: np.ndarray  # [N] fold of each prompt
    bases: list[LdaBasis | None]
    readouts: list[np.ndarray]  # [d, languages] per fold
    languages: list[str]


def fold_fits(cache: FeatureCache, layer: int, folds: int, form: ProbeForm, ridge: float) -> FoldFits:
    x, harmful = cache.rows(layer), cache.harmful
    weights = balanced_weights(harmful, cache.langs, cache.groups)
    assignment = fold_of(cache.ids, folds)
    languages = sorted(set(cache.langs))
    bases: list[LdaBasis | None] = []
    readouts = []
    for fold in range(folds):
        train = assignment != fold
        bases.append(LdaBasis(x[train], harmful[train], weights[train]) if form == "lda" else None)
        readouts.append(language_readout(x[train], np.asarray(cache.langs)[train], languages, ridge))
    return FoldFits(assignment, bases, readouts, languages)


@dataclass
class OutOfFold:
    """Each prompt scored by fits that never saw its fold: probe score (with bias), the probe's bias, and
    the language read-out."""

    scores: np.ndarray  # [N]
    biases: np.ndarray  # [N] the bias of the probe that scored the prompt
    readout: np.ndarray  # [N, languages]
    languages: list[str]

    def deployed(self, thresholds: np.ndarray) -> np.ndarray:
        """What the written gate computes: the probe without its bias, plus the read-out times (b·1 − t)."""
        return self.scores - self.biases + ((self.biases[:, None] - thresholds[None, :]) * self.readout).sum(1)


def out_of_fold(cache: FeatureCache, settings: GateSettings, fits: FoldFits) -> OutOfFold:
    x, harmful = cache.rows(settings.layer), cache.harmful
    weights = balanced_weights(harmful, cache.langs, cache.groups)
    scores, biases = np.zeros(len(cache)), np.zeros(len(cache))
    readout = np.zeros((len(cache), len(fits.languages)))
    for fold, basis in enumerate(fits.bases):
        held = fits.folds == fold
        if not held.any():
            continue
        train = ~held
        probe = (
            basis.probe(settings.strength)
            if basis is not None
            else fit_probe(x[train], harmful[train], weights[train], settings.form, settings.strength)
        )
        scores[held] = probe.scores(x[held])
        biases[held] = probe.bias
        readout[held] = x[held] @ fits.readouts[fold]
    return OutOfFold(scores, biases, readout, fits.languages)


def calibrate(
    cache: FeatureCache, oof: OutOfFold, calibration: Calibration, limit: float, exempt: Sequence[str] = ()
) -> np.ndarray:
    """Thresholds per language from the harmless prompts' out-of-fold scores (the language is the label here:
    calibration happens on labelled anchors; the gate then reads the language from the state). ``exempt``:
    harmless groups left out of the rule (what lifting their limits buys)."""
    harmless = ~cache.harmful
    if exempt:
        harmless &= ~np.isin(np.asarray(cache.groups), list(exempt))
    scores = oof.scores[harmless]
    langs = np.asarray(cache.langs)[harmless]
    groups = np.asarray(cache.groups)[harmless]
    if calibration == "global":
        return np.full(len(oof.languages), lowest_threshold(scores, groups, limit))
    return per_language_thresholds(scores, langs, groups, oof.languages, limit)


@dataclass
class Gate:
    """A fitted gate at one layer: ``fires(x) = x·direction > 0``."""

    settings: GateSettings
    direction: np.ndarray  # [d] float64
    languages: list[str]
    thresholds: np.ndarray  # [languages]
    model_fingerprint: str
    predicted: dict[str, Any] = field(default_factory=dict)  # out-of-fold figures on the anchors

    def fires(self, x: np.ndarray) -> np.ndarray:
        return x @ self.direction > 0

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {
            "kind": GATE_KIND,
            "schema_version": SCHEMA_VERSION,
            "settings": asdict(self.settings),
            "languages": self.languages,
            "thresholds": [float(t) for t in self.thresholds],
            "model_fingerprint": self.model_fingerprint,
            "predicted": self.predicted,
        }
        tensors = {"direction": torch.from_numpy(np.ascontiguousarray(self.direction))}
        return save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path, flag: str = "--detector-gate") -> Gate:
        from safetensors.torch import load_file

        meta = checked_metadata(Path(path), GATE_KIND, SCHEMA_VERSION, flag, "gate")
        direction = load_file(str(path)).get("direction")
        if direction is None or direction.dim() != 1:
            raise SparseEditError(f"{flag} {path}: the gate's direction tensor is missing or not a vector")
        return cls(
            GateSettings(**{**meta["settings"], "exempt": tuple(meta["settings"].get("exempt", ()))}),
            direction.numpy().astype(np.float64),
            list(meta["languages"]),
            np.asarray(meta["thresholds"], dtype=np.float64),
            str(meta["model_fingerprint"]),
            dict(meta.get("predicted", {})),
        )


def fit_gate(cache: FeatureCache, settings: GateSettings, folds: int = 5, fits: FoldFits | None = None) -> Gate:
    """The gate fitted on every anchor, with thresholds set on out-of-fold scores; scaled so that its deployed
    scores on the harmful anchors have unit spread (the neuron's sharpness then means the same on any model)."""
    fits = fits or fold_fits(cache, settings.layer, folds, settings.form, settings.readout_ridge)
    oof = out_of_fold(cache, settings, fits)
    thresholds = calibrate(cache, oof, settings.calibration, settings.limit, settings.exempt)
    x, harmful = cache.rows(settings.layer), cache.harmful
    weights = balanced_weights(harmful, cache.langs, cache.groups)
    probe: Probe = fit_probe(x, harmful, weights, settings.form, settings.strength)
    readout = language_readout(x, cache.langs, fits.languages, settings.readout_ridge)
    direction = probe.direction + readout @ (probe.bias - thresholds)
    spread = float(np.std(x[harmful] @ direction)) or 1.0
    predicted = figures(cache, oof.deployed(thresholds) > 0, exempt=settings.exempt)
    return Gate(settings, direction / spread, fits.languages, thresholds, cache.model_fingerprint, predicted)


def figures(
    cache: FeatureCache, fires: np.ndarray, reference: str = "en", exempt: Sequence[str] = ()
) -> dict[str, Any]:
    """Catch per harmful language, firing per harmless group and language, and the summaries the choice uses
    (``firing_max`` over the groups not ``exempt`` from the limit; every group's firing is still listed)."""
    harmful = cache.harmful
    langs, groups = np.asarray(cache.langs), np.asarray(cache.groups)
    catch = {lang: float(fires[harmful & (langs == lang)].mean()) for lang in sorted(set(langs[harmful]))}
    firing = {group: float(fires[~harmful & (groups == group)].mean()) for group in sorted(set(groups[~harmful]))}
    harmless_langs = sorted(set(langs[~harmful]))
    firing_by_lang = {lang: float(fires[~harmful & (langs == lang)].mean()) for lang in harmless_langs}
    others = [value for lang, value in catch.items() if lang != reference]
    return {
        "catch": catch,
        "catch_non_reference": float(np.mean(others)) if others else float("nan"),
        "firing": firing,
        "firing_max": max((value for group, value in firing.items() if group not in exempt), default=0.0),
        "firing_pooled": float(fires[~harmful].mean()) if (~harmful).any() else 0.0,
        "firing_by_lang": firing_by_lang,
    }
