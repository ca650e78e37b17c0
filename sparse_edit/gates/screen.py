"""Gate candidates scored on cached features: the separability ceiling per layer and language, and the screen.

Nothing here runs the model. For every layer the fold fits (probe basis and language read-out per fold) are
made once; each candidate (probe form and strength, calibration, threshold limit) then costs a few matrix
products over the cached states. Every figure is out of fold on the anchor side; the test side is scored
with the gates fitted on every anchor.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sparse_edit.console import Reporter
from sparse_edit.gates.cache import FeatureCache
from sparse_edit.gates.gate import (
    Calibration,
    FoldFits,
    Gate,
    GateSettings,
    calibrate,
    figures,
    fit_gate,
    fold_fits,
    out_of_fold,
)
from sparse_edit.gates.probes import ProbeForm, balanced_weights, fit_probe
from sparse_edit.gates.thresholds import roc_auc


@dataclass(frozen=True)
class ScreenGrid:
    layers: tuple[int, ...]
    forms: tuple[ProbeForm, ...] = ("lda",)
    strengths: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    calibrations: tuple[Calibration, ...] = ("global", "per-language")
    limits: tuple[float, ...] = (0.0, 0.005, 0.01, 0.015, 0.02)
    exempt: tuple[str, ...] = ()  # harmless groups left out of every candidate's threshold rule

    def size(self) -> int:
        return len(self.layers) * len(self.forms) * len(self.strengths) * len(self.calibrations) * len(self.limits)


@dataclass
class Candidate:
    settings: GateSettings
    predicted: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "label": self.settings.label(), "predicted": self.predicted}


@dataclass
class ScreenResult:
    candidates: list[Candidate]
    seconds: float


def screen(
    cache: FeatureCache,
    grid: ScreenGrid,
    folds: int,
    reporter: Reporter,
    readout_ridge: float = 1e-3,
    share_fits: bool = True,
) -> tuple[list[Candidate], dict[tuple[int, ProbeForm], FoldFits], float]:
    """Every candidate of ``grid`` scored out of fold on the anchors; also the fold fits (reused by the chosen
    gate) and the seconds the scoring took. ``share_fits`` off refits every fold for every candidate (the same
    figures, for measuring what sharing saves)."""
    started = time.perf_counter()
    candidates: list[Candidate] = []
    all_fits: dict[tuple[int, ProbeForm], FoldFits] = {}
    with reporter.progress("screen: gate candidates", grid.size(), unit="candidates") as progress:
        for layer, form in itertools.product(grid.layers, grid.forms):
            fits = all_fits[(layer, form)] = fold_fits(cache, layer, folds, form, readout_ridge)
            for strength in grid.strengths:
                shared = out_of_fold(cache, GateSettings(layer, form, strength, readout_ridge=readout_ridge), fits)
                for calibration, limit in itertools.product(grid.calibrations, grid.limits):
                    settings = GateSettings(layer, form, strength, calibration, limit, readout_ridge, grid.exempt)
                    if share_fits:
                        oof = shared
                    else:
                        oof = out_of_fold(cache, settings, fold_fits(cache, layer, folds, form, readout_ridge))
                    fires = oof.deployed(calibrate(cache, oof, calibration, limit, grid.exempt)) > 0
                    candidates.append(Candidate(settings, figures(cache, fires, exempt=grid.exempt)))
                    progress.advance(1)
    return candidates, all_fits, time.perf_counter() - started


def choose(candidates: Sequence[Candidate], max_firing: float) -> Candidate | None:
    """The most non-reference harmful anchors caught with every harmless anchor group at or under
    ``max_firing`` (out of fold); ties go to the lower pooled firing."""
    feasible = [c for c in candidates if c.predicted["firing_max"] <= max_firing + 1e-12]
    if not feasible:
        return None
    return max(feasible, key=lambda c: (c.predicted["catch_non_reference"], -c.predicted["firing_pooled"]))


def front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both catch (more) and worst harmless group firing (less)."""
    ordered = sorted(candidates, key=lambda c: (c.predicted["firing_max"], -c.predicted["catch_non_reference"]))
    kept: list[Candidate] = []
    best = -math.inf
    for candidate in ordered:
        if candidate.predicted["catch_non_reference"] > best:
            kept.append(candidate)
            best = candidate.predicted["catch_non_reference"]
    return kept


def ceiling(
    anchors: FeatureCache,
    candidates: Sequence[Candidate],
    fits: dict[tuple[int, ProbeForm], FoldFits],
    max_firing: float,
    test: FeatureCache | None = None,
    reference: str = "en",
) -> dict[str, Any]:
    """Per layer and harmful language, what a gate at that layer can do: AUC, and the share caught with every
    harmless group at or under ``max_firing`` for one global threshold, one per language (label, as an upper
    bound) and one per language read from the state (what a written gate does). Per layer the best
    candidate of each calibration (on the anchors, out of fold); with ``test``, the same gates on it."""
    layers = sorted({c.settings.layer for c in candidates})
    rows: dict[str, Any] = {}
    for layer in layers:
        mine = [c for c in candidates if c.settings.layer == layer]
        best = {
            cal: choose([c for c in mine if c.settings.calibration == cal], max_firing)
            for cal in ("global", "per-language")
        }
        chosen = best["per-language"] or best["global"]
        entry: dict[str, Any] = {"anchor": _anchor_row(anchors, layer, best, fits, max_firing)}
        if test is not None and chosen is not None:
            entry["test"] = _test_row(anchors, test, layer, best, fits)
        entry["settings"] = {cal: c.settings.label() if c else None for cal, c in best.items()}
        rows[str(layer)] = entry
    return {"layers": rows, "max_firing": max_firing, "reference": reference}


def _anchor_row(
    cache: FeatureCache,
    layer: int,
    best: dict[str, Candidate | None],
    fits: dict[tuple[int, ProbeForm], FoldFits],
    max_firing: float,
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    harmful = cache.harmful
    langs = np.asarray(cache.langs)
    per_language = best["per-language"]
    if per_language is not None:
        oof = out_of_fold(cache, per_language.settings, fits[(layer, per_language.settings.form)])
        negatives = oof.scores[~harmful]
        row["auc"] = {
            lang: roc_auc(oof.scores[harmful & (langs == lang)], negatives) for lang in sorted(set(langs[harmful]))
        }
        thresholds = calibrate(
            cache, oof, "per-language", per_language.settings.limit, per_language.settings.exempt
        )
        index = {lang: i for i, lang in enumerate(oof.languages)}
        by_label = oof.scores > thresholds[[index[lang] for lang in langs]]
        row["per_language_label"] = figures(cache, by_label, exempt=per_language.settings.exempt)
        row["per_language_read"] = per_language.predicted
    if best["global"] is not None:
        row["global"] = best["global"].predicted
    return row


def _test_row(
    anchors: FeatureCache,
    test: FeatureCache,
    layer: int,
    best: dict[str, Candidate | None],
    fits: dict[tuple[int, ProbeForm], FoldFits],
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for calibration, candidate in best.items():
        if candidate is None:
            continue
        gate = fit_gate(anchors, candidate.settings, fits=fits[(layer, candidate.settings.form)])
        key = "global" if calibration == "global" else "per_language_read"
        row[key] = figures(test, gate.fires(test.rows(layer)), exempt=candidate.settings.exempt)
        if calibration == "per-language":
            x = anchors.rows(layer)
            weights = balanced_weights(anchors.harmful, anchors.langs, anchors.groups)
            probe = fit_probe(x, anchors.harmful, weights, candidate.settings.form, candidate.settings.strength)
            scores = probe.scores(test.rows(layer))
            harmful, langs = test.harmful, np.asarray(test.langs)
            row["auc"] = {
                lang: roc_auc(scores[harmful & (langs == lang)], scores[~harmful])
                for lang in sorted(set(langs[harmful]))
            }
    return row


def limiting_sources(
    cache: FeatureCache,
    candidate: Candidate,
    fits: dict[tuple[int, ProbeForm], FoldFits],
    looser: Sequence[float] = (0.05, 0.1),
) -> dict[str, Any]:
    """What holds ``candidate`` back, out of fold on the anchors: per harmless group, the catch with that group
    left out of the threshold rule (and how often it would then fire); and the catch with every group's limit
    loosened to each of ``looser``. A group whose lifting buys nothing is not what limits the gate."""
    settings = candidate.settings
    oof = out_of_fold(cache, settings, fits[(settings.layer, settings.form)])

    def at(limit: float, exempt: tuple[str, ...] = ()) -> dict[str, Any]:
        exempt = (*settings.exempt, *exempt)
        thresholds = calibrate(cache, oof, settings.calibration, limit, exempt)
        return figures(cache, oof.deployed(thresholds) > 0, exempt=exempt)

    lifted = {}
    for group in sorted(set(np.asarray(cache.groups)[~cache.harmful]) - set(settings.exempt)):
        result = at(settings.limit, (group,))
        lifted[group] = {"catch_non_reference": result["catch_non_reference"], "firing": result["firing"][group]}
    return {
        "label": settings.label(),
        "catch_non_reference": candidate.predicted["catch_non_reference"],
        "lifted": lifted,
        "looser": {f"{limit:g}": at(limit)["catch_non_reference"] for limit in looser},
    }


def chosen_gate(anchors: FeatureCache, candidate: Candidate, fits: dict[tuple[int, ProbeForm], FoldFits]) -> Gate:
    return fit_gate(anchors, candidate.settings, fits=fits[(candidate.settings.layer, candidate.settings.form)])
