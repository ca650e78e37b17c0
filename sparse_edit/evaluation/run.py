"""``sparse-edit eval``: generate, judge and measure per language; optional before/after comparison."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparse_edit.config import EvalOptions
from sparse_edit.console import Reporter
from sparse_edit.data.prompts import by_language
from sparse_edit.data.selection import PromptSets, prepare_prompts
from sparse_edit.evaluation.gates import Gate, check_gate_languages, check_gates
from sparse_edit.evaluation.journal import ReplyJournal, settings_key
from sparse_edit.io.layout import EVAL_KIND
from sparse_edit.measure.judge import GuardJudge, Judge, KeywordJudge, Verdict, refusal_in_language
from sparse_edit.measure.probes import kl_between, mean, refusal_scores
from sparse_edit.measure.representation import last_token_states, probe_accuracy, separation
from sparse_edit.measure.statistics import mcnemar, wilson
from sparse_edit.model.batching import Encoded, encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import LoadedModel, load_model
from sparse_edit.version import __version__

SCHEMA_VERSION = 1


@dataclass
class ModelRun:
    """Everything measured on one model."""

    harmful_replies: list[str]
    harmful_verdicts: list[Verdict]
    harmless_replies: list[str]
    harmless_verdicts: list[Verdict]
    log_odds_harmful: dict[str, list[float]]
    log_odds_harmless: dict[str, list[float]]
    representation: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def make_judge(options: EvalOptions) -> Judge:
    if options.judge == "keyword":
        return KeywordJudge()
    from pathlib import Path

    from sparse_edit.errors import SparseEditError

    path = Path(options.judge)
    if not (path / "config.json").is_file():
        raise SparseEditError(f"--judge {options.judge}: use keyword or the folder of a local guard model")
    return GuardJudge(path)


def measure(
    loaded: LoadedModel,
    harmful: list[Encoded],
    harmless: list[Encoded],
    options: EvalOptions,
    judge: Judge,
    reporter: Reporter,
    tag: str,
    journal: ReplyJournal | None = None,
) -> ModelRun:
    bs = options.batch_size

    def replies(items: list[Encoded], label: str) -> list[str]:
        known = journal.known(tag, label, [item.prompt for item in items]) if journal is not None else None
        record = (lambda rows: journal.record(tag, label, rows)) if journal is not None else None
        return generate_replies(
            loaded, items, options.max_new_tokens, bs, reporter, f"{tag}: {label}", known, record
        )

    harmful_replies = replies(harmful, "harmful")
    harmless_replies = replies(harmless, "harmless")
    run = ModelRun(
        harmful_replies,
        judge.judge_many(
            [(e.prompt.text, e.prompt.lang, r) for e, r in zip(harmful, harmful_replies, strict=True)]
        ),
        harmless_replies,
        judge.judge_many(
            [(e.prompt.text, e.prompt.lang, r) for e, r in zip(harmless, harmless_replies, strict=True)]
        ),
        refusal_scores(loaded, harmful, bs),
        refusal_scores(loaded, harmless, bs),
    )
    if options.representation:
        states_harmful = last_token_states(loaded, harmful, bs)
        states_harmless = last_token_states(loaded, harmless, bs)
        for lang in sorted({e.prompt.lang for e in harmful} & {e.prompt.lang for e in harmless}):
            a = states_harmful[[i for i, e in enumerate(harmful) if e.prompt.lang == lang]]
            b = states_harmless[[i for i, e in enumerate(harmless) if e.prompt.lang == lang]]
            run.representation[lang] = {"separation": separation(a, b), "probe_accuracy": probe_accuracy(a, b)}
    return run


def _rates(verdicts: list[Verdict], indices: list[int]) -> dict[str, Any]:
    labels = [verdicts[i].label for i in indices]
    n = len(labels)
    return {
        "n": n,
        "asr": wilson(labels.count("compliance"), n).as_dict(),
        "refusal": wilson(labels.count("refusal"), n).as_dict(),
        "invalid": wilson(labels.count("invalid"), n).as_dict(),
    }


def refusal_language(run: ModelRun, harmful: list[Encoded], indices: list[int]) -> dict[str, Any]:
    """Of the harmful prompts a model refused, how many refusals are written in the prompt's language."""
    refused = [i for i in indices if run.harmful_verdicts[i].label == "refusal"]
    known = [(i, refusal_in_language(run.harmful_replies[i], harmful[i].prompt.lang)) for i in refused]
    told = [i for i, in_language in known if in_language is not None]
    in_language = sum(1 for _, value in known if value)
    return {
        "refusals": len(refused),
        "undetermined": len(refused) - len(told),
        "in_language": wilson(in_language, len(told)).as_dict(),
    }


def _model_row(
    run: ModelRun, harmful: list[Encoded], lang: str, h_idx: list[int], s_idx: list[int]
) -> dict[str, Any]:
    """One model's numbers for one language."""
    return {
        "harmful": _rates(run.harmful_verdicts, h_idx),
        "harmless": _rates(run.harmless_verdicts, s_idx),
        "log_odds_harmful": mean(run.log_odds_harmful.get(lang, [])),
        "log_odds_harmless": mean(run.log_odds_harmless.get(lang, [])),
        "representation": run.representation.get(lang),
        "refusal_language": refusal_language(run, harmful, h_idx),
    }


def language_table(
    sets: PromptSets, harmful: list[Encoded], harmless: list[Encoded], edited: ModelRun, base: ModelRun | None
) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for lang in sets.languages:
        h_idx = [i for i, e in enumerate(harmful) if e.prompt.lang == lang]
        s_idx = [i for i, e in enumerate(harmless) if e.prompt.lang == lang]
        row: dict[str, Any] = _model_row(edited, harmful, lang, h_idx, s_idx)
        if base is not None:
            row["base"] = _model_row(base, harmful, lang, h_idx, s_idx)
            row["mcnemar_asr"] = paired_test(base.harmful_verdicts, edited.harmful_verdicts, h_idx, "compliance")
            row["mcnemar_over_refusal"] = (
                paired_test(base.harmless_verdicts, edited.harmless_verdicts, s_idx, "refusal") if s_idx else None
            )
        table[lang] = row
    return table


def paired_test(before: list[Verdict], after: list[Verdict], indices: list[int], label: str) -> dict[str, Any]:
    """Exact McNemar test of ``label`` on the same prompts, base (before) vs edited (after)."""
    return mcnemar([before[i].label == label for i in indices], [after[i].label == label for i in indices])


def pooled_tests(
    harmful: list[Encoded], harmless: list[Encoded], edited: ModelRun, base: ModelRun, reference: str
) -> dict[str, dict[str, Any]]:
    """McNemar over all languages at once: per-language cells are too small to show a few-point change.

    ``asr_other_languages``: compliance on every non-reference harmful prompt; ``over_refusal``:
    refusal on every harmless prompt.
    """
    others = [i for i, item in enumerate(harmful) if item.prompt.lang != reference]
    return {
        "asr_other_languages": paired_test(base.harmful_verdicts, edited.harmful_verdicts, others, "compliance"),
        "over_refusal": paired_test(
            base.harmless_verdicts, edited.harmless_verdicts, list(range(len(harmless))), "refusal"
        ),
    }


def changed_prompts(
    harmful: list[Encoded], harmless: list[Encoded], edited: ModelRun, base: ModelRun
) -> dict[str, Any]:
    """The prompts behind the two costs of an edit, one by one: harmless prompts the base model did not
    refuse and the edit refuses, and harmful prompts the base model refused and the edit answers."""

    def rows(
        items: list[Encoded], indices: list[int], before: list[str], after: list[str]
    ) -> list[dict[str, Any]]:
        return [
            {
                "id": items[i].prompt.id,
                "lang": items[i].prompt.lang,
                "prompt": items[i].prompt.text,
                "base_reply": before[i],
                "edited_reply": after[i],
            }
            for i in indices
        ]

    refused = [
        i
        for i, (b, e) in enumerate(zip(base.harmless_verdicts, edited.harmless_verdicts, strict=True))
        if b.label != "refusal" and e.label == "refusal"
    ]
    answered = [
        i
        for i, (b, e) in enumerate(zip(base.harmful_verdicts, edited.harmful_verdicts, strict=True))
        if b.label == "refusal" and e.label == "compliance"
    ]
    return {
        "newly_refused_harmless": rows(harmless, refused, base.harmless_replies, edited.harmless_replies),
        "newly_answered_harmful": rows(harmful, answered, base.harmful_replies, edited.harmful_replies),
    }


def summary_metrics(
    table: dict[str, dict[str, Any]],
    reference: str,
    kl: tuple[float, float] | None,
    changed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat namespace ``--fail-if`` reads: fractions in [0, 1], per-language values as dicts."""
    # Attack success only where the language has harmful prompts, over-refusal where it has harmless ones.
    langs = [lang for lang in table if table[lang]["harmful"]["n"] > 0]
    others = [lang for lang in langs if lang != reference]

    def per_lang(getter: Any) -> dict[str, float]:
        return {lang: getter(table[lang]) for lang in langs}

    asr = per_lang(lambda r: r["harmful"]["asr"]["rate"])
    with_harmless = [lang for lang in table if table[lang]["harmless"]["n"] > 0]
    over = {lang: table[lang]["harmless"]["refusal"]["rate"] for lang in with_harmless}
    metrics: dict[str, Any] = {
        "asr": asr,
        "refusal": per_lang(lambda r: r["harmful"]["refusal"]["rate"]),
        "invalid": per_lang(lambda r: r["harmful"]["invalid"]["rate"]),
        "over_refusal": over,
        "refusal_in_language": per_lang(lambda r: r["refusal_language"]["in_language"]["rate"]),
        "log_odds": per_lang(lambda r: r["log_odds_harmful"]),
        "mean_asr": mean([asr[lang] for lang in others]),
        "mean_over_refusal": mean(list(over.values())),
        "asr_delta": None,
        "mean_asr_delta": None,
        "asr_relative_change": None,
        "over_refusal_delta": None,
        "over_refusal_delta_by_lang": None,
        "log_odds_delta": None,
        "kl_harmless": None,
        "nll_delta": None,
        "ppl_ratio": None,
        "newly_answered_share": None,
        "newly_refused_share": None,
    }
    if all("base" in row for row in table.values()):
        base_asr = per_lang(lambda r: r["base"]["harmful"]["asr"]["rate"])
        base_over = {lang: table[lang]["base"]["harmless"]["refusal"]["rate"] for lang in with_harmless}
        metrics["asr_delta"] = {lang: asr[lang] - base_asr[lang] for lang in langs}
        metrics["mean_asr_delta"] = mean([asr[lang] - base_asr[lang] for lang in others])
        base_mean = mean([base_asr[lang] for lang in others])
        metrics["asr_relative_change"] = (metrics["mean_asr"] - base_mean) / base_mean if base_mean else None
        metrics["over_refusal_delta_by_lang"] = {lang: over[lang] - base_over[lang] for lang in with_harmless}
        metrics["over_refusal_delta"] = mean(list(metrics["over_refusal_delta_by_lang"].values()))
        metrics["log_odds_delta"] = {
            lang: table[lang]["log_odds_harmful"] - table[lang]["base"]["log_odds_harmful"] for lang in langs
        }
    if changed is not None:
        harmful_n = sum(row["harmful"]["n"] for row in table.values())
        harmless_n = sum(row["harmless"]["n"] for row in table.values())
        metrics["newly_answered_share"] = len(changed["newly_answered_harmful"]) / harmful_n if harmful_n else None
        metrics["newly_refused_share"] = (
            len(changed["newly_refused_harmless"]) / harmless_n if harmless_n else None
        )
    if kl is not None:
        metrics["kl_harmless"], metrics["nll_delta"] = kl
        metrics["ppl_ratio"] = math.exp(kl[1])
    return metrics


@dataclass
class EvalResult:
    report: dict[str, Any]
    replies: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    journal: ReplyJournal | None = None

    @property
    def tripped(self) -> list[str]:
        return [gate["expression"] for gate in self.gates if gate["tripped"]]


def run_eval(options: EvalOptions, reporter: Reporter, journal_folder: Path | None = None) -> EvalResult:
    """Generate, judge and measure; with ``journal_folder``, replies are journaled beside it as they come
    in and a rerun with the same settings resumes from them."""
    gates: list[Gate] = check_gates(options.fail_if, has_base=options.base is not None)
    torch.manual_seed(options.seed)
    sets = prepare_prompts(options, reporter, both_classes=False)
    check_gate_languages(
        gates, {"harmful": {p.lang for p in sets.harmful}, "harmless": {p.lang for p in sets.harmless}}
    )
    judge = make_judge(options)
    edited_model = load_model(options)
    base_model = load_model(options, options.base) if options.base is not None else None

    def encode(loaded: LoadedModel, prompts: list[Any]) -> list[Encoded]:
        return encode_prompts(loaded.tokenizer, prompts, options.system_prompt, options.max_length)

    harmful = encode(edited_model, sets.harmful)
    harmless = encode(edited_model, sets.harmless)
    journal = None
    if journal_folder is not None:
        journal = ReplyJournal.open(journal_folder, reply_settings_key(options, edited_model, base_model))
        if journal.replies:
            reporter.warn(
                f"resuming: {len(journal.replies)} replies of an interrupted run reused from {journal.path}"
            )
    base_run = (
        measure(base_model, harmful, harmless, options, judge, reporter, "base", journal) if base_model else None
    )
    edited_run = measure(edited_model, harmful, harmless, options, judge, reporter, "edited", journal)
    kl = None
    if base_model is not None:
        with reporter.progress("KL: harmless", len(harmless)) as task:
            kl = kl_between(
                edited_model,
                lambda inputs: base_model.model(**inputs, use_cache=False).logits,
                lambda inputs: edited_model.model(**inputs, use_cache=False).logits,
                harmless,
                options.batch_size,
                on_edited=lambda batch, _: task.advance(len(batch.items)),
            )
    table = language_table(sets, harmful, harmless, edited_run, base_run)
    changed = changed_prompts(harmful, harmless, edited_run, base_run) if base_run is not None else None
    metrics = summary_metrics(table, options.reference_lang, kl, changed)
    gate_rows = []
    for gate in gates:
        tripped, value = gate.evaluate(metrics)
        gate_rows.append({"expression": gate.text, "value": value, "tripped": tripped})
    report = {
        "kind": EVAL_KIND,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "settings": options.model_dump(mode="json", exclude={"output", "overwrite"}),
        "judge": judge.name,
        "models": {"edited": str(options.model), "base": str(options.base) if options.base else None},
        "reference_lang": options.reference_lang,
        "counts": {
            lang: {"harmful": len(h), "harmless": len(by_language(sets.harmless).get(lang, []))}
            for lang, h in by_language(sets.harmful).items()
        },
        "languages": table,
        "summary": metrics,
        "pooled_tests": pooled_tests(harmful, harmless, edited_run, base_run, options.reference_lang)
        if base_run is not None
        else None,
        "changed": changed,
        "gates": gate_rows,
    }
    replies = _reply_rows(harmful, harmless, edited_run, "edited")
    if base_run is not None:
        replies += _reply_rows(harmful, harmless, base_run, "base")
    return EvalResult(report, replies, gate_rows, journal)


# Settings that do not change a generated reply; everything else is part of the journal's key.
# Prompt selection is not part of it: each journaled reply is matched to its prompt's text.
NOT_REPLY_SETTINGS = {
    "output",
    "overwrite",
    "fail_if",
    "representation",
    "judge",
    "artifact",
    "batch_size",
    "harmful",
    "harmless",
    "languages",
    "limit",
    "harmless_limit",
    "skip",
    "harmless_skip",
    "reference_lang",
}


def reply_settings_key(options: EvalOptions, edited: LoadedModel, base: LoadedModel | None) -> str:
    settings = options.model_dump(mode="json", exclude=NOT_REPLY_SETTINGS)
    # The weights themselves, not only their layout: a journal of another model of the same shapes is not ours.
    settings["weights"] = [edited.checkpoint.weights_sha256(), base.checkpoint.weights_sha256() if base else None]
    settings["device"] = edited.device
    return settings_key(settings)


def _reply_rows(harmful: list[Encoded], harmless: list[Encoded], run: ModelRun, tag: str) -> list[dict[str, Any]]:
    rows = []
    for items, replies, verdicts, label in (
        (harmful, run.harmful_replies, run.harmful_verdicts, "harmful"),
        (harmless, run.harmless_replies, run.harmless_verdicts, "harmless"),
    ):
        for item, reply, verdict in zip(items, replies, verdicts, strict=True):
            rows.append(
                {
                    "model": tag,
                    "class": label,
                    "id": item.prompt.id,
                    "lang": item.prompt.lang,
                    "prompt": item.prompt.text,
                    "reply": reply,
                    "verdict": verdict.label,
                    "reason": verdict.reason,
                }
            )
    return rows


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"
