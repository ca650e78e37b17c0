"""Anchors labelled by the model's own verdict on the reference-language version of each prompt."""

from __future__ import annotations

import json

import pytest

import sparse_edit as se
from sparse_edit.data.prompts import Prompt
from sparse_edit.edit import anchors as anchors_module
from sparse_edit.edit.anchor_prompts import AnchorPrompts
from sparse_edit.edit.reference_labels import reference_prompts, relabel
from sparse_edit.errors import SparseEditError


def parallel(label: str, ids: list[str], langs=("en", "th", "yo")) -> list[Prompt]:
    return [Prompt(i, lang, f"{label} {i} in {lang}", label, "set.jsonl") for i in ids for lang in langs]  # type: ignore[arg-type]


def tiny_set() -> AnchorPrompts:
    harmful_train, harmful_dev = parallel("harmful", ["1", "2", "3"]), parallel("harmful", ["9"])
    harmless_train, harmless_dev = parallel("harmless", ["1", "5"]), parallel("harmless", ["8"])
    return AnchorPrompts(
        low_train=[p for p in harmful_train if p.lang != "en"],
        ref_train=[p for p in harmful_train if p.lang == "en"],
        safe_train=harmless_train,
        ref_safe_train=[p for p in harmless_train if p.lang == "en"],
        low_dev=[p for p in harmful_dev if p.lang != "en"],
        ref_dev=[p for p in harmful_dev if p.lang == "en"],
        safe_dev=harmless_dev,
    )


def test_reference_verdicts_move_prompts_to_the_class_the_model_gives_them_in_english():
    prompts = tiny_set()
    assert {(p.label, p.id) for p in reference_prompts(prompts, "en")} == {
        ("harmful", "1"), ("harmful", "2"), ("harmful", "3"), ("harmful", "9"),
        ("harmless", "1"), ("harmless", "5"), ("harmless", "8"),
    }  # fmt: skip
    verdicts = {
        ("harmful", "1"): True,
        ("harmful", "2"): False,  # a look-alike the model answers in English
        ("harmful", "3"): True,
        ("harmful", "9"): False,  # answered, in the dev split
        ("harmless", "1"): False,  # the same id as harmful 1 in another class: untouched by it
        ("harmless", "5"): True,  # refused in English
        ("harmless", "8"): False,
    }
    relabelled, moved = relabel(prompts, verdicts, "en")
    assert {(p.lang, p.id) for p in relabelled.low_train} == {
        (lang, i) for lang in ("th", "yo") for i in ("1", "3")
    }
    assert {p.id for p in relabelled.ref_train} == {"1", "3"}
    assert relabelled.low_dev == [] and relabelled.ref_dev == []
    # Harmful id 2 is a harmless anchor in every language, marked as such; harmless id 5 is left out.
    look_alikes = [p for p in relabelled.safe_train if p.kind == "answered in en"]
    assert {(p.lang, p.id, p.label) for p in look_alikes} == {
        (lang, "2", "harmless") for lang in ("en", "th", "yo")
    }
    assert all(p.group == "set.jsonl/answered in en" for p in look_alikes)
    assert {p.id for p in relabelled.safe_train} == {"1", "2"}
    assert {p.id for p in relabelled.ref_safe_train} == {"1", "2"} and all(
        p.lang == "en" for p in relabelled.ref_safe_train
    )
    assert {(p.lang, p.id) for p in relabelled.safe_dev} == {
        (lang, i) for lang in ("en", "th", "yo") for i in ("8", "9")
    }
    assert moved == {
        "harmful_ids_answered_in_reference": 2,
        "harmless_ids_refused_in_reference": 1,
        "prompts_moved_to_harmless": 6,
        "harmless_prompts_left_out": 3,
    }
    assert prompts.low_train != relabelled.low_train  # the input is not changed in place


def test_a_model_that_answers_every_harmful_prompt_in_english_leaves_nothing_to_edit():
    prompts = tiny_set()
    verdicts = {("harmful", i): False for i in ("1", "2", "3", "9")}
    with pytest.raises(SparseEditError, match="--anchor-labels reference-verdict: the model answers every"):
        relabel(prompts, verdicts, "en")


def test_apply_with_reference_verdict_labels_anchors_by_the_english_verdicts(located, tmp_path, monkeypatch):
    _, artifact = located("llama")
    plain = se.apply_edit(artifact=artifact, output=tmp_path / "plain", layer="1", strategy=["paper"])
    seen: list[int] = []

    def english_verdicts(loaded, prompts, options, reporter):
        # The judge on a random tiny model's replies says nothing useful: a fixed verdict per id stands in for it.
        ids = sorted({p.id for p in prompts.ref_train}, key=int)
        seen.append(len(reference_prompts(prompts, options.reference_lang)))
        return {("harmful", i): i != ids[0] for i in ids}

    monkeypatch.setattr(anchors_module, "reference_verdicts", english_verdicts)
    edit = se.apply_edit(
        artifact=artifact,
        output=tmp_path / "by-english",
        layer="1",
        strategy=["paper"],
        anchor_labels="reference-verdict",
    )
    before, after = plain.anchors, edit.anchors
    assert before is not None and after is not None
    assert seen and after["low_train"] == before["low_train"] - 2  # th and yo versions of the answered id
    assert after["ref_train"] == before["ref_train"] - 1
    assert after["safe_train"] == before["safe_train"] + 3
    settings = json.loads((tmp_path / "by-english" / "sparse_edit" / "manifest.json").read_text())["settings"]
    assert settings["anchor_labels"] == "reference-verdict"
