from __future__ import annotations

import json

import pytest

from sparse_edit.data.prompts import load_source, missing_parallel_ids
from sparse_edit.errors import SparseEditError
from tests.conftest import SHARED_DATA


def test_jsonl_rows_and_labels(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"id": 1, "lang": "en", "text": "bad", "label": "harmful"}\n\n'
        '{"id": 2, "lang": "en", "text": "fine", "label": "harmless"}\n'
    )
    assert [p.text for p in load_source(str(path), "harmful", "--harmful").prompts] == ["bad"]
    assert [p.id for p in load_source(str(path), "harmless", "--harmless").prompts] == ["2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "lang": "en", "text": "a"}\n{"id": 2, "lang": "en"\n', "p.jsonl:2: not valid JSON"),
        ('{"id": 1, "text": "a"}\n', "p.jsonl:1: missing lang"),
        ('{"id": 1, "lang": "en", "text": "  "}\n', "p.jsonl:1: text is empty"),
        ('{"id": 1, "lang": "en", "text": "a", "label": "evil"}\n', "label must be"),
        ("", "no harmful prompts"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(SparseEditError, match=message):
        load_source(str(path), "harmful", "--harmful")


def test_instruction_list_language_from_name_or_suffix(tmp_path):
    path = tmp_path / "harmful_train_translated_th.json"
    path.write_text(json.dumps([{"instruction": "x", "category": None}, {"instruction": "y"}]))
    loaded = load_source(str(path), "harmful", "--harmful")
    assert {p.lang for p in loaded.prompts} == {"th"} and [p.id for p in loaded.prompts] == ["0", "1"]
    other = tmp_path / "prompts.json"
    other.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(SparseEditError, match="append :LANG"):
        load_source(str(other), "harmful", "--harmful")
    assert load_source(f"{other}:sw", "harmful", "--harmful").prompts[0].lang == "sw"


def test_wide_csv_with_bom_and_missing_cells(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("\ufeffid,tags,en,bn\n7,x,hello,হ্যালো\n8,y,bye,\n", encoding="utf-8")
    prompts = load_source(str(path), "harmful", "--harmful").prompts
    assert [(p.id, p.lang) for p in prompts] == [("7", "en"), ("7", "bn"), ("8", "en")]
    assert missing_parallel_ids(prompts, "en") == {"bn": ["8"]}
    with pytest.raises(SparseEditError, match="no column for sw"):
        load_source(f"{path}:en,sw", "harmful", "--harmful")


def test_glob_that_matches_nothing(tmp_path):
    with pytest.raises(SparseEditError, match="matches no file"):
        load_source(str(tmp_path / "*.jsonl"), "harmful", "--harmful")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (PolyRefuse, MultiJail) is not present")
def test_real_prompt_sets_load_and_are_parallel():
    poly = load_source(str(SHARED_DATA / "polyrefuse" / "harmful_train_translated_*.json"), "harmful", "--harmful")
    assert len({p.lang for p in poly.prompts}) == 14 and len(poly.prompts) == 14 * 260
    assert missing_parallel_ids(poly.prompts, "en") == {}
    jail = load_source(str(SHARED_DATA / "multijail" / "MultiJail.csv"), "harmful", "--harmful")
    assert {p.lang for p in jail.prompts} == {"en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"}


def test_id_selections_parse_ranges_prefixed_ranges_and_lists():
    from sparse_edit.io.sources import IdSelection, split_ids, split_spec

    selection = IdSelection("100-314,gpt-51..100,h3")
    assert "100" in selection and "314" in selection and "99" not in selection and "315" not in selection
    assert "gpt-51" in selection and "gpt-100" in selection and "gpt-50" not in selection
    assert "h3" in selection and "lmsys-51" not in selection
    assert split_spec("data/MultiJail.csv:en,bn@100-314") == ("data/MultiJail.csv", ["en", "bn"])
    assert split_ids("me@example/file.jsonl")[1] is None and split_ids("a@b.jsonl")[1] is None  # a path
    with pytest.raises(ValueError, match="empty"):
        IdSelection("9-3")


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="../shared/data (MultiJail, MultiQ, PolyRefuse) is not present"
)
def test_the_example_split_configs_select_the_fixed_anchor_and_test_ids(tmp_path, monkeypatch):
    from pathlib import Path

    from sparse_edit.console import Reporter
    from sparse_edit.data.selection import prepare_prompts
    from sparse_edit.options import EvalOptions, LocateOptions, load_options

    configs = Path(__file__).resolve().parents[1] / "examples" / "configs"
    (tmp_path / "data").symlink_to(SHARED_DATA)
    monkeypatch.chdir(tmp_path)
    quiet = Reporter(quiet=True)
    test = load_options(EvalOptions, configs / "multijail-test-eval.toml", {"model": "m", "output": "o"})
    test_sets = prepare_prompts(test, quiet, both_classes=False)
    bengali = [p for p in test_sets.harmful if p.lang == "bn"]
    assert len(bengali) == 80 and {int(p.id) for p in bengali} == set(range(20, 100))
    assert {p.id for p in test_sets.harmless if p.lang == "sw"} == {
        *(f"gpt-{i}" for i in range(1, 51)),
        *(f"lmsys-{i}" for i in range(1, 41)),
    }
    anchors = load_options(LocateOptions, configs / "multijail-anchors-locate.toml", {})
    anchor_sets = prepare_prompts(anchors, quiet)
    assert min(int(p.id) for p in anchor_sets.harmful) == 100
    assert not {(p.lang, p.id) for p in anchor_sets.harmless} & {(p.lang, p.id) for p in test_sets.harmless}


def test_a_slice_that_drops_a_whole_source_in_a_language_is_warned(tmp_path, capsys):
    from sparse_edit.console import Reporter
    from sparse_edit.data.selection import prepare_prompts
    from sparse_edit.options import EvalOptions

    def write(name: str, rows: list[tuple[str, str]]) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": i, "lang": lang, "text": f"q {i}"}) + "\n" for i, lang in rows))
        return str(path)

    first = write("first.jsonl", [(f"a{i}", lang) for lang in ("en", "ko") for i in range(3)])
    second = write("second.jsonl", [(f"b{i}", lang) for lang in ("en", "ko") for i in range(3)])
    harmful = write("harmful.jsonl", [(f"h{i}", lang) for lang in ("en", "ko") for i in range(3)])

    def warnings(limit: int) -> str:
        options = EvalOptions(model="m", output=tmp_path / "o", harmful=[harmful], harmless=[first, second])
        prepare_prompts(options.model_copy(update={"harmless_limit": limit}), Reporter(quiet=True), False)
        return capsys.readouterr().err

    cut = warnings(3)
    assert "second.jsonl contributes none in en, ko" in cut and "--harmless-skip/--harmless-limit" in cut
    assert "first.jsonl" not in cut
    assert warnings(4) == ""  # one prompt of the second source is kept in each language
