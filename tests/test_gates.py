"""Gates fitted and screened on cached features: thresholds with known answers, the per-language offset
folded into one direction, the typed files' round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.gates.cache import FeatureCache
from sparse_edit.gates.gate import Gate, GateSettings, calibrate, figures, fit_gate, fold_fits, out_of_fold
from sparse_edit.gates.probes import language_readout
from sparse_edit.gates.screen import ScreenGrid, choose, front, screen
from sparse_edit.gates.thresholds import fold_of, lowest_threshold, per_language_thresholds, roc_auc


def test_the_lowest_threshold_lets_exactly_the_allowed_share_fire_in_every_group():
    scores = np.concatenate([np.arange(100.0), np.arange(50.0) + 10])  # group a: 0..99, group b: 10..59
    groups = ["a"] * 100 + ["b"] * 50
    # a may fire 2 of 100 (scores 98, 99 > 97); b may fire 1 of 50 (59 > 58): the stricter rule wins.
    assert lowest_threshold(scores, groups, 0.02) == 97.0
    assert lowest_threshold(scores, groups, 0.0) == 99.0  # nothing may fire: at the largest score
    assert lowest_threshold(scores[100:], groups[100:], 0.02) == 58.0
    assert lowest_threshold(np.array([]), [], 0.02) == -math.inf


def test_per_language_thresholds_use_each_languages_harmless_prompts_and_fall_back_to_the_global_one():
    scores = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    langs = ["en", "en", "en", "bn", "bn", "bn"]
    groups = ["s"] * 6
    thresholds = per_language_thresholds(scores, langs, groups, ["bn", "en", "sw"], 0.0)
    assert thresholds.tolist() == [30.0, 3.0, 30.0]


def test_folds_keep_an_id_together_and_auc_matches_a_count():
    folds = fold_of(["7", "7", "8", "9", "7"], 5)
    assert folds[0] == folds[1] == folds[4]
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx(0.875)  # one tie counts half
    assert math.isnan(roc_auc(np.array([]), np.array([1.0])))


LANGS = ("en", "bn", "sw")


def shifted_cache(rng: np.random.Generator, per: int = 120, dim: int = 24) -> FeatureCache:
    """States where each language has its own offset and the harmfulness score of bn and sw is shifted
    down as a whole: one global threshold misses them, a threshold per language does not. (A diagonal
    probe, shrinkage 1, cannot use the language offsets to shift its own threshold; the calibration must.)"""
    harm = np.zeros(dim)
    harm[0] = 1.0
    offsets = {lang: rng.normal(0, 3, dim) for lang in LANGS}
    for lang in LANGS:
        offsets[lang][0] = 0.0
    shift = {"en": 0.0, "bn": -3.0, "sw": -2.5}
    rows, prompts = [], []
    for lang in LANGS:
        for label in ("harmful", "harmless"):
            for i in range(per):
                level = (2.0 if label == "harmful" else -1.0) + shift[lang]
                rows.append(offsets[lang] + 8 * np.ones(dim) / dim**0.5 + harm * level + rng.normal(0, 0.6, dim))
                group = "" if label == "harmful" else ("chat" if i % 2 else "questions")
                prompts.append(Prompt(f"{label[0]}{i}", lang, f"text {i}", label, source=group))
    states = np.stack(rows).astype(np.float32)
    return FeatureCache((3,), {3: states}, prompts, "fingerprint")


def test_a_per_language_gate_catches_the_shifted_languages_that_a_global_one_misses():
    cache = shifted_cache(np.random.default_rng(0))
    fits = fold_fits(cache, 3, 5, "lda", 1e-3)
    results = {}
    for calibration in ("global", "per-language"):
        settings = GateSettings(3, "lda", 1.0, calibration, 0.02)
        oof = out_of_fold(cache, settings, fits)
        fires = oof.deployed(calibrate(cache, oof, calibration, 0.02)) > 0
        results[calibration] = figures(cache, fires)
    assert results["global"]["catch"]["bn"] < 0.3
    assert results["per-language"]["catch"]["bn"] > 0.9 and results["per-language"]["catch"]["sw"] > 0.9
    assert results["per-language"]["firing_max"] <= 0.05


def test_the_written_direction_computes_the_probe_minus_the_threshold_of_the_language_it_reads():
    cache = shifted_cache(np.random.default_rng(1))
    gate = fit_gate(cache, GateSettings(3, "lda", 1.0, "per-language", 0.02))
    x = cache.rows(3)
    readout = language_readout(x, cache.langs, gate.languages, 1e-3)
    named = (x @ readout).argmax(1)
    assert np.mean(np.asarray(gate.languages)[named] == np.asarray(cache.langs)) > 0.99
    # The one direction reproduces "probe score above its language's threshold" on nearly every prompt.
    fires = gate.fires(x)
    predicted = figures(cache, fires)
    assert predicted["catch"]["bn"] > 0.9 and predicted["firing_max"] <= 0.05
    assert gate.predicted["catch"]["bn"] > 0.9  # the out-of-fold figures kept with the gate agree


def test_the_screen_scores_every_candidate_and_its_choice_keeps_the_firing_limit():
    cache = shifted_cache(np.random.default_rng(2), per=60)
    grid = ScreenGrid(layers=(3,), strengths=(0.5, 1.0), limits=(0.0, 0.02))
    candidates, _, _ = screen(cache, grid, 5, Reporter(quiet=True))
    assert len(candidates) == grid.size() == 8
    chosen = choose(candidates, 0.02)
    assert chosen is not None and chosen.predicted["firing_max"] <= 0.02
    assert chosen.settings.calibration == "per-language"
    assert all(c.predicted["firing_max"] <= 0.02 or c is not chosen for c in candidates)
    kept = front(candidates)
    assert all(
        a.predicted["catch_non_reference"] < b.predicted["catch_non_reference"]
        for a, b in zip(kept, kept[1:], strict=False)
    )
    assert choose(candidates, -1.0) is None


def test_a_group_exempt_from_the_limit_no_longer_bounds_the_threshold_but_its_firing_is_still_counted(tmp_path):
    cache = shifted_cache(np.random.default_rng(4), per=60)
    fits = fold_fits(cache, 3, 5, "lda", 1e-3)
    bound = GateSettings(3, "lda", 1.0, "global", 0.0)
    relaxed = GateSettings(3, "lda", 1.0, "global", 0.0, exempt=("chat",))
    oof = out_of_fold(cache, bound, fits)
    strict = calibrate(cache, oof, "global", 0.0)
    loose = calibrate(cache, oof, "global", 0.0, relaxed.exempt)
    groups, harmless = np.asarray(cache.groups), ~cache.harmful
    # With "chat" left out, the threshold is the highest score among the other harmless groups only.
    assert loose[0] == pytest.approx(oof.scores[harmless & (groups == "questions")].max())
    assert loose[0] <= strict[0]
    result = figures(cache, oof.deployed(loose) > 0, exempt=relaxed.exempt)
    assert result["firing"]["questions"] == 0.0 and "chat" in result["firing"]
    assert result["firing_max"] == 0.0  # the exempt group's firing does not count against the limit
    assert figures(cache, oof.deployed(loose) > 0)["firing_max"] == result["firing"]["chat"]
    gate = fit_gate(cache, relaxed, fits=fits)
    assert gate.thresholds[0] == pytest.approx(loose[0]) and "exempt 1" in relaxed.label()
    gate.save(tmp_path / "gate.safetensors")
    assert Gate.load(tmp_path / "gate.safetensors").settings == relaxed


def test_feature_cache_and_gate_round_trip(tmp_path):
    cache = shifted_cache(np.random.default_rng(3), per=10)
    harmless = np.flatnonzero(~cache.harmful)[:5]
    cache.token_owner = np.repeat(harmless, 2)
    cache.token_states = {3: cache.states[3][cache.token_owner] + 1}
    cache.save(tmp_path / "features.safetensors")
    loaded = FeatureCache.load(tmp_path / "features.safetensors")
    assert loaded.prompts == cache.prompts and loaded.layers == cache.layers
    assert np.array_equal(loaded.states[3], cache.states[3])
    assert np.array_equal(loaded.token_states[3], cache.token_states[3])
    assert np.array_equal(loaded.token_owner, cache.token_owner)
    expanded = loaded.with_token_rows()
    assert len(expanded) == len(cache) + 10 and not expanded.harmful[len(cache) :].any()
    assert [p.id for p in expanded.prompts[len(cache) :]] == [cache.prompts[i].id for i in cache.token_owner]
    gate = fit_gate(cache, GateSettings(3))
    gate.save(tmp_path / "gate.safetensors")
    again = Gate.load(tmp_path / "gate.safetensors")
    assert again.settings == gate.settings and np.array_equal(again.direction, gate.direction)
    assert again.thresholds.tolist() == gate.thresholds.tolist() and again.predicted == gate.predicted
    with pytest.raises(SparseEditError, match="not a sparse-edit gate"):
        Gate.load(tmp_path / "features.safetensors")
    with pytest.raises(SparseEditError, match="not a sparse-edit feature cache"):
        FeatureCache.load(tmp_path / "gate.safetensors")
