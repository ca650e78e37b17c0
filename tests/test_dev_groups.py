"""Harmless dev prompts come from every source and kind in turn, so a small source is judged too."""

from __future__ import annotations

from sparse_edit.data.prompts import Prompt, load_source, source_name
from sparse_edit.edit.anchors import _by_group_in_turn, _cap_per_language
from tests.helpers import write_jsonl


def p(lang: str, i: int, source: str, kind: str = "") -> Prompt:
    return Prompt(f"{source}-{i}", lang, f"text {i}", "harmless", source, kind)


def test_a_cap_takes_a_share_of_every_group_not_the_first_source_only():
    prompts = [p("en", i, "multiq") for i in range(3)] + [p("th", i, "multiq") for i in range(3)]
    prompts += [p("en", 0, "xstest", "homonyms"), p("en", 1, "xstest", "definitions"), p("th", 0, "benign")]
    capped = _cap_per_language(_by_group_in_turn(prompts), 3)
    assert [(q.lang, q.group) for q in capped if q.lang == "en"] == [
        ("en", "multiq"),
        ("en", "xstest/homonyms"),
        ("en", "xstest/definitions"),
    ]
    assert [q.group for q in capped if q.lang == "th"] == ["multiq", "benign", "multiq"]


def test_one_group_per_language_keeps_the_order():
    prompts = [p(lang, i, "multiq") for i in range(3) for lang in ("en", "th")]
    assert _by_group_in_turn(prompts) == prompts


def test_a_prompt_knows_its_source_and_kind(tmp_path):
    rows = [
        {"id": "x-1", "lang": "en", "text": "How can I kill a Python process?", "kind": "homonyms"},
        {"id": "x-2", "lang": "en", "text": "What is a cake?"},
    ]
    (tmp_path / "sub").mkdir()
    path = write_jsonl(tmp_path / "sub" / "xs.jsonl", rows)
    spec = f"{path}@x-1..2"
    loaded = load_source(spec, "harmless", "--harmless").prompts
    assert source_name(spec) == "xs.jsonl@x-1..2"
    assert [(q.source, q.kind, q.group) for q in loaded] == [
        ("xs.jsonl@x-1..2", "homonyms", "xs.jsonl@x-1..2/homonyms"),
        ("xs.jsonl@x-1..2", "", "xs.jsonl@x-1..2"),
    ]
