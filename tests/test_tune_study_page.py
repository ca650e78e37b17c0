"""The tune-study results page says which prompts a study anchored on and how to read its harmful ids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
tune_study = pytest.importorskip("tune_study")


def test_anchor_sources_name_every_source_of_the_study() -> None:
    settings = {
        "harmful": ["data/multijail/MultiJail.csv@100-314"],
        "harmless": ["data/polyrefuse/harmless_train_en_sample.json@0-39", "data/multiq/multiq.jsonl@gpt-51..100"],
    }
    assert tune_study.anchor_sources(settings) == (
        "multijail/MultiJail.csv@100-314, polyrefuse/harmless_train_en_sample.json@0-39, "
        "multiq/multiq.jsonl@gpt-51..100"
    )
    held_out = {**settings, "dev_harmless": ["data/multiq/multiq.jsonl@gpt-91..100"]}
    assert tune_study.anchor_sources(held_out).endswith("; harmless dev: multiq/multiq.jsonl@gpt-91..100")


@pytest.mark.parametrize(
    ("ids", "read_before_split"), [("0-19", True), ("10-30", True), ("60-99", False), ("19,40", True)]
)
def test_harmful_ids_note_marks_ids_read_before_the_split(ids: str, read_before_split: bool) -> None:
    note = tune_study.harmful_ids_note(ids)
    assert "exactly those ids" in note
    assert ("read before the split was fixed" in note) is read_before_split


def test_the_whole_clean_test_needs_no_note() -> None:
    assert tune_study.harmful_ids_note("20-99") == ""
