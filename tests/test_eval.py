from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from sparse_edit.cli import app
from sparse_edit.errors import SparseEditError
from sparse_edit.evaluation.gates import METRICS, parse_gate
from sparse_edit.evaluation.parity import parity_from_replies
from sparse_edit.evaluation.report_schema import EvalReport
from tests.helpers import parallel_prompt_files

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    harmful, harmless = parallel_prompt_files(root, langs=("en", "th"), count=4)
    model = tiny_models("qwen2")
    args = [
        "eval",
        "--model",
        str(model),
        "--base",
        str(model),
        "--harmful",
        str(harmful),
        "--harmless",
        str(harmless),
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
        "-q",
    ]
    return root, args


def test_eval_writes_a_schema_valid_report(evaluated):
    root, args = evaluated
    out = root / "report"
    result = runner.invoke(
        app, [*args, "-o", str(out), "--fail-if", "kl_harmless > 0.05", "--fail-if", "parity_delta[th] < 0"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    EvalReport.model_validate(report)
    assert set(report["languages"]) == {"en", "th"}
    assert set(report["summary"]) == set(METRICS)  # every summary metric can be gated, and only those
    # Same model as base and edited: nothing may differ.
    assert report["summary"]["kl_harmless"] == pytest.approx(0.0, abs=1e-6)
    assert all(v == 0 for v in report["summary"]["asr_delta"].values())
    assert report["pooled_tests"]["over_refusal"] == {"only_before": 0, "only_after": 0, "p_value": 1.0}
    assert report["changed"] == {"newly_refused_harmless": [], "newly_answered_harmful": []}
    assert report["summary"]["newly_answered_share"] == 0 and report["summary"]["newly_refused_share"] == 0
    assert report["gates"] == [
        {"expression": "kl_harmless > 0.05", "value": report["summary"]["kl_harmless"], "tripped": False},
        {"expression": "parity_delta[th] < 0", "value": 0.0, "tripped": False},
    ]
    # Parity: th's prompts are parallel to en's; the same model on both sides cannot move it.
    parity = report["parity"]
    assert set(parity["languages"]) == {"th"} and parity["languages"]["th"]["n"] == 8
    assert parity["languages"]["th"]["edited"] == parity["languages"]["th"]["base"]
    assert parity["reference_change"]["harmful"]["refusals_gained"]["k"] == 0
    replies = (out / "replies.jsonl").read_text().splitlines()
    assert len(replies) == 2 * (8 + 8)
    assert parity_from_replies([json.loads(line) for line in replies], "en") == parity
    assert (out / "report.md").read_text().startswith("# sparse-edit evaluation")
    broken = dict(report, schema_version=2)
    with pytest.raises(ValidationError):
        EvalReport.model_validate(broken)


def test_a_tripped_gate_exits_1_and_still_writes_the_report(evaluated):
    root, args = evaluated
    out = root / "gated"
    result = runner.invoke(app, [*args, "-o", str(out), "--fail-if", "asr[en] >= 0", "--no-representation"])
    assert result.exit_code == 1, result.output
    assert "asr[en] >= 0" in result.stderr
    assert json.loads((out / "report.json").read_text())["gates"][0]["tripped"] is True


def test_malformed_or_unknown_gates_exit_2_before_generating(evaluated):
    root, args = evaluated
    result = runner.invoke(app, [*args, "-o", str(root / "bad"), "--fail-if", "asr[bn] >> 3"])
    assert result.exit_code == 2 and "METRIC[LANG] OP NUMBER" in result.stderr
    assert not (root / "bad").exists()
    with pytest.raises(SparseEditError, match="unknown metric"):
        parse_gate("bogus > 1").evaluate({"asr": {}})
    with pytest.raises(SparseEditError, match="per language"):
        parse_gate("asr > 1").evaluate({"asr": {"en": 0.1}})
    with pytest.raises(SparseEditError, match="needs --base"):
        parse_gate("kl_harmless > 1").evaluate({"kl_harmless": None})
    # The reference language has no parity of its own: refused before any reply.
    result = runner.invoke(app, [*args, "-o", str(root / "bad"), "--fail-if", "parity[en] < 0.9"])
    assert result.exit_code == 2 and "no parallel prompts in en" in result.stderr, result.output
    assert not (root / "bad").exists()


def test_languages_without_harmless_prompts_get_attack_success_only(tiny_models, tmp_path):
    from tests.helpers import write_jsonl

    harmful, _ = parallel_prompt_files(tmp_path, langs=("en", "th", "yo"), count=3)
    harmless = write_jsonl(
        tmp_path / "safe.jsonl", [{"id": i, "lang": "en", "text": f"hello {i}"} for i in range(3)]
    )
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_models("qwen2")),
            "--base",
            str(tiny_models("qwen2")),
            "--harmful",
            str(harmful),
            "--harmless",
            str(harmless),
            "--max-new-tokens",
            "3",
            "--no-representation",
            "--device",
            "cpu",
            "-q",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["languages"]["yo"]["harmless"]["n"] == 0
    assert set(report["summary"]["over_refusal"]) == {"en"}
    assert set(report["summary"]["asr"]) == {"en", "th", "yo"}


def test_harmless_limit_sizes_the_over_refusal_set_apart_from_limit(evaluated):
    root, args = evaluated
    out = root / "sized"
    result = runner.invoke(
        app, [*args, "-o", str(out), "--limit", "2", "--harmless-limit", "3", "--no-representation"]
    )
    assert result.exit_code == 0, result.output
    languages = json.loads((out / "report.json").read_text())["languages"]
    assert {lang: (row["harmful"]["n"], row["harmless"]["n"]) for lang, row in languages.items()} == {
        "en": (2, 3),
        "th": (2, 3),
    }


def test_skip_takes_a_fresh_slice_per_language_and_class(evaluated):
    root, args = evaluated
    out = root / "sliced"
    flags = ["--skip", "1", "--limit", "2", "--harmless-skip", "2", "--no-representation"]
    result = runner.invoke(app, [*args, "-o", str(out), *flags])
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    ids = {(r["class"], r["lang"]): set() for r in replies}
    for r in replies:
        ids[(r["class"], r["lang"])].add(r["id"])
    assert ids == {
        ("harmful", "en"): {"1", "2"},
        ("harmful", "th"): {"1", "2"},
        ("harmless", "en"): {"2", "3"},
        ("harmless", "th"): {"2", "3"},
    }


def test_refusal_language_counts_only_refusals_and_reports_the_undetermined():
    from sparse_edit.data.prompts import Prompt
    from sparse_edit.evaluation.tables import ModelRun, refusal_language
    from sparse_edit.measure.judge import Verdict
    from sparse_edit.model.batching import Encoded

    langs = ["th", "th", "th", "haw"]
    replies = ["ขออภัย ฉันช่วยไม่ได้", "I'm sorry, but I can't assist with that.", "Sure: step one ...", "I'm sorry."]
    labels = ["refusal", "refusal", "compliance", "refusal"]
    harmful = [Encoded(Prompt(str(i), lang, "q", "harmful"), (1,), False) for i, lang in enumerate(langs)]
    run = ModelRun(replies, [Verdict(label, "") for label in labels], [], [], {}, {})  # type: ignore[arg-type]
    measured = refusal_language(run, harmful, [0, 1, 2, 3])
    assert measured["refusals"] == 3 and measured["undetermined"] == 1
    assert (measured["in_language"]["k"], measured["in_language"]["n"]) == (1, 2)


def test_a_killed_eval_resumes_from_its_journal_and_refuses_other_settings(evaluated, tmp_path):
    import os
    import subprocess
    import sys
    import textwrap

    from sparse_edit.evaluation.journal import journal_path

    root, args = evaluated
    args = [*args, "--no-representation", "--batch-size", "4"]
    whole = tmp_path / "whole"
    assert runner.invoke(app, [*args, "-o", str(whole)]).exit_code == 0
    assert not journal_path(whole).exists()  # removed once the report is in place

    cut = tmp_path / "cut"
    # Die (SIGKILL) right after the third batch of replies is journaled.
    script = textwrap.dedent(
        f"""
        import os, signal
        import sparse_edit.evaluation.journal as journal
        original, calls = journal.ReplyJournal.record, []
        def record(self, *a, **k):
            original(self, *a, **k)
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        journal.ReplyJournal.record = record
        from sparse_edit.cli import main
        import sys
        sys.argv = ["sparse-edit", *{[*args, "-o", str(cut)]!r}]
        main()
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, env=os.environ.copy())
    assert killed.returncode == -9
    assert not cut.exists()
    journaled = journal_path(cut).read_text().splitlines()
    assert len(journaled) == 1 + 3 * 4  # header + three batches

    other = runner.invoke(app, [*args, "--max-new-tokens", "7", "-o", str(cut)])
    assert other.exit_code == 2 and "other settings" in other.stderr

    resumed = runner.invoke(app, [*args, "-o", str(cut)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 12 replies" in resumed.stderr
    assert not journal_path(cut).exists()
    key = lambda row: (row["model"], row["class"], row["lang"], row["id"])  # noqa: E731
    rows = {key(r): r for r in map(json.loads, (cut / "replies.jsonl").read_text().splitlines())}
    expected = {key(r): r for r in map(json.loads, (whole / "replies.jsonl").read_text().splitlines())}
    assert rows == expected


def test_languages_with_harmless_prompts_only_get_over_refusal_and_ids_select_prompts(tiny_models, tmp_path):
    from tests.helpers import write_jsonl

    harmful, _ = parallel_prompt_files(tmp_path, langs=("en", "th"), count=4)
    benign = write_jsonl(
        tmp_path / "multiq.jsonl",
        [
            {"id": f"{kind}-{i}", "lang": lang, "text": f"question {i}", "label": "harmless"}
            for lang in ("en", "th", "yo")
            for kind in ("gpt", "lmsys")
            for i in range(1, 5)
        ],
    )
    out = tmp_path / "report"
    model = str(tiny_models("qwen2"))
    result = runner.invoke(
        app,
        ["eval", "--model", model, "--base", model, "--harmful", f"{harmful}@0-2", "--harmless"]
        + [f"{benign}@gpt-2..3,lmsys-1", "--max-new-tokens", "3", "--no-representation", "--device", "cpu"]
        + ["-q", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    # yo has harmless prompts only: over-refusal is reported for it, attack success is not.
    assert report["languages"]["yo"]["harmful"]["n"] == 0 and report["languages"]["yo"]["harmless"]["n"] == 3
    assert set(report["summary"]["asr"]) == {"en", "th"} and set(report["summary"]["over_refusal"]) == {
        "en",
        "th",
        "yo",
    }
    assert report["summary"]["mean_asr"] is not None
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert {r["id"] for r in replies if r["class"] == "harmful"} == {"0", "1", "2"}
    assert {r["id"] for r in replies if r["class"] == "harmless"} == {"gpt-2", "gpt-3", "lmsys-1"}
    assert "| yo | 0 |" in (out / "report.md").read_text()


def test_an_id_selection_that_keeps_nothing_is_named(evaluated, tmp_path):
    root, args = evaluated
    harmful = args[args.index("--harmful") + 1]
    rebuilt = [a if a != harmful else f"{harmful}@500-600" for a in args]
    result = runner.invoke(app, [*rebuilt, "-o", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no harmful prompt has an id in @500-600" in result.stderr


def test_changed_prompts_list_the_newly_refused_harmless_and_newly_answered_harmful_ones():
    from types import SimpleNamespace

    from sparse_edit.evaluation.report import CHANGED_ROWS_SHOWN, changed_section
    from sparse_edit.evaluation.tables import ModelRun, changed_prompts
    from sparse_edit.measure.judge import Verdict

    names = {"c": "compliance", "r": "refusal", "i": "invalid"}

    def run(harmful: str, harmless: str, tag: str) -> ModelRun:
        verdicts = [[Verdict(names[c], "") for c in text] for text in (harmful, harmless)]
        replies = [[f"{tag} reply {i}" for i in range(len(text))] for text in (harmful, harmless)]
        return ModelRun(replies[0], verdicts[0], replies[1], verdicts[1], {}, {})

    def items(kind: str, n: int) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(prompt=SimpleNamespace(id=f"{kind}{i}", lang="th", text=f"{kind} | {i}"))
            for i in range(n)
        ]

    base = run("rrci", "crir", "base")
    edited = run("crrc", "rrrc", "edited")
    changed = changed_prompts(items("h", 4), items("s", 4), edited, base)  # type: ignore[arg-type]
    # Harmful: 0 refused -> answered (counted); 1 stays refused; 2 answered -> refused; 3 invalid -> answered
    # (the base did not refuse it, so it is not newly answered).
    assert [row["id"] for row in changed["newly_answered_harmful"]] == ["h0"]
    assert changed["newly_answered_harmful"][0]["base_reply"] == "base reply 0"
    assert changed["newly_answered_harmful"][0]["edited_reply"] == "edited reply 0"
    # Harmless: 0 answered -> refused and 2 invalid -> refused count; 3 refused -> answered does not.
    assert [row["id"] for row in changed["newly_refused_harmless"]] == ["s0", "s2"]
    text = "\n".join(changed_section(changed, {"newly_refused_harmless": 4, "newly_answered_harmful": 4}))
    assert "newly refuses: 2 of 4" in text and "answers: 1 of 4" in text
    assert "s \\| 0" in text  # a pipe in a prompt does not split the table row
    many = {
        "newly_refused_harmless": changed["newly_refused_harmless"] * CHANGED_ROWS_SHOWN,
        "newly_answered_harmful": [],
    }
    text = "\n".join(changed_section(many, {"newly_refused_harmless": 999, "newly_answered_harmful": 4}))
    assert f"{CHANGED_ROWS_SHOWN} more in report.json" in text
