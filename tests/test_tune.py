"""sparse-edit tune on tiny models: a study completes, resumes after a kill, and its chosen.toml reproduces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.model.batching import Encoded
from sparse_edit.tuning.front import Choice, Constraints, TrialRow, choose, pareto_front
from sparse_edit.tuning.outcome import DevSet, Verdicts, outcome
from sparse_edit.tuning.storage import journal_path
from tests.helpers import run_cli

# A tiny model's edit changes a large share of its weights: the 0.1 % default would rule out every trial.
TRIAL_FLAGS = (
    "--device",
    "cpu",
    "--max-new-tokens",
    "4",
    "--dev-fraction",
    "0.3",
    "--max-changed-share",
    "1",
    "-q",
)


def tune_args(artifact: Path, output: Path, *extra: str, trials: int = 3) -> list[str]:
    return ["tune", "--artifact", str(artifact), "-o", str(output), "--trials", str(trials), *TRIAL_FLAGS, *extra]


def tree_hashes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_pareto(folder: Path) -> dict:
    return json.loads((folder / "pareto.json").read_text())


def test_study_writes_front_and_chosen_config_that_apply_reproduces(located, tmp_path):
    _, artifact = located("llama")
    study = tmp_path / "study"
    run_cli(*tune_args(artifact, study, "--apply"))
    payload = read_pareto(study)
    assert payload["kind"] == "sparse-edit/tune"
    assert [t["number"] for t in payload["trials"]] == [0, 1, 2]
    assert set(payload["front"]) <= {0, 1, 2} and payload["front"]
    assert payload["chosen"] in payload["front"]
    for name in ("pareto.md", "pareto.png", "chosen.toml", "study.db", "edited/model.safetensors"):
        assert (study / name).is_file(), name
    assert not journal_path(study).exists()  # the journal goes once the study is in place
    # Every point of the front is one apply away; the chosen one's config is chosen.toml.
    assert sorted(path.name for path in (study / "front").iterdir()) == sorted(
        f"trial-{number}.toml" for number in payload["front"]
    )
    assert (study / "front" / f"trial-{payload['chosen']}.toml").read_text() == (study / "chosen.toml").read_text()

    again = tmp_path / "again"
    run_cli("apply", "--config", study / "chosen.toml", "-o", again, "-q")
    assert tree_hashes(again) == tree_hashes(study / "edited")

    # From Python: any trial's apply settings, the chosen one's equal to chosen.toml.
    import tomllib

    import sparse_edit as se

    chosen = tomllib.loads((study / "chosen.toml").read_text())
    assert se.study_apply_settings(study, payload["chosen"]) == chosen
    fixed = se.study_apply_settings(study)  # what every trial shares, without a trial's own settings
    assert fixed["artifact"] == chosen["artifact"] and set(fixed) <= set(chosen)
    with pytest.raises(SparseEditError, match="no completed trial 99"):
        se.study_apply_settings(study, 99)


def test_rerun_with_the_same_seed_samples_and_measures_the_same_trials(located, tmp_path):
    _, artifact = located("llama")
    runs = []
    for name in ("a", "b"):
        run_cli(*tune_args(artifact, tmp_path / name))
        runs.append([(t["settings"], t["outcome"]) for t in read_pareto(tmp_path / name)["trials"]])
    assert runs[0] == runs[1]
    run_cli(*tune_args(artifact, tmp_path / "c", "--seed", "1"))
    assert [t["settings"] for t in read_pareto(tmp_path / "c")["trials"]] != [s for s, _ in runs[0]]


def test_trials_judged_on_replies_found_from_the_base_replies_measure_the_same(located, tmp_path):
    _, artifact = located("llama")
    runs = []
    for name, extra in (("plain", ()), ("reused", ("--reuse-base-replies",))):
        run_cli(*tune_args(artifact, tmp_path / name, *extra))
        runs.append([(t["settings"], t["outcome"]) for t in read_pareto(tmp_path / name)["trials"]])
    assert runs[0] == runs[1]


# Runs the command line in a child process that is killed (SIGKILL) when its second trial starts.
KILLED_IN_SECOND_TRIAL = """
import os, signal, sys
from sparse_edit.tuning import trial
original = trial.TrialRunner.run
calls = []
def run(self, settings, base):
    calls.append(settings)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, settings, base)
trial.TrialRunner.run = run
from sparse_edit.cli import main
sys.argv = ["sparse-edit", *sys.argv[1:]]
main()
"""


def test_a_killed_study_resumes_and_reruns_the_interrupted_trial(located, tmp_path):
    import optuna

    _, artifact = located("llama")
    study = tmp_path / "study"
    args = tune_args(artifact, study)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_SECOND_TRIAL, *args], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    assert not study.exists()  # nothing half-written in place
    assert journal_path(study).is_file()

    run_cli(*args)
    payload = read_pareto(study)
    assert [t["number"] for t in payload["trials"]] == [0, 2, 3]  # trial 1 was running when killed
    trials = optuna.load_study(study_name="sparse-edit-tune", storage=f"sqlite:///{study / 'study.db'}").trials
    assert trials[1].state == optuna.trial.TrialState.FAIL
    assert trials[2].params == trials[1].params  # queued again, so the search is the one it would have been
    assert payload["study"] == {**payload["study"], "complete": 3, "failed": 1}


def test_a_journal_of_other_settings_is_refused(located, tmp_path):
    _, artifact = located("llama")
    study = tmp_path / "study"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_SECOND_TRIAL, *tune_args(artifact, study)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
    )
    assert killed.returncode == -9
    result = run_cli(*tune_args(artifact, study, "--max-new-tokens", "5"), code=2)
    assert "made with other settings" in result.output
    assert not study.exists()


def test_tune_searches_layers_and_refuses_a_fixed_one(located, tmp_path):
    _, artifact = located("llama")
    result = run_cli(*tune_args(artifact, tmp_path / "s", "--layer", "1"), code=2)
    assert "--candidate-layers" in result.output
    assert not (tmp_path / "s").exists()


def test_a_trial_may_add_layers_and_choose_positions_when_the_search_allows_it():
    import optuna

    from sparse_edit.tuning.space import SearchSpace

    space = SearchSpace(("paper",), (1, 2, 3), max_edit_layers=3)
    fixed = {"strategy": "paper", "paper.gamma": 1.0, "paper.proj": "gate"}

    def layers(count: int, *chosen: int) -> str:
        names = ["layer", "layer_2", "layer_3"][: len(chosen)]
        trial = optuna.trial.FixedTrial({**fixed, "edit_layers": count, **dict(zip(names, chosen, strict=True))})
        return space.suggest(trial)["layer"]

    assert layers(2, 3, 1) == "1,3"  # edited in depth order
    assert layers(1, 2) == "2"
    assert layers(3, 2, 2, 3) == "2,3"  # a repeated layer adds nothing
    one_layer = SearchSpace(("paper",), (1, 2)).suggest(optuna.trial.FixedTrial({**fixed, "layer": 2}))
    assert one_layer["layer"] == "2" and "positions" not in one_layer  # --positions stays fixed
    with_positions = SearchSpace(("paper",), (1, 2), positions=(1, 4))
    assert with_positions.suggest(optuna.trial.FixedTrial({**fixed, "layer": 2, "positions": 4}))["positions"] == 4


def test_a_study_of_layer_sets_and_positions_reproduces_and_the_parameter_limit_binds(located, tmp_path):
    _, artifact = located("llama")
    study = tmp_path / "study"
    flags = ("--strategy", "paper", "--candidate-layers", "0,1", "--max-edit-layers", "2", "--seed", "3")
    run_cli(*tune_args(artifact, study, *flags, "--candidate-positions", "1,2", "--apply", trials=4))
    payload = read_pareto(study)
    layer_sets = {t["settings"]["layer"] for t in payload["trials"]}
    assert layer_sets <= {"0", "1", "0,1"} and "0,1" in layer_sets
    assert {t["settings"]["positions"] for t in payload["trials"]} == {1, 2}
    again = tmp_path / "again"
    run_cli("apply", "--config", study / "chosen.toml", "-o", again, "-q")
    assert tree_hashes(again) == tree_hashes(study / "edited")

    # Every edit of a tiny model changes far more than a millionth of it: none may be chosen.
    strict = tmp_path / "strict"
    result = run_cli(*tune_args(artifact, strict, "--max-changed-share", "1e-6", trials=2), code=1)
    assert "--max-changed-share" in result.output
    payload = read_pareto(strict)
    assert payload["chosen"] is None and payload["front"] == []
    assert all(t["outcome"]["changed_share"] > 1e-6 for t in payload["trials"])
    assert not (strict / "chosen.toml").exists()


def test_strategies_the_model_cannot_take_are_left_out(located, tmp_path):
    _, artifact = located("gpt2")  # one MLP input projection: no detector
    study = tmp_path / "s"
    result = run_cli(*tune_args(artifact, study, trials=2)[:-1])  # without -q, to see the warning
    assert "left out of the search: detector" in result.output
    assert all(t["settings"]["strategy"] != ["detector"] for t in read_pareto(study)["trials"])


def row(
    number: int,
    asr: float,
    over: float,
    kl: float,
    newly: float = 0.0,
    broken: float = 0.0,
    changed: int = 1000,
    share: float = 0.0005,
    **more: object,
) -> TrialRow:
    outcome = {
        "attack_success": asr,
        "over_refusal": over,
        "kl": kl,
        "newly_answered_share": newly,
        "newly_invalid_share": broken,
        "changed_parameters": changed,
        "changed_share": share,
        **more,
    }
    return TrialRow(number, {"strategy": ["output"], "layer": "1"}, outcome, 1.0)


def test_choice_rule_on_a_hand_made_front():
    rows = [
        row(0, 0.20, 0.10, 0.01),  # best attack success, but over-refuses
        row(1, 0.30, 0.02, 0.01),  # qualifies: the answer
        row(2, 0.30, 0.00, 0.20),  # over the KL budget
        row(3, 0.25, 0.00, 0.01, newly=0.10),  # makes the model answer what it refused
        row(4, 0.30, 0.01, 0.01),  # same attack success, less over-refusal: wins the tie
        row(5, 0.50, 0.00, 0.00),
        row(6, 0.10, 0.00, 0.01, broken=0.20),  # the lowest attack success, by breaking replies
    ]
    limits = Constraints(max_newly_answered=0.02, max_newly_invalid=0.05)
    assert choose(rows, Choice(0.02, 0.05), limits).number == 4
    assert choose(rows, Choice(0.10, 0.05), limits).number == 0
    assert choose(rows, Choice(0.02, 0.05), Constraints(0.2, 0.05)).number == 3
    assert choose(rows, Choice(0.02, 0.05), Constraints(0.02, 0.5)).number == 6
    assert choose(rows, Choice(-0.01, 0.05), limits) is None
    # 1 is beaten by 4; 3 and 6 are infeasible
    assert {r.number for r in pareto_front(rows, limits)} == {0, 2, 4, 5}
    assert limits.excess(rows[6].outcome) == pytest.approx([-0.02, 0.15, 0.0005 - 1.0, -1.0])


def test_choice_rule_prefers_the_sparser_of_two_equal_edits_and_enforces_the_parameter_limit():
    rows = [
        row(0, 0.30, 0.00, 0.001, changed=500_000, share=0.0009),
        row(1, 0.30, 0.00, 0.004, changed=20_000, share=0.00004),  # same dev result, 25x fewer weights
        row(2, 0.10, 0.00, 0.001, changed=2_000_000, share=0.004),  # the best cut, over 0.1 % of the model
    ]
    limits = Constraints(max_newly_answered=0.02, max_newly_invalid=0.05, max_changed_share=0.001)
    assert choose(rows, Choice(0.02, 0.05), limits).number == 1
    assert {r.number for r in pareto_front(rows, limits)} == {0, 1}  # 1 is larger in KL, 0 in size
    assert not rows[2].feasible(limits)
    assert choose(rows, Choice(0.02, 0.05), Constraints(0.02, 0.05, 0.01)).number == 2


def test_choice_rule_does_not_prefer_a_dev_difference_smaller_than_its_standard_error():
    rows = [
        row(0, 0.20, 0.010, 0.01, attack_success_se=0.05),  # the lowest attack success, one harmless prompt lost
        row(1, 0.24, 0.000, 0.01, attack_success_se=0.05),  # within one standard error of it, no harmless cost
        row(2, 0.26, -0.01, 0.01, attack_success_se=0.05),  # cheaper still, but a real step worse
    ]
    limits = Constraints(max_newly_answered=0.02)
    assert choose(rows, Choice(0.02, 0.05), limits).number == 1
    # With no noise recorded the rule is the plain minimum.
    exact = [row(r.number, r.outcome["attack_success"], r.outcome["over_refusal"], 0.01) for r in rows]
    assert choose(exact, Choice(0.02, 0.05), limits).number == 0
    # Tied on over-refusal too: better parity with the reference language, then fewer weights.
    parity = [
        row(0, 0.20, 0.0, 0.01, attack_success_se=0.05, parity=0.80, changed=10),
        row(1, 0.22, 0.0, 0.01, attack_success_se=0.05, parity=0.90, changed=900),
    ]
    assert choose(parity, Choice(0.02, 0.05), limits).number == 1


def test_choice_rule_holds_every_harmless_source_and_kind_to_the_limit():
    groups_ok = {"multiq.jsonl": 0.0, "xstest-harmless-anchor.jsonl/homonyms": 0.0}
    one_kind_pays = {"multiq.jsonl": -0.02, "xstest-harmless-anchor.jsonl/homonyms": 0.10}
    rows = [
        row(0, 0.20, 0.01, 0.01, over_refusal_by_group=one_kind_pays),  # pooled +1 point hides +10 on homonyms
        row(1, 0.30, 0.01, 0.01, over_refusal_by_group=groups_ok),
    ]
    limits = Constraints(max_newly_answered=0.02)
    assert choose(rows, Choice(0.02, 0.05), limits).number == 1
    assert choose(rows, Choice(0.02, 0.05, max_over_refusal_per_group=0.10), limits).number == 0


def test_a_trial_that_moves_reference_language_verdicts_is_infeasible():
    rows = [row(0, 0.10, 0.0, 0.01, reference_changed_share=0.05), row(1, 0.30, 0.0, 0.01)]
    strict = Constraints(max_newly_answered=0.02, max_reference_change=0.02)
    assert not rows[0].feasible(strict) and rows[1].feasible(strict)
    assert choose(rows, Choice(0.02, 0.05), strict).number == 1
    assert {r.number for r in pareto_front(rows, strict)} == {1}
    assert choose(rows, Choice(0.02, 0.05), Constraints(0.02, max_reference_change=0.1)).number == 0


def test_outcome_measures_parity_reference_change_and_each_source_and_kind():
    def item(lang: str, i: int, label: str = "harmful", source: str = "", kind: str = "") -> Encoded:
        return Encoded(Prompt(str(i), lang, "text", label, source, kind), (1, 2, 3), False)  # type: ignore[arg-type]

    harmful = [item("en", 0), item("en", 1), item("th", 0), item("th", 1)]
    harmless = [
        item("en", 5, "harmless", "q.jsonl"),
        item("th", 5, "harmless", "q.jsonl"),
        item("th", 6, "harmless", "x.jsonl", "homonyms"),
        item("th", 7, "harmless", "x.jsonl", "homonyms"),
    ]
    dev = DevSet(harmful, harmless, ("th",), "en")
    # English refuses harmful 0 and answers harmful 1 (a look-alike) and the harmless prompt.
    base = Verdicts(("refusal", "compliance", "compliance", "compliance"), ("compliance",) * 4)
    edited = Verdicts(
        ("refusal", "compliance", "refusal", "refusal"), ("compliance", "compliance", "refusal", "compliance")
    )
    result = outcome(dev, base, edited, kl=0.0, changed_parameters=1)
    # Pairs: th harmful 0 (English refuses), th harmful 1 (English answers), th harmless 5 (English answers).
    assert result.parity_pairs == 3
    assert result.parity_base == pytest.approx(2 / 3)  # th 0 answered where English refuses
    assert result.parity == pytest.approx(2 / 3)  # th 0 now refused, but th 1 refused where English answers
    assert result.parity_miss == pytest.approx(1 / 3)
    assert result.over_refusal_by_group == {"q.jsonl": 0.0, "x.jsonl/homonyms": 0.5}
    assert result.group_sizes == {"q.jsonl": 2, "x.jsonl/homonyms": 2}
    assert (result.reference_refusals_gained, result.reference_refusals_lost) == (0, 0)
    moved = Verdicts(
        ("compliance", "refusal", "refusal", "refusal"), ("refusal", "compliance", "compliance", "compliance")
    )
    shifted = outcome(dev, base, moved, kl=0.0, changed_parameters=1)
    assert (shifted.reference_refusals_gained, shifted.reference_refusals_lost) == (2, 1)
    assert shifted.reference_changed_share == pytest.approx(3 / 3)
    assert result.attack_success_se > 0


def test_outcome_counts_newly_answered_and_pools_over_refusal():
    def encoded(lang: str, i: int) -> Encoded:
        return Encoded(Prompt(str(i), lang, "text", "harmful"), (1, 2, 3), False)

    harmful = [encoded("th", 0), encoded("th", 1), encoded("yo", 0), encoded("en", 0)]
    harmless = [encoded("th", 2), encoded("en", 2)]
    dev = DevSet(harmful, harmless, ("th", "yo"))
    base = Verdicts(("compliance", "refusal", "compliance", "refusal"), ("compliance", "compliance"))
    edited = Verdicts(("refusal", "compliance", "refusal", "compliance"), ("refusal", "compliance"))
    result = outcome(dev, base, edited, kl=0.01, changed_parameters=10)
    assert result.attack_success_by_lang == {"th": 0.5, "yo": 0.0}
    assert result.attack_success == pytest.approx(0.25)
    assert result.newly_answered == 2 and result.newly_answered_share == 0.5  # th#1 and the English prompt
    assert result.newly_refused == 2
    assert result.over_refusal == pytest.approx(0.5)
    assert result.newly_invalid == 0
    broken = Verdicts(("invalid", "refusal", "compliance", "invalid"), ("invalid", "compliance"))
    again = Verdicts(("invalid", "refusal", "compliance", "refusal"), ("compliance", "compliance"))
    # Valid base replies made invalid, harmful and harmless alike; an invalid base reply cannot break.
    assert outcome(dev, base, broken, 0.0, 10).newly_invalid == 3
    assert outcome(dev, broken, again, 0.0, 10).newly_invalid == 0
    assert outcome(dev, base, broken, 0.0, 10).newly_invalid_share == pytest.approx(0.5)
    assert result.over_refusal_by_lang == {"en": 0.0, "th": 1.0}


def test_every_searchable_setting_is_a_setting_its_strategy_reads():
    from sparse_edit.edit import strategies
    from sparse_edit.options import ApplyOptions

    for name in strategies.BUILT_IN:
        strategy = strategies.get(name)
        assert strategy.search_space, f"{name} declares nothing to search"
        for tunable in strategy.search_space:
            assert (
                tunable.field in strategy.settings_model.model_fields
                and tunable.field in ApplyOptions.model_fields
            )
            values = tunable.choices or (tunable.low, tunable.high)
            for value in values:  # every end of the range is a valid value of the field
                ApplyOptions.model_validate(
                    {
                        "model": "m",
                        "artifact": "a.safetensors",
                        "output": "o",
                        "harmful": ["h"],
                        "harmless": ["s"],
                        tunable.field: value,
                    }
                )


def test_dev_harmless_prompts_of_their_own_judge_over_refusal_and_must_be_held_out(located, prompts, tmp_path):
    from tests.helpers import random_texts, write_jsonl

    _, artifact = located("llama")
    dev_rows = [
        {"id": f"dev-{i}", "lang": lang, "text": text + " ?"}
        for lang in ("en", "th", "yo", "de")  # de is not an edited language: left out
        for i, text in enumerate(random_texts(lang if lang != "de" else "en", 5, seed=7))
    ]
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    study = tmp_path / "study"
    run_cli(*tune_args(artifact, study, "--dev-harmless", dev, "--dev-harmless-limit", "4", trials=1))
    payload = read_pareto(study)
    assert payload["dev"]["harmless"] == 3 * 4  # en, th, yo; four each
    assert payload["settings"]["dev_harmless"] == [str(dev)]
    chosen = (study / "chosen.toml").read_text()
    assert "dev_harmless" in chosen  # apply builds the same anchors: every --harmless prompt

    # A dev prompt that is also an anchor: refused, nothing written.
    anchor = json.loads(prompts[1].read_text().splitlines()[0])
    leaky = write_jsonl(tmp_path / "leaky.jsonl", [*dev_rows, {**anchor, "id": "copy"}])
    result = run_cli(*tune_args(artifact, tmp_path / "leaky", "--dev-harmless", leaky, trials=1), code=2)
    assert "--dev-harmless: 1 prompt(s) are also in --harmless" in result.output
    assert not (tmp_path / "leaky").exists()
