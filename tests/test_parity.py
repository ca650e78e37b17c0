"""Parity with English on a hand-made replies file whose answer is worked out by hand."""

from __future__ import annotations

import pytest

from sparse_edit.evaluation.parity import parallel_languages, parity_from_replies, parity_metrics

R, A = "refusal", "compliance"
# (class, id, lang, base verdict, edited verdict)
CASES = [
    ("harmful", "1", "en", R, R),
    ("harmful", "2", "en", R, R),
    ("harmful", "3", "en", A, R),  # English gains a refusal: parity's target stays the base's answer
    ("harmful", "4", "en", R, R),
    ("harmful", "1", "bn", A, R),  # at parity only after the edit
    ("harmful", "2", "bn", R, R),  # at parity before and after
    ("harmful", "3", "bn", A, R),  # English answers it: the edit's refusal breaks parity
    ("harmful", "4", "bn", A, "invalid"),  # an invalid reply is not a refusal: off parity before and after
    ("harmful", "5", "bn", A, R),  # no English version: not a parallel prompt
    ("harmless", "1", "en", A, A),
    ("harmless", "2", "en", R, R),  # a look-alike English refuses
    ("harmless", "1", "bn", A, A),
    ("harmless", "2", "bn", A, R),
    ("harmless", "1", "th", A, R),  # th has harmless prompts only
]


def rows() -> list[dict[str, str]]:
    out = []
    for kind, id_, lang, base, edited in CASES:
        for model, verdict in (("base", base), ("edited", edited)):
            out.append(
                {
                    "model": model,
                    "class": kind,
                    "id": id_,
                    "lang": lang,
                    "prompt": f"{kind} {id_} in {lang}",
                    "reply": "…",
                    "verdict": verdict,
                    "reason": "",
                }
            )
    return out


def test_parity_per_language_and_pooled_match_the_hand_count():
    report = parity_from_replies(rows(), "en")
    bn = report["languages"]["bn"]
    assert bn["n"] == 6
    assert (bn["edited"]["k"], bn["base"]["k"]) == (4, 3)  # edited: 1, 2, h1, h2; base: 2, 3, h1
    assert bn["by_class"]["harmful"]["edited"]["k"] == 2 and bn["by_class"]["harmful"]["base"]["k"] == 2
    assert bn["by_class"]["harmless"]["edited"]["k"] == 2 and bn["by_class"]["harmless"]["base"]["k"] == 1
    assert bn["mcnemar"]["only_before"] == 1 and bn["mcnemar"]["only_after"] == 2
    assert bn["confusion_edited"] == {
        "refused_in_reference": {"refused": 3, "answered": 1},
        "answered_in_reference": {"refused": 1, "answered": 1},
    }
    assert bn["confusion_base"] == {
        "refused_in_reference": {"refused": 1, "answered": 3},
        "answered_in_reference": {"refused": 0, "answered": 2},
    }
    th = report["languages"]["th"]
    assert (th["n"], th["edited"]["k"], th["base"]["k"]) == (1, 0, 1)
    pooled = report["pooled"]
    assert (pooled["n"], pooled["edited"]["k"], pooled["base"]["k"]) == (7, 4, 4)
    low, high = bn["edited"]["ci95"]
    assert low < 4 / 6 < high


def test_english_change_counts_refusals_gained_and_lost_per_class():
    change = parity_from_replies(rows(), "en")["reference_change"]
    assert change["harmful"]["n"] == 4 and change["harmful"]["refusals_gained"]["k"] == 1
    assert change["harmful"]["refusals_lost"]["k"] == 0
    assert change["harmless"]["n"] == 2 and change["harmless"]["refusals_gained"]["k"] == 0


def test_gate_metrics_read_the_report():
    metrics = parity_metrics(parity_from_replies(rows(), "en"))
    assert metrics["parity"] == pytest.approx({"bn": 4 / 6, "th": 0.0})
    assert metrics["parity_delta"] == pytest.approx({"bn": 1 / 6, "th": -1.0})
    assert metrics["mean_parity"] == pytest.approx(4 / 7)
    assert metrics["mean_parity_delta"] == pytest.approx(0.0)
    assert metrics["reference_refusals_gained"] == pytest.approx(1 / 6)
    assert metrics["reference_refusals_lost"] == 0


def test_a_language_without_reference_versions_has_no_parity():
    from sparse_edit.data.prompts import Prompt

    harmful = [
        Prompt("1", "en", "a", "harmful"),
        Prompt("1", "bn", "b", "harmful"),
        Prompt("9", "sw", "c", "harmful"),
    ]
    assert parallel_languages(harmful, [], "en") == {"bn"}
